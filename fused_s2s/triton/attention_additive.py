"""Triton fused attention with additive (Bahdanau) scores: score(t, s) = Σ_d va_d·tanh(q_{t,d} + k_{s,d}).

The dot kernels (attention.py) score a [BLOCK_T, BLOCK_S] tile with one tl.dot; an additive tile would be a
[BLOCK_T, BLOCK_S, D] tensor of tanh, which spilled at every size tried. These kernels walk the source one
position at a time instead, so every tensor is at most [BLOCK_T, D] or [BLOCK_T, M]:

- `additive_fwd_kernel`, grid (B, cdiv(T, BLOCK_T)): online softmax over s < length; context and log-sum-exp.
- `additive_bwd_dq_kernel`, grid (B, cdiv(T, BLOCK_T)): recomputes p from the log-sum-exp; d_query, and this
  program's partial sum of d_v (the launcher adds the partials: no atomics).
- `additive_bwd_dkv_kernel`, grid (B, S): one program per source position, looping over the queries; d_keys
  and d_values (zero for padded positions). Every output element has one writer.
Feature sizes up to MAX_FEATURES (padded to a power of two); fp32 and fp64 (fp64 for gradcheck).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fused_s2s.triton.cell_math import tanh
from fused_s2s.triton.limits import ATTENTION_ADDITIVE_MAX_FEATURES

MAX_FEATURES = ATTENTION_ADDITIVE_MAX_FEATURES  # D and M
BLOCK_T = 16
NUM_WARPS = 4
MAXNREG = 255  # without it ptxas capped bwd_dkv at 128 registers for sm_90 and spilled


@triton.jit
def _load_queries(Q, b, ts, t_ok, ds, D, T):
    return tl.load(Q + (b * T + ts)[:, None] * D + ds[None, :], mask=t_ok[:, None] & (ds < D)[None, :], other=0.0)


@triton.jit
def additive_fwd_kernel(
    Q, K, V, LEN, VA,   # [B, T, D], [B, S, D], [B, S, M], [B] int64 (HAS_LEN), [D]
    CTX, LSE,           # [B, T, M], [B, T]
    T, S, D, M,
    BLOCK_T: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, HAS_LEN: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    ts = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = ts < T
    ds = tl.arange(0, D_PAD)
    ms = tl.arange(0, M_PAD)
    q = _load_queries(Q, b, ts, t_ok, ds, D, T)
    va = tl.load(VA + ds, mask=ds < D, other=0.0)
    length = tl.load(LEN + b).to(tl.int32) if HAS_LEN else S
    ACC: tl.constexpr = CTX.dtype.element_ty
    run_max = tl.full([BLOCK_T], float("-inf"), ACC)
    run_sum = tl.zeros([BLOCK_T], ACC)
    acc = tl.zeros([BLOCK_T, M_PAD], ACC)
    for s in range(0, length):
        k = tl.load(K + (b * S + s) * D + ds, mask=ds < D, other=0.0)
        sc = tl.sum(tanh(q + k[None, :]) * va[None, :], axis=1)
        new_max = tl.maximum(run_max, sc)
        rescale = tl.exp(run_max - new_max)  # 0 at the first position (run_max = -inf)
        p = tl.exp(sc - new_max)
        run_sum = run_sum * rescale + p
        vals = tl.load(V + (b * S + s) * M + ms, mask=ms < M, other=0.0)
        acc = acc * rescale[:, None] + p[:, None] * vals[None, :]
        run_max = new_max
    tl.store(CTX + (b * T + ts)[:, None] * M + ms[None, :], acc / run_sum[:, None],
             mask=t_ok[:, None] & (ms < M)[None, :])
    tl.store(LSE + b * T + ts, run_max + tl.log(run_sum), mask=t_ok)


@triton.jit
def additive_bwd_dq_kernel(
    DCTX, Q, K, V, LEN, VA, CTX, LSE,   # as the forward, plus d_context [B, T, M]
    DQ, DVA_PART,                       # [B, T, D]; [B · cdiv(T, BLOCK_T), D] partial d_v
    T, S, D, M,
    BLOCK_T: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, HAS_LEN: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    ts = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = ts < T
    ds = tl.arange(0, D_PAD)
    ms = tl.arange(0, M_PAD)
    tm = t_ok[:, None] & (ms < M)[None, :]
    q = _load_queries(Q, b, ts, t_ok, ds, D, T)
    va = tl.load(VA + ds, mask=ds < D, other=0.0)
    dctx = tl.load(DCTX + (b * T + ts)[:, None] * M + ms[None, :], mask=tm, other=0.0)
    ctx = tl.load(CTX + (b * T + ts)[:, None] * M + ms[None, :], mask=tm, other=0.0)
    lse = tl.load(LSE + b * T + ts, mask=t_ok, other=0.0)
    delta = tl.sum(dctx * ctx, axis=1)  # Σ_s p_s (dctx · v_s)
    length = tl.load(LEN + b).to(tl.int32) if HAS_LEN else S
    dq = tl.zeros([BLOCK_T, D_PAD], dtype=DQ.dtype.element_ty)
    dva = tl.zeros([D_PAD], dtype=DQ.dtype.element_ty)
    for s in range(0, length):
        k = tl.load(K + (b * S + s) * D + ds, mask=ds < D, other=0.0)
        vals = tl.load(V + (b * S + s) * M + ms, mask=ms < M, other=0.0)
        u = tanh(q + k[None, :])
        p = tl.where(t_ok, tl.exp(tl.sum(u * va[None, :], axis=1) - lse), 0.0)  # rows past T: 0
        dsc = p * (tl.sum(dctx * vals[None, :], axis=1) - delta)
        dq += dsc[:, None] * va[None, :] * (1.0 - u * u)
        dva += tl.sum(dsc[:, None] * u, axis=0)
    tl.store(DQ + (b * T + ts)[:, None] * D + ds[None, :], dq, mask=t_ok[:, None] & (ds < D)[None, :])
    part = b * tl.num_programs(1) + tl.program_id(1)
    tl.store(DVA_PART + part * D + ds, dva, mask=ds < D)


@triton.jit
def additive_bwd_dkv_kernel(
    DCTX, Q, K, V, LEN, VA, CTX, LSE,
    DK, DV,                             # [B, S, D], [B, S, M]
    T, S, D, M,
    BLOCK_T: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, HAS_LEN: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    length = tl.load(LEN + b).to(tl.int32) if HAS_LEN else S
    ds = tl.arange(0, D_PAD)
    ms = tl.arange(0, M_PAD)
    k = tl.load(K + (b * S + s) * D + ds, mask=ds < D, other=0.0)
    vals = tl.load(V + (b * S + s) * M + ms, mask=ms < M, other=0.0)
    va = tl.load(VA + ds, mask=ds < D, other=0.0)
    dk = tl.zeros([D_PAD], dtype=DK.dtype.element_ty)
    dv = tl.zeros([M_PAD], dtype=DV.dtype.element_ty)
    n_t = tl.where(s < length, T, 0)  # a padded position gets no weight, so zero gradients
    for t0 in range(0, n_t, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        t_ok = ts < T
        tm = t_ok[:, None] & (ms < M)[None, :]
        q = _load_queries(Q, b, ts, t_ok, ds, D, T)
        dctx = tl.load(DCTX + (b * T + ts)[:, None] * M + ms[None, :], mask=tm, other=0.0)
        ctx = tl.load(CTX + (b * T + ts)[:, None] * M + ms[None, :], mask=tm, other=0.0)
        lse = tl.load(LSE + b * T + ts, mask=t_ok, other=0.0)
        u = tanh(q + k[None, :])
        p = tl.where(t_ok, tl.exp(tl.sum(u * va[None, :], axis=1) - lse), 0.0)
        dv += tl.sum(p[:, None] * dctx, axis=0)
        dsc = p * (tl.sum(dctx * vals[None, :], axis=1) - tl.sum(dctx * ctx, axis=1))
        dk += tl.sum(dsc[:, None] * va[None, :] * (1.0 - u * u), axis=0)
    tl.store(DK + (b * S + s) * D + ds, dk, mask=ds < D)
    tl.store(DV + (b * S + s) * M + ms, dv, mask=ms < M)


# ---- launchers (called by attention.attention_fwd / attention_bwd when v is given) ----

def feature_pads(D: int, M: int, limit: int = MAX_FEATURES,
                 kernel: str = "additive Triton kernel") -> tuple[int, int]:
    """D and M padded to powers of two (at least 16), or the error for sizes over the kernel's limit."""
    if max(D, M) > limit:
        raise RuntimeError(f"attention: the {kernel} holds feature sizes up to {limit}, got D={D}, M={M}")
    return max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(M))


