"""Triton fused decoder step (inference): the same math as fused_s2s.reference.decoder.decoder_step, as a
short chain of kernels launched back to back (L + 2 launches, + one small GEMM for additive queries):

    decoder_cell_kernel      per layer: gates = [x; feed; h_l] · [w_ih | w_hh]ᵀ + b (tl.dot over the three
                             input segments, no concatenated copy), then the LSTM cell -> h_new[l], c_new[l]
    decoder_attention_kernel one program per batch row: one pass over the source in tiles of BLOCK_S with an
                             online softmax masked by the row's length, accumulating the context; the raw
                             scores are stored and normalised at the end (the attention weights)
    decoder_combine_kernel   h̃ = tanh([context; h_top] · w_outᵀ + b_out)

fp32, bf16 or fp16 tensors; every product and sum is fp32 (16-bit values are upcast as they are loaded, then
IEEE fp32 dots), the raw scores and the context stay fp32 between kernels, and the outputs are rounded to the
input dtype when stored. Inputs are made contiguous by the launcher.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fused_s2s.lengths_check import check_lengths_in_range
from fused_s2s.triton.cell_math import sigmoid, tanh
from fused_s2s.triton.limits import DECODER_STEP_MAX_MEMORY

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
POISON = os.environ.get("FUSED_S2S_POISON_BUFFERS") == "1"

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (BLOCK_B, BLOCK_H, BLOCK_K, num_warps) of the GEMM-like kernels.
CELL_CONFIG = (16, 32, 32, 4)
ATTN_BLOCK_D = 64


def attention_config(M: int) -> tuple[int, int, int]:
    """(BLOCK_S, BLOCK_M, num_warps) for memory width M: the [BLOCK_S, BLOCK_M] memory tile stays at 16K
    fp32 values per program, spread over 8 warps above M = 512 (4 warps and BLOCK_S 32 spill at M = 1024)."""
    block_m = triton.next_power_of_2(M)
    return max(16, min(64, 16384 // block_m)), block_m, 4 if block_m <= 512 else 8


@triton.jit
def _segment_dot(acc, A, K, W, ldw, col0, w_row0, offs_b, offs_n, mask_b, mask_n, BLOCK_K: tl.constexpr):
    """acc [BB, BN] += A[offs_b, 0:K] · W[w_row0 + offs_n, col0:col0 + K]ᵀ; A [B, K] row-major, W rows ldw."""
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        a = tl.load(A + offs_b[:, None] * K + kk[None, :], mask=mask_b[:, None] & (kk[None, :] < K), other=0.0)
        w = tl.load(W + (w_row0 + offs_n)[None, :] * ldw + (col0 + kk)[:, None],
                    mask=mask_n[None, :] & (kk[:, None] < K), other=0.0)  # [BK, BN]
        acc += tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision="ieee")
    return acc


@triton.jit
def decoder_cell_kernel(
    X, FEED, HP, CP,       # [B, KX], [B, KF] (KF = 0: unused), [B, H] previous h_l, [B, H] previous c_l
    W, BIAS,               # [4H, KX + KF + H] = [w_ih | w_hh], [4H] (b_ih + b_hh) if HAS_BIAS
    HN, CN,                # [B, H] outputs h_new[l], c_new[l]
    B, H, KX, KF,
    HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_h = offs_h < H
    ldw = KX + KF + H
    gi = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    gf = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    gg = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    go = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    gi = _segment_dot(gi, X, KX, W, ldw, 0, 0, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    gf = _segment_dot(gf, X, KX, W, ldw, 0, H, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    gg = _segment_dot(gg, X, KX, W, ldw, 0, 2 * H, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    go = _segment_dot(go, X, KX, W, ldw, 0, 3 * H, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    gi = _segment_dot(gi, FEED, KF, W, ldw, KX, 0, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    gf = _segment_dot(gf, FEED, KF, W, ldw, KX, H, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    gg = _segment_dot(gg, FEED, KF, W, ldw, KX, 2 * H, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    go = _segment_dot(go, FEED, KF, W, ldw, KX, 3 * H, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    gi = _segment_dot(gi, HP, H, W, ldw, KX + KF, 0, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    gf = _segment_dot(gf, HP, H, W, ldw, KX + KF, H, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    gg = _segment_dot(gg, HP, H, W, ldw, KX + KF, 2 * H, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    go = _segment_dot(go, HP, H, W, ldw, KX + KF, 3 * H, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    if HAS_BIAS:
        gi += tl.load(BIAS + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
        gf += tl.load(BIAS + H + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
        gg += tl.load(BIAS + 2 * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
        go += tl.load(BIAS + 3 * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    idx = offs_b[:, None] * H + offs_h[None, :]
    mask = mask_b[:, None] & mask_h[None, :]
    c = tl.load(CP + idx, mask=mask, other=0.0).to(tl.float32)
    c_new = sigmoid(gf) * c + sigmoid(gi) * tanh(gg)
    tl.store(CN + idx, c_new, mask=mask)
    tl.store(HN + idx, sigmoid(go) * tanh(c_new), mask=mask)


@triton.jit
def decoder_attention_kernel(
    Q,                     # [B, K]: h_top (dot scores) or w_query·h_top + b_query (additive)
    KEYS, V, MEM, LEN,     # [B, S, K], [K] (additive), [B, S, M], [B] int64 if HAS_LEN
    CTX, ATTN,             # [B, M] context, [B, S] weights (raw scores until the final pass)
    S, K, M, scale,
    ADDITIVE: tl.constexpr, HAS_LEN: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    n = S
    if HAS_LEN:
        n = tl.load(LEN + b).to(tl.int32)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    m_i = tl.max(tl.full((BLOCK_S,), float("-inf"), tl.float32), axis=0)  # running max (scalar)
    l_i = tl.sum(tl.zeros((BLOCK_S,), tl.float32), axis=0)  # running sum of exp
    ctx = tl.zeros((BLOCK_M,), tl.float32)
    for s0 in range(0, n, BLOCK_S):
        ss = s0 + offs_s
        mask_s = ss < n
        score = tl.zeros((BLOCK_S,), tl.float32)
        for d0 in range(0, K, BLOCK_D):
            dd = d0 + offs_d
            mask_d = dd < K
            k = tl.load(KEYS + (b * S + ss[:, None]) * K + dd[None, :], mask=mask_s[:, None] & mask_d[None, :],
                        other=0.0).to(tl.float32)
            q = tl.load(Q + b * K + dd, mask=mask_d, other=0.0).to(tl.float32)
            if ADDITIVE:
                v = tl.load(V + dd, mask=mask_d, other=0.0).to(tl.float32)
                score += tl.sum(tanh(k + q[None, :]) * v[None, :], axis=1)
            else:
                score += tl.sum(k * q[None, :], axis=1)
        score = tl.where(mask_s, score * scale, float("-inf"))
        tl.store(ATTN + b * S + ss, score, mask=mask_s)
        m_new = tl.maximum(m_i, tl.max(score, axis=0))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(score - m_new)  # exp(-inf) = 0 on masked positions
        mem = tl.load(MEM + (b * S + ss[:, None]) * M + offs_m[None, :], mask=mask_s[:, None] & mask_m[None, :],
                      other=0.0).to(tl.float32)
        ctx = ctx * alpha + tl.sum(p[:, None] * mem, axis=0)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        m_i = m_new
    tl.store(CTX + b * M + offs_m, ctx / l_i, mask=mask_m)
    # The raw scores above were stored by other threads of this program: order those stores before the loads.
    tl.debug_barrier()
    for s0 in range(0, S, BLOCK_S):
        ss = s0 + offs_s
        live = ss < n
        raw = tl.load(ATTN + b * S + ss, mask=live, other=float("-inf"))
        tl.store(ATTN + b * S + ss, tl.where(live, tl.exp(raw - m_i) / l_i, 0.0), mask=ss < S)


@triton.jit
def decoder_combine_kernel(
    CTX, HT, W, BIAS, OUT,  # [B, M], [B, H], [H, M + H], [H] if HAS_BIAS, [B, H]
    B, H, M,
    HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_h = offs_h < H
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc = _segment_dot(acc, CTX, M, W, M + H, 0, 0, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    acc = _segment_dot(acc, HT, H, W, M + H, M, 0, offs_b, offs_h, mask_b, mask_h, BLOCK_K)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    tl.store(OUT + offs_b[:, None] * H + offs_h[None, :], tanh(acc), mask=mask_b[:, None] & mask_h[None, :])


def _empty(*shape, like: Tensor) -> Tensor:
    out = like.new_empty(shape)
    return out.fill_(float("nan")) if POISON else out


def decoder_step(x: Tensor, feed: Optional[Tensor], h: Tensor, c: Tensor, w_cat: list, b_cat: list, score: str,
                 keys: Tensor, scale: float, w_query: Optional[Tensor], b_query: Optional[Tensor],
                 v: Optional[Tensor], memory: Tensor, lengths: Optional[Tensor], w_out: Tensor,
                 b_out: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Launch the chain; arguments as the C++ op fused_s2s::decoder_step (csrc/cpu/decoder_step.h)."""
    L, B, H = h.shape
    S, M = memory.shape[1], memory.shape[2]
    _check(x, feed, h, c, w_cat, keys, score, memory, lengths, w_out, w_query)
    x, h, c, memory, keys, w_out = (t.contiguous() for t in (x, h, c, memory, keys, w_out))
    h_new, c_new = _empty(L, B, H, like=x), _empty(L, B, H, like=x)
    BB, BH, BK, nw = CELL_CONFIG
    grid = (triton.cdiv(B, BB), triton.cdiv(H, BH))
    inp, inp_feed = x, (feed.contiguous() if feed is not None else x)
    for layer in range(L):
        kf = feed.shape[1] if (layer == 0 and feed is not None) else 0
        bias = b_cat[layer]
        decoder_cell_kernel[grid](inp, inp_feed, h[layer], c[layer], w_cat[layer].contiguous(),
                                  bias if bias is not None else w_cat[layer], h_new[layer], c_new[layer],
                                  B, H, inp.shape[1], kf, HAS_BIAS=bias is not None, BLOCK_B=BB, BLOCK_H=BH,
                                  BLOCK_K=BK, num_warps=nw)
        inp, inp_feed = h_new[layer], h_new[layer]
    top = h_new[L - 1]
    additive = score == "additive"
    # additive: w_query·h + b_query; dot with w_query: general attention's projected query (keys = memory)
    q = torch.nn.functional.linear(top, w_query, b_query).contiguous() if w_query is not None else top
    f32 = x.new_empty(0, dtype=torch.float32)
    ctx, attn = _empty(B, M, like=f32), _empty(B, S, like=f32)  # fp32 whatever the dtype: raw scores live here
    BS, BM, nwa = attention_config(M)
    K = keys.shape[2]
    decoder_attention_kernel[(B,)](q, keys, v.contiguous() if additive else keys, memory,
                                   lengths if lengths is not None else keys, ctx, attn, S, K, M, float(scale),
                                   ADDITIVE=additive, HAS_LEN=lengths is not None, BLOCK_S=BS,
                                   BLOCK_D=ATTN_BLOCK_D, BLOCK_M=BM, num_warps=nwa)
    out = _empty(B, H, like=x)
    decoder_combine_kernel[grid](ctx, top, w_out, b_out if b_out is not None else w_out, out, B, H, M,
                                 HAS_BIAS=b_out is not None, BLOCK_B=BB, BLOCK_H=BH, BLOCK_K=BK, num_warps=nw)
    return out, h_new, c_new, attn.to(x.dtype)


