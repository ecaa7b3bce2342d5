"""Triton GRU and Elman RNN (tanh/relu) kernels for one layer in one direction: forward and backward recurrence.

The cell is a constexpr (CELL: GRU, RNN_TANH or RNN_RELU) of one forward and one backward kernel; G = 3 gate
rows per unit for the GRU (r, z, n), 1 for the RNN. The math is nn.GRU's / nn.RNN's (fused_s2s/reference/
cells.py, csrc/include/fused_s2s/gru_cell.h, rnn_cell.h):
    GRU: r = σ(gi_r + gh_r), z = σ(gi_z + gh_z), n = tanh(gi_n + r ⊙ gh_n), h' = n + z ⊙ (h − n)
    RNN: h' = act(gi + gh)
with gi = x·W_ihᵀ + b_ih and gh = h·W_hhᵀ + b_hh. The input projection gi for all steps is one torch GEMM
before the forward kernel; the kernel adds b_hh to its fp32 gh (the GRU's b_hn must stay inside the reset
product, and no 16-bit b_ih + b_hh is rounded). dx and the weight gradients are torch GEMMs over all steps after the backward kernel
(fused_s2s/ops/cells_triton.py).

Both kernels are persistent and batch-tiled like the LSTM's (fused_s2s/triton/lstm.py; the helpers both use are
in common.py): one program per tile of BLOCK_B batch rows owns all hidden units and loops over every step,
re-reading W_hh (from L2) each step. Programs never wait on each other, so they also run under the interpreter.
- forward, per step: gh = h_{s}·W_hhᵀ (one K loop, G accumulators per unit block) → cell → h, y, and for the
  GRU's backward the saved r, z, n, gh_n.
- backward, per step (s = T−1 .. 0): dh = carried dh + dy → gate gradients dgi (of gi) and dgh (of gh; the
  RNN's equals dgi), stored for the weight GEMMs → dh_{t−1} = (GRU: dh ⊙ z) + dgh·W_hh.

Lengths and direction: as the LSTM kernels (lstm.py's docstring): at iteration s a row b is active while
s < len_b and reads time t_b = s (forward) or len_b − 1 − s (reverse); an inactive row keeps its state and
writes zero to y at time s, a padding position. So every y[t, b] is written.

Precision: fp32, fp16 and bf16 inputs; products accumulate in fp32, the carried h and dh and the GRU's saved
activations are fp32 (h enters the recurrent dot rounded to the weight's dtype). fp64 inputs (gradcheck)
accumulate in fp64. fp32 dots use IEEE fp32 unless torch.backends.cuda.matmul.allow_tf32 is on.
Interpreter notes (DESIGN.md §2): tl.dot on two bf16 operands is wrong under TRITON_INTERPRET=1, so the
launchers set DOT_FP32 there (common.dot_fp32) to upcast the operands; compiled code keeps the bf16 dot. The
interpreter also converts fp32 to bf16 by truncation (toward zero; checked with triton 3.9.0), not to nearest
as compiled code does: its bf16 results carry a small one-sided bias that a recurrence accumulates.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fused_s2s.triton.cell_math import sigmoid, tanh
from fused_s2s.triton.common import (INTERPRET, Config, acc_dtype, batch_tile, dot, dot_fp32, dot_precision,
                                     output_buffer, row_time)

# The CELL constexpr, and the nonlinearity / cell names the ops use for it. The kernels compare CELL with
# these literals (0 GRU, 1 RNN tanh, 2 RNN relu): a jitted function reads no plain-int globals.
GRU, RNN_TANH, RNN_RELU = 0, 1, 2
CELLS = {"gru": GRU, "tanh": RNN_TANH, "relu": RNN_RELU}
GATES = {GRU: 3, RNN_TANH: 1, RNN_RELU: 1}

# Every shipped configuration, in one place (the AOT check compiles each for sm_80/sm_90 × fp32/fp16/bf16 ×
# every cell and fails on a spill). Spill-free picks from a scan of the GRU kernels (the heaviest cell) over
# BB 16, BH 16-64, BK 16-32, 4-8 warps: at 4 warps BH ≥ 32 reached 255 registers and spilled (the fp32 IEEE dot
# runs on FMAs, operands in registers); BH 64 spills in the forward with BK 32.
FWD_CONFIGS = (Config(16, 32, 16, 8), Config(16, 64, 16, 8))
BWD_CONFIGS = (Config(16, 32, 32, 8), Config(16, 64, 32, 8))


def pick_config(configs: tuple[Config, ...], H: int) -> Config:
    """The first config for H ≤ 256 and under the interpreter (smaller tiles waste less on partial blocks);
    the second (wider unit blocks, fewer loop trips) for larger layers."""
    if H <= 256 or INTERPRET:
        return configs[0]
    return configs[1]


@triton.jit
def _relu(a):
    return tl.where(a < 0.0, 0.0, a)  # NaN stays NaN, as torch.relu


@triton.jit
def cell_fwd_kernel(
    GI,       # [T, B, G·H] x·W_ihᵀ + b_ih (input dtype)
    W_HH,     # [G·H, H] recurrent weight (input dtype); rows r, z, n for the GRU
    B_HH,     # [G·H] recurrent bias (HAS_BHH)
    LEN,      # [B] int64 sequence lengths (HAS_LEN)
    HS,       # [2, B, H] h ping-pong in the acc dtype: HS[s % 2] holds h before iteration s (HS[0] = h0)
    Y,        # [T, B, H] output (input dtype); zero at padding positions
    SAVED,    # [T, B, 4H] acc dtype: r, z, n, gh_n = W_hn·h + b_hn (GRU with SAVE); zero at padding positions
    B, T, H,
    CELL: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_BHH: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    rows, row_ok, rows64, lens = batch_tile(LEN, B, T, BLOCK_B, HAS_LEN)
    G = H * 3 if CELL == 0 else H
    ACC: tl.constexpr = HS.dtype.element_ty  # fp32, or fp64 for fp64 inputs
    w_ty = W_HH.dtype.element_ty

    for s in range(T):
        active, t = row_time(s, lens, row_ok, REVERSE)
        on = active[:, None]
        src = s % 2
        dst = 1 - src
        for u0 in range(0, H, BLOCK_H):
            units = u0 + tl.arange(0, BLOCK_H)
            u_ok = units < H
            ru = row_ok[:, None] & u_ok[None, :]
            au = on & u_ok[None, :]
            # gh = h·W_hhᵀ for gate rows g·H + units: acc_0 (r or the RNN's only gate), acc_1 (z), acc_2 (n)
            acc_0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
            acc_1 = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
            acc_2 = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
            for k0 in range(0, H, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < H
                h_prev = tl.load(HS + (src * B + rows64)[:, None] * H + ks[None, :],
                                 mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(w_ty)      # [BB, BK]
                w = W_HH + units[None, :] * H + ks[:, None]                                       # [BK, BH] of W_hhᵀ
                wm = k_ok[:, None] & u_ok[None, :]
                acc_0 += dot(h_prev, tl.load(w, mask=wm, other=0.0), DOT_FP32, PRECISION)
                if CELL == 0:  # GRU
                    acc_1 += dot(h_prev, tl.load(w + H * H, mask=wm, other=0.0), DOT_FP32, PRECISION)
                    acc_2 += dot(h_prev, tl.load(w + 2 * H * H, mask=wm, other=0.0), DOT_FP32, PRECISION)
            if HAS_BHH:  # gh = h·W_hhᵀ + b_hh
                acc_0 += tl.load(B_HH + units, mask=u_ok, other=0.0).to(ACC)[None, :]
                if CELL == 0:  # GRU
                    acc_1 += tl.load(B_HH + H + units, mask=u_ok, other=0.0).to(ACC)[None, :]
                    acc_2 += tl.load(B_HH + 2 * H + units, mask=u_ok, other=0.0).to(ACC)[None, :]
            h_old = tl.load(HS + (src * B + rows64)[:, None] * H + units[None, :], mask=ru, other=0.0)  # [BB, BH]
            gi = GI + (t * B + rows64)[:, None] * G + units[None, :]
            if CELL == 0:  # GRU
                r = sigmoid(acc_0 + tl.load(gi, mask=au, other=0.0).to(ACC))
                z = sigmoid(acc_1 + tl.load(gi + H, mask=au, other=0.0).to(ACC))
                n = tanh(tl.load(gi + 2 * H, mask=au, other=0.0).to(ACC) + r * acc_2)
                h = n + z * (h_old - n)
                if SAVE:
                    sp = SAVED + (t * B + rows64)[:, None] * (4 * H) + units[None, :]
                    tl.store(sp, tl.where(on, r, 0.0), mask=ru)
                    tl.store(sp + H, tl.where(on, z, 0.0), mask=ru)
                    tl.store(sp + 2 * H, tl.where(on, n, 0.0), mask=ru)
                    tl.store(sp + 3 * H, tl.where(on, acc_2, 0.0), mask=ru)
            else:
                a = acc_0 + tl.load(gi, mask=au, other=0.0).to(ACC)
                if CELL == 1:  # RNN tanh
                    h = tanh(a)
                else:
                    h = _relu(a)
            tl.store(HS + (dst * B + rows64)[:, None] * H + units[None, :], tl.where(on, h, h_old), mask=ru)
            tl.store(Y + (t * B + rows64)[:, None] * H + units[None, :],
                     tl.where(on, h, 0.0).to(Y.dtype.element_ty), mask=ru)
        # Orders this step's HS[dst] stores before the next step's HS loads (as dot operands, another layout),
        # and this step's HS[src] loads before the next step overwrites HS[src].
        tl.debug_barrier()


@triton.jit
def cell_bwd_kernel(
    DY,       # [T, B, H] gradient of y (input dtype)
    Y,        # [T, B, H] the forward's output (input dtype): h_t, and the GRU's h_{t-1}
    H0,       # [B, H] initial state (GRU: h_{t-1} at each sequence's first step)
    SAVED,    # [T, B, 4H] the GRU forward's r, z, n, gh_n (acc dtype; GRU only)
    W_HH,     # [G·H, H]
    LEN,      # [B] int64 (HAS_LEN)
    DHS,      # [2, B, H] acc-dtype ping-pong of the carried dh (the launcher fills DHS[0] with dh_n)
    DGI,      # [T, B, G·H] gradient of gi (input dtype); zero at padding positions
    DGH,      # [T, B, G·H] gradient of gh = h·W_hhᵀ + b_hh (GRU; for the RNN the launcher passes DGI again)
    B, T, H,
    CELL: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    rows, row_ok, rows64, lens = batch_tile(LEN, B, T, BLOCK_B, HAS_LEN)
    G = H * 3 if CELL == 0 else H
    ACC: tl.constexpr = DHS.dtype.element_ty
    dg_ty = DGI.dtype.element_ty

    for i in range(T):
        s = T - 1 - i
        active, t = row_time(s, lens, row_ok, REVERSE)
        on = active[:, None]
        src = i % 2
        dst = 1 - src
        # 1. pointwise: gate gradients of every unit, and the part of dh_{t-1} that skips W_hh
        for u0 in range(0, H, BLOCK_H):
            units = u0 + tl.arange(0, BLOCK_H)
            u_ok = units < H
            ru = row_ok[:, None] & u_ok[None, :]
            au = on & u_ok[None, :]
            dh_carry = tl.load(DHS + (src * B + rows64)[:, None] * H + units[None, :], mask=ru, other=0.0)
            dh = dh_carry + tl.load(DY + (t * B + rows64)[:, None] * H + units[None, :], mask=au, other=0.0).to(ACC)
            dgi = DGI + (t * B + rows64)[:, None] * G + units[None, :]
            if CELL == 0:  # GRU
                sp = SAVED + (t * B + rows64)[:, None] * (4 * H) + units[None, :]
                r = tl.load(sp, mask=au, other=0.0)
                z = tl.load(sp + H, mask=au, other=0.0)
                n = tl.load(sp + 2 * H, mask=au, other=0.0)
                ghn = tl.load(sp + 3 * H, mask=au, other=0.0)
                # h_{t-1}: the previous iteration's output, or h0 at a sequence's first step (s == 0)
                if REVERSE:
                    t_prev = t + 1
                else:
                    t_prev = t - 1
                first = (lens * 0 + s) == 0
                h_prev = tl.load(Y + (t_prev * B + rows64)[:, None] * H + units[None, :],
                                 mask=au & ~first[:, None], other=0.0).to(ACC)
                h_prev += tl.load(H0 + rows64[:, None] * H + units[None, :], mask=au & first[:, None],
                                  other=0.0).to(ACC)
                d_n = dh * (1.0 - z) * (1.0 - n * n)                 # of gi_n
                d_r = d_n * ghn * r * (1.0 - r)                      # of gi_r and gh_r
                d_z = dh * (h_prev - n) * z * (1.0 - z)              # of gi_z and gh_z
                tl.store(dgi, tl.where(on, d_r, 0.0).to(dg_ty), mask=ru)
                tl.store(dgi + H, tl.where(on, d_z, 0.0).to(dg_ty), mask=ru)
                tl.store(dgi + 2 * H, tl.where(on, d_n, 0.0).to(dg_ty), mask=ru)
                dgh = DGH + (t * B + rows64)[:, None] * G + units[None, :]
                tl.store(dgh, tl.where(on, d_r, 0.0).to(dg_ty), mask=ru)
                tl.store(dgh + H, tl.where(on, d_z, 0.0).to(dg_ty), mask=ru)
                tl.store(dgh + 2 * H, tl.where(on, d_n * r, 0.0).to(dg_ty), mask=ru)  # of gh_n (inside r ⊙ ·)
                dh_direct = dh * z
            else:
                y = tl.load(Y + (t * B + rows64)[:, None] * H + units[None, :], mask=au, other=0.0).to(ACC)
                if CELL == 1:  # RNN tanh
                    d_a = dh * (1.0 - y * y)
                else:
                    d_a = tl.where(y > 0.0, dh, 0.0)
                tl.store(dgi, tl.where(on, d_a, 0.0).to(dg_ty), mask=ru)
                dh_direct = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
            # inactive rows carry dh unchanged
            tl.store(DHS + (dst * B + rows64)[:, None] * H + units[None, :], tl.where(on, dh_direct, dh_carry),
                     mask=ru)
        # Orders the DGH and DHS[dst] stores above before their loads below (dot operands, another layout).
        tl.debug_barrier()
        # 2. dh_{t-1} += dgh·W_hh for active rows
        for p0 in range(0, H, BLOCK_H):
            ps = p0 + tl.arange(0, BLOCK_H)
            p_ok = ps < H
            acc = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
            for k0 in range(0, G, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < G
                dg = tl.load(DGH + (t * B + rows64)[:, None] * G + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                             other=0.0)                                                            # [BB, BK]
                w = tl.load(W_HH + ks[:, None] * H + ps[None, :], mask=k_ok[:, None] & p_ok[None, :], other=0.0)
                acc += dot(dg, w, DOT_FP32, PRECISION)
            dp = DHS + (dst * B + rows64)[:, None] * H + ps[None, :]
            rp = row_ok[:, None] & p_ok[None, :]
            tl.store(dp, tl.load(dp, mask=rp, other=0.0) + tl.where(on, acc, 0.0), mask=rp)
        # Orders this step's DHS[dst] stores before the next step's loads of them, and this step's DHS[src]
        # and DGH loads before the next step overwrites DHS[src].
        tl.debug_barrier()


# ---- launchers ----

def cell_fwd(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], lengths: Optional[Tensor],
             reverse: bool, cell: str, save: bool) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Recurrence over gi = x·W_ihᵀ + b_ih [T, B, G·H] with the recurrent bias b_hh [G·H] (see cell_fwd_kernel): y [T, B, H], h_n [B, H] (gi's dtype) and, for the
    GRU when `save`, the saved r, z, n, gh_n [T, B, 4H] (acc_dtype).

    cell: "gru", "tanh" or "relu". All tensors contiguous on one device; lengths int64 on that device.
    """
    T, B, _ = gi.shape
    H = w_hh.shape[1]
    dtype, device = gi.dtype, gi.device
    cfg = pick_config(FWD_CONFIGS, H)
    code = CELLS[cell]
    acc_t = acc_dtype(dtype)
    hs = torch.empty(2, B, H, dtype=acc_t, device=device)
    hs[0] = h0
    y = output_buffer((T, B, H), dtype, device)
    saved = output_buffer((T, B, 4 * H), acc_t, device) if save and code == GRU else None
    if T > 0:
        cell_fwd_kernel[(triton.cdiv(B, cfg.block_b),)](
            gi, w_hh, b_hh if b_hh is not None else w_hh, lengths if lengths is not None else gi, hs, y,
            saved if saved is not None else hs, B, T, H,
            CELL=code, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k, HAS_BHH=b_hh is not None,
            HAS_LEN=lengths is not None, REVERSE=reverse, SAVE=saved is not None,
            DOT_FP32=dot_fp32(w_hh.dtype), PRECISION=dot_precision(w_hh.dtype), **cfg.launch_options())
    return y, hs[T % 2].to(dtype, copy=True), saved