def additive_fwd(q: Tensor, keys: Tensor, values: Tensor, lengths: Optional[Tensor], v: Tensor,
                 empty) -> tuple[Tensor, Tensor]:
    """context [B, T, M], lse [B, T]; `empty(shape, like)` allocates the outputs."""
    B, T, D = q.shape
    S, M = keys.shape[1], values.shape[2]
    d_pad, m_pad = feature_pads(D, M)
    ctx, lse = empty((B, T, M), q), empty((B, T), q)
    if B * T:
        additive_fwd_kernel[(B, triton.cdiv(T, BLOCK_T))](
            q, keys, values, lengths if lengths is not None else q, v, ctx, lse, T, S, D, M, BLOCK_T=BLOCK_T,
            D_PAD=d_pad, M_PAD=m_pad, HAS_LEN=lengths is not None, num_warps=NUM_WARPS, maxnreg=MAXNREG)
    return ctx, lse


def additive_bwd(d_ctx: Tensor, q: Tensor, keys: Tensor, values: Tensor, lengths: Optional[Tensor], v: Tensor,
                 ctx: Tensor, lse: Tensor, empty) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """d_query, d_keys, d_values, d_v."""
    B, T, D = q.shape
    S, M = keys.shape[1], values.shape[2]
    d_pad, m_pad = feature_pads(D, M)
    n_t = triton.cdiv(T, BLOCK_T)
    dq, dk, dvals = empty(q.shape, q), empty(keys.shape, q), empty(values.shape, q)
    dva_part = empty((B * n_t, D), q)
    common = dict(BLOCK_T=BLOCK_T, D_PAD=d_pad, M_PAD=m_pad, HAS_LEN=lengths is not None, num_warps=NUM_WARPS,
                  maxnreg=MAXNREG)
    args = (d_ctx, q, keys, values, lengths if lengths is not None else q, v, ctx, lse)
    if B * T:
        additive_bwd_dq_kernel[(B, n_t)](*args, dq, dva_part, T, S, D, M, **common)
    if B * S:
        additive_bwd_dkv_kernel[(B, S)](*args, dk, dvals, T, S, D, M, **common)
    return dq, dk, dvals, dva_part.sum(0) if B * n_t else torch.zeros_like(v)