def _check(x, feed, h, c, w_cat, keys, score, memory, lengths, w_out, w_query=None) -> None:
    """The C++ op's checks that matter for memory safety, in its words."""
    L, B, H = h.shape
    if x.dtype not in DTYPES:
        raise RuntimeError(f"decoder_step: the Triton kernels support float32, bfloat16 and float16, got {x.dtype}")
    for name, t in (("h", h), ("c", c), ("memory", memory), ("keys", keys), ("w_out", w_out)):
        if t.dtype != x.dtype:
            raise RuntimeError(f"decoder_step: {name} must have the type {x.dtype}, got type {t.dtype}")
        if t.device != x.device:
            raise RuntimeError(f"decoder_step: {name} must be on {x.device}, got {t.device}")
    if c.shape != h.shape or x.shape[0] != B or memory.shape[0] != B or keys.shape[:2] != memory.shape[:2]:
        raise RuntimeError(f"decoder_step: batch sizes disagree: x {list(x.shape)}, h {list(h.shape)}, c "
                           f"{list(c.shape)}, memory {list(memory.shape)}, keys {list(keys.shape)}")
    if memory.shape[2] > DECODER_STEP_MAX_MEMORY:
        raise RuntimeError(f"decoder_step: the Triton attention kernel holds the context in one block and is "
                           f"built for memory sizes up to {DECODER_STEP_MAX_MEMORY}, got {memory.shape[2]}")
    if feed is not None and tuple(feed.shape) != (B, H):
        raise RuntimeError(f"decoder_step: expected feed of size [{B}, {H}], got {list(feed.shape)}")
    in0 = x.shape[1] + (H if feed is not None else 0)
    for layer, w in enumerate(w_cat):
        want = (4 * H, (in0 if layer == 0 else H) + H)
        if tuple(w.shape) != want:
            raise RuntimeError(f"decoder_step: expected layer {layer} weight [w_ih | w_hh] of size {list(want)}, "
                               f"got {list(w.shape)}")
    if score == "dot" and w_query is None and keys.shape[2] != H:
        raise RuntimeError(f"decoder_step: dot scores need keys of size [{B}, {memory.shape[1]}, {H}]")
    if score == "dot" and w_query is not None and (w_query.dtype != x.dtype or w_query.device != x.device or
                                                   tuple(w_query.shape) != (keys.shape[2], H)):
        raise RuntimeError(f"decoder_step: dot scores with a query projection need w_query of size "
                           f"[{keys.shape[2]}, {H}] and type {x.dtype}, got {list(w_query.shape)} {w_query.dtype}")
    if tuple(w_out.shape) != (H, memory.shape[2] + H):
        raise RuntimeError(f"decoder_step: expected w_out of size [{H}, {memory.shape[2] + H}], got "
                           f"{list(w_out.shape)}")
    if lengths is not None:
        if lengths.dtype != torch.int64 or tuple(lengths.shape) != (B,):
            raise RuntimeError(f"decoder_step: expected memory_lengths of size [{B}] and type int64, got "
                               f"{list(lengths.shape)} {lengths.dtype}")
        S = memory.shape[1]
        check_lengths_in_range(lengths, S, lambda lo, hi: RuntimeError(
            f"decoder_step: every memory length must be in [1, {S}], got values in [{lo}, {hi}]"))