def cell_bwd(dy: Tensor, dh_n: Tensor, y: Tensor, h0: Tensor, saved: Optional[Tensor], w_hh: Tensor,
             lengths: Optional[Tensor], reverse: bool, cell: str) -> tuple[Tensor, Tensor, Tensor]:
    """Backward recurrence: dgi [T, B, G·H] and dgh (the same tensor for the RNN), both dy's dtype and zero at
    padding positions, and dh0 [B, H] (acc_dtype). saved: the GRU forward's [T, B, 4H] (None for the RNN)."""
    T, B, H = y.shape
    G = w_hh.shape[0]
    dtype, device = dy.dtype, dy.device
    cfg = pick_config(BWD_CONFIGS, H)
    code = CELLS[cell]
    dhs = torch.empty(2, B, H, dtype=acc_dtype(dtype), device=device)
    dhs[0] = dh_n
    dgi = output_buffer((T, B, G), dtype, device)
    dgh = output_buffer((T, B, G), dtype, device) if code == GRU else dgi
    if T > 0:
        cell_bwd_kernel[(triton.cdiv(B, cfg.block_b),)](
            dy, y, h0, saved if saved is not None else dhs, w_hh, lengths if lengths is not None else y, dhs,
            dgi, dgh, B, T, H,
            CELL=code, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k, HAS_LEN=lengths is not None,
            REVERSE=reverse, DOT_FP32=dot_fp32(w_hh.dtype), PRECISION=dot_precision(w_hh.dtype), **cfg.launch_options())
    return dgi, dgh, dhs[T % 2]