def aot_cases() -> list:
    """The three kernels × feature pads 64, 128 and 256, fp32."""
    from fused_s2s.triton.aot import AotCase

    cases = []
    for pad in (64, 128, MAX_FEATURES):
        consts = dict(BLOCK_T=BLOCK_T, D_PAD=pad, M_PAD=pad, HAS_LEN=True)
        ptrs = ["DCTX", "Q", "K", "V", "LEN", "VA", "CTX", "LSE"]
        scalars = {"T": "i32", "S": "i32", "D": "i32", "M": "i32"}
        for kernel, name, sig in (
                (additive_fwd_kernel, "attention_fwd[additive]", ["Q", "K", "V", "LEN", "VA", "CTX", "LSE"]),
                (additive_bwd_dq_kernel, "attention_bwd_dq[additive]", ptrs + ["DQ", "DVA_PART"]),
                (additive_bwd_dkv_kernel, "attention_bwd_dkv[additive]", ptrs + ["DK", "DV"])):
            signature = {p: ("*i64" if p == "LEN" else "*fp32") for p in sig}
            signature.update(scalars)
            signature.update({k: "constexpr" for k in consts})
            cases.append(AotCase(kernel, name, f"BT{BLOCK_T}-F{pad}-w{NUM_WARPS}", "fp32", signature, consts,
                                 NUM_WARPS, 1, {"maxnreg": MAXNREG}))
    return cases