def aot_cases() -> list:
    """The three kernels in their heaviest variant (biases, input feeding, lengths), fp32/bf16/fp16, both score
    kinds; the context and the raw scores are fp32 in every dtype."""
    from fused_s2s.triton.aot import AotCase

    BB, BH, BK, nw = CELL_CONFIG
    cfg = f"BB{BB}-BH{BH}-BK{BK}-w{nw}"
    cases = []
    for dt in ("fp32", "bf16", "fp16"):
        ptr = f"*{dt}"
        consts = dict(HAS_BIAS=True, BLOCK_B=BB, BLOCK_H=BH, BLOCK_K=BK)
        sig = {n: ptr for n in ("X", "FEED", "HP", "CP", "W", "BIAS", "HN", "CN")}
        sig.update({n: "i32" for n in ("B", "H", "KX", "KF")}, **{k: "constexpr" for k in consts})
        cases.append(AotCase(decoder_cell_kernel, "decoder_cell", cfg, dt, sig, consts, nw, 1))
        sig = {"CTX": "*fp32", **{n: ptr for n in ("HT", "W", "BIAS", "OUT")}}
        sig.update({n: "i32" for n in ("B", "H", "M")}, **{k: "constexpr" for k in consts})
        cases.append(AotCase(decoder_combine_kernel, "decoder_combine", cfg, dt, sig, consts, nw, 1))
        for additive in (False, True):
            for M in (512, DECODER_STEP_MAX_MEMORY):  # BLOCK_M = next_power_of_2(M): the widest memory it takes
                BS, BM, nwa = attention_config(M)
                consts = dict(ADDITIVE=additive, HAS_LEN=True, BLOCK_S=BS, BLOCK_D=ATTN_BLOCK_D, BLOCK_M=BM)
                sig = {n: ptr for n in ("Q", "KEYS", "V", "MEM")}
                sig.update({"LEN": "*i64", "CTX": "*fp32", "ATTN": "*fp32", "S": "i32", "K": "i32", "M": "i32",
                            "scale": "fp32"}, **{k: "constexpr" for k in consts})
                cases.append(AotCase(decoder_attention_kernel,
                                     f"decoder_attention[{'additive' if additive else 'dot'}]",
                                     f"BS{BS}-BD{ATTN_BLOCK_D}-BM{BM}-w{nwa}", dt, sig, consts, nwa, 1))
    return cases