# ---- ahead-of-time compile cases (fused_s2s/triton/aot.py) ----

def aot_cases() -> list:
    """Every shipped config × fp32/fp16/bf16 × cell (gru, rnn_tanh, rnn_relu) of both kernels, in their
    heaviest variant (lengths, reverse, b_hh, saving for backward): the plain variants only drop code."""
    from fused_s2s.triton.aot import AotCase

    cases = []
    for dtype in ("fp32", "fp16", "bf16"):
        dt, acc = f"*{dtype}", "*fp32"  # triton's pointer type names match ours
        precision = "ieee" if dtype == "fp32" else "tf32"
        for cell_name, code in (("gru", GRU), ("rnn_tanh", RNN_TANH), ("rnn_relu", RNN_RELU)):
            for cfg in FWD_CONFIGS:
                sig = {"GI": dt, "W_HH": dt, "B_HH": dt, "LEN": "*i64", "HS": acc, "Y": dt, "SAVED": acc,
                       "B": "i32", "T": "i32", "H": "i32"}
                consts = dict(CELL=code, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
                              HAS_BHH=True, HAS_LEN=True, REVERSE=True, SAVE=code == GRU, DOT_FP32=False,
                              PRECISION=precision)
                sig.update({k: "constexpr" for k in consts})
                cases.append(AotCase(cell_fwd_kernel, f"{cell_name}_fwd", cfg.name, dtype, sig, consts,
                                     cfg.num_warps, cfg.num_stages, {"maxnreg": cfg.maxnreg}))
            for cfg in BWD_CONFIGS:
                sig = {"DY": dt, "Y": dt, "H0": dt, "SAVED": acc, "W_HH": dt, "LEN": "*i64", "DHS": acc,
                       "DGI": dt, "DGH": dt, "B": "i32", "T": "i32", "H": "i32"}
                consts = dict(CELL=code, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
                              HAS_LEN=True, REVERSE=True, DOT_FP32=False, PRECISION=precision)
                sig.update({k: "constexpr" for k in consts})
                cases.append(AotCase(cell_bwd_kernel, f"{cell_name}_bwd", cfg.name, dtype, sig, consts,
                                     cfg.num_warps, cfg.num_stages, {"maxnreg": cfg.maxnreg}))
    return cases
