"""Triton fused attention (the GPU twin of csrc/cpu/attention.cpp; semantics in fused_s2s/ops/attention.py).

Dot scoring (dot, general, scaled_dot), score = scale·q·k, with tl.dot on [BLOCK_T, BLOCK_S] tiles:
- `attention_fwd_kernel`, grid (B, cdiv(T, BLOCK_T)): one pass over the source in BLOCK_S tiles with an online
  softmax (running max and sum), masked by the source length; writes the context and the log-sum-exp.
- `attention_bwd_dq_kernel`, grid (B, cdiv(T, BLOCK_T)): recomputes the probabilities from the log-sum-exp;
  d_query.
- `attention_bwd_dkv_kernel`, grid (B, cdiv(S, BLOCK_S)): loops over all queries for its source tile; d_keys
  and d_values. No atomics: every output element has one writer.
Additive scoring has its own kernels (attention_additive.py); the launchers here pick them when v is given.
Feature sizes are held whole (D, M ≤ MAX_FEATURES, padded to a power of two). fp32 and fp64 (fp64 for
gradcheck).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fused_s2s.triton import attention_additive as additive
from fused_s2s.triton.limits import ATTENTION_DOT_MAX_FEATURES

POISON = os.environ.get("FUSED_S2S_POISON_BUFFERS") == "1"
MAX_FEATURES = ATTENTION_DOT_MAX_FEATURES  # D and M
BLOCK_T = 16
BLOCK_S = 16
NUM_WARPS = 8


@triton.jit
def _scores(q, k, scale):
    """q [BT, D], k [BS, D] -> scale·q·kᵀ [BT, BS]."""
    return tl.dot(q, tl.trans(k), input_precision="ieee") * scale


@triton.jit
def attention_fwd_kernel(
    Q, K, V, LEN,       # [B, T, D], [B, S, D], [B, S, M], [B] int64 (HAS_LEN)
    CTX, LSE,           # [B, T, M], [B, T]
    T, S, D, M, scale,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr,
    HAS_LEN: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    ts = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = ts < T
    ds = tl.arange(0, D_PAD)
    ms = tl.arange(0, M_PAD)
    q = tl.load(Q + (b * T + ts)[:, None] * D + ds[None, :], mask=t_ok[:, None] & (ds < D)[None, :], other=0.0)
    length = tl.load(LEN + b).to(tl.int32) if HAS_LEN else S
    ACC: tl.constexpr = CTX.dtype.element_ty
    run_max = tl.full([BLOCK_T], float("-inf"), ACC)
    run_sum = tl.zeros([BLOCK_T], ACC)
    acc = tl.zeros([BLOCK_T, M_PAD], ACC)
    for s0 in range(0, length, BLOCK_S):
        ss = s0 + tl.arange(0, BLOCK_S)
        s_ok = ss < length
        k = tl.load(K + (b * S + ss)[:, None] * D + ds[None, :], mask=s_ok[:, None] & (ds < D)[None, :], other=0.0)
        sc = tl.where(s_ok[None, :], _scores(q, k, scale), float("-inf"))
        new_max = tl.maximum(run_max, tl.max(sc, axis=1))
        rescale = tl.exp(run_max - new_max)  # 0 at the first tile (run_max = -inf)
        p = tl.exp(sc - new_max[:, None])
        run_sum = run_sum * rescale + tl.sum(p, axis=1)
        vals = tl.load(V + (b * S + ss)[:, None] * M + ms[None, :], mask=s_ok[:, None] & (ms < M)[None, :], other=0.0)
        acc = acc * rescale[:, None] + tl.dot(p.to(vals.dtype), vals, input_precision="ieee")
        run_max = new_max
    tl.store(CTX + (b * T + ts)[:, None] * M + ms[None, :], acc / run_sum[:, None],
             mask=t_ok[:, None] & (ms < M)[None, :])
    tl.store(LSE + b * T + ts, run_max + tl.log(run_sum), mask=t_ok)


@triton.jit
def _probabilities(q, k, lse, s_ok, scale):
    """softmax probabilities [BT, BS] recomputed from the log-sum-exp; 0 at masked positions."""
    return tl.where(s_ok[None, :], tl.exp(_scores(q, k, scale) - lse[:, None]), 0.0)


@triton.jit
def attention_bwd_dq_kernel(
    DCTX, Q, K, V, LEN, CTX, LSE,   # as the forward, plus d_context [B, T, M]
    DQ,                             # [B, T, D]
    T, S, D, M, scale,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr,
    HAS_LEN: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    ts = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = ts < T
    ds = tl.arange(0, D_PAD)
    ms = tl.arange(0, M_PAD)
    tm = t_ok[:, None] & (ms < M)[None, :]
    q = tl.load(Q + (b * T + ts)[:, None] * D + ds[None, :], mask=t_ok[:, None] & (ds < D)[None, :], other=0.0)
    dctx = tl.load(DCTX + (b * T + ts)[:, None] * M + ms[None, :], mask=tm, other=0.0)
    ctx = tl.load(CTX + (b * T + ts)[:, None] * M + ms[None, :], mask=tm, other=0.0)
    lse = tl.load(LSE + b * T + ts, mask=t_ok, other=0.0)
    delta = tl.sum(dctx * ctx, axis=1)  # Σ_s p_s (dctx · v_s)
    length = tl.load(LEN + b).to(tl.int32) if HAS_LEN else S
    dq = tl.zeros([BLOCK_T, D_PAD], dtype=DQ.dtype.element_ty)
    for s0 in range(0, length, BLOCK_S):
        ss = s0 + tl.arange(0, BLOCK_S)
        s_ok = ss < length
        k = tl.load(K + (b * S + ss)[:, None] * D + ds[None, :], mask=s_ok[:, None] & (ds < D)[None, :], other=0.0)
        vals = tl.load(V + (b * S + ss)[:, None] * M + ms[None, :], mask=s_ok[:, None] & (ms < M)[None, :], other=0.0)
        p = tl.where(t_ok[:, None], _probabilities(q, k, lse, s_ok, scale), 0.0)
        dp = tl.dot(dctx, tl.trans(vals), input_precision="ieee")
        dsc = p * (dp - delta[:, None])
        dq += tl.dot(dsc, k, input_precision="ieee") * scale
    tl.store(DQ + (b * T + ts)[:, None] * D + ds[None, :], dq, mask=t_ok[:, None] & (ds < D)[None, :])


@triton.jit
def attention_bwd_dkv_kernel(
    DCTX, Q, K, V, LEN, CTX, LSE,
    DK, DV,                         # [B, S, D], [B, S, M]
    T, S, D, M, scale,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr,
    HAS_LEN: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    ss = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    length = tl.load(LEN + b).to(tl.int32) if HAS_LEN else S
    s_in = ss < S
    s_ok = ss < length
    ds = tl.arange(0, D_PAD)
    ms = tl.arange(0, M_PAD)
    k = tl.load(K + (b * S + ss)[:, None] * D + ds[None, :], mask=s_ok[:, None] & (ds < D)[None, :], other=0.0)
    vals = tl.load(V + (b * S + ss)[:, None] * M + ms[None, :], mask=s_ok[:, None] & (ms < M)[None, :], other=0.0)
    dk = tl.zeros([BLOCK_S, D_PAD], dtype=DK.dtype.element_ty)
    dv = tl.zeros([BLOCK_S, M_PAD], dtype=DV.dtype.element_ty)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        t_ok = ts < T
        tm = t_ok[:, None] & (ms < M)[None, :]
        q = tl.load(Q + (b * T + ts)[:, None] * D + ds[None, :], mask=t_ok[:, None] & (ds < D)[None, :], other=0.0)
        dctx = tl.load(DCTX + (b * T + ts)[:, None] * M + ms[None, :], mask=tm, other=0.0)
        ctx = tl.load(CTX + (b * T + ts)[:, None] * M + ms[None, :], mask=tm, other=0.0)
        lse = tl.load(LSE + b * T + ts, mask=t_ok, other=0.0)
        delta = tl.sum(dctx * ctx, axis=1)
        p = tl.where(t_ok[:, None], _probabilities(q, k, lse, s_ok, scale), 0.0)
        dv += tl.dot(tl.trans(p), dctx, input_precision="ieee")
        dsc = p * (tl.dot(dctx, tl.trans(vals), input_precision="ieee") - delta[:, None])
        dk += tl.dot(tl.trans(dsc), q, input_precision="ieee") * scale
    tl.store(DK + (b * S + ss)[:, None] * D + ds[None, :], dk, mask=s_in[:, None] & (ds < D)[None, :])
    tl.store(DV + (b * S + ss)[:, None] * M + ms[None, :], dv, mask=s_in[:, None] & (ms < M)[None, :])


# ---- launchers ----

def _empty(shape, like: Tensor) -> Tensor:
    return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device) if POISON else like.new_empty(shape)


def attention_fwd(q: Tensor, keys: Tensor, values: Tensor, lengths: Optional[Tensor], v: Optional[Tensor],
                  scale: float) -> tuple[Tensor, Tensor]:
    """context [B, T, M], lse [B, T] (contiguous inputs on one device; lengths int64 there); additive with v."""
    if v is not None:
        return additive.additive_fwd(q, keys, values, lengths, v, _empty)
    B, T, D = q.shape
    S, M = keys.shape[1], values.shape[2]
    d_pad, m_pad = additive.feature_pads(D, M, MAX_FEATURES, "Triton kernel")
    ctx, lse = _empty((B, T, M), q), _empty((B, T), q)
    if B * T:
        attention_fwd_kernel[(B, triton.cdiv(T, BLOCK_T))](
            q, keys, values, lengths if lengths is not None else q, ctx, lse, T, S, D, M, scale, BLOCK_T=BLOCK_T,
            BLOCK_S=BLOCK_S, D_PAD=d_pad, M_PAD=m_pad, HAS_LEN=lengths is not None, num_warps=NUM_WARPS)
    return ctx, lse


def attention_bwd(d_ctx: Tensor, q: Tensor, keys: Tensor, values: Tensor, lengths: Optional[Tensor],
                  v: Optional[Tensor], scale: float, ctx: Tensor, lse: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """d_query, d_keys, d_values, d_v (empty without v)."""
    if v is not None:
        return additive.additive_bwd(d_ctx, q, keys, values, lengths, v, ctx, lse, _empty)
    B, T, D = q.shape
    S, M = keys.shape[1], values.shape[2]
    d_pad, m_pad = additive.feature_pads(D, M, MAX_FEATURES, "Triton kernel")
    dq, dk, dvals = _empty(q.shape, q), _empty(keys.shape, q), _empty(values.shape, q)
    common = dict(BLOCK_T=BLOCK_T, BLOCK_S=BLOCK_S, D_PAD=d_pad, M_PAD=m_pad, HAS_LEN=lengths is not None,
                  num_warps=NUM_WARPS)
    args = (d_ctx, q, keys, values, lengths if lengths is not None else q, ctx, lse)
    if B * T:
        attention_bwd_dq_kernel[(B, triton.cdiv(T, BLOCK_T))](*args, dq, T, S, D, M, scale, **common)
    if B * S:
        attention_bwd_dkv_kernel[(B, triton.cdiv(S, BLOCK_S))](*args, dk, dvals, T, S, D, M, scale, **common)
    return dq, dk, dvals, q.new_empty(0)


def aot_cases() -> list:
    """The three dot kernels × feature pads 64 and 128, fp32 (the additive kernels list their own)."""
    from fused_s2s.triton.aot import AotCase

    cases = []
    for pad in (64, MAX_FEATURES):
        consts = dict(BLOCK_T=BLOCK_T, BLOCK_S=BLOCK_S, D_PAD=pad, M_PAD=pad, HAS_LEN=True)
        ptrs = ["DCTX", "Q", "K", "V", "LEN", "CTX", "LSE"]
        scalars = {"T": "i32", "S": "i32", "D": "i32", "M": "i32", "scale": "fp32"}
        for kernel, name, sig in (
                (attention_fwd_kernel, "attention_fwd[dot]", ["Q", "K", "V", "LEN", "CTX", "LSE"]),
                (attention_bwd_dq_kernel, "attention_bwd_dq[dot]", ptrs + ["DQ"]),
                (attention_bwd_dkv_kernel, "attention_bwd_dkv[dot]", ptrs + ["DK", "DV"])):
            signature = {p: ("*i64" if p == "LEN" else "*fp32") for p in sig}
            signature.update(scalars)
            signature.update({k: "constexpr" for k in consts})
            cases.append(AotCase(kernel, name, f"BT{BLOCK_T}-BS{BLOCK_S}-F{pad}-w{NUM_WARPS}", "fp32", signature,
                                 consts, NUM_WARPS, 1))
    return cases
