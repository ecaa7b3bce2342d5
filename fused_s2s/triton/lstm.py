"""Triton LSTM kernels for one layer in one direction: forward recurrence and backward recurrence.

The input projection X·W_ihᵀ + b_ih + b_hh for all steps is one torch GEMM before the forward kernel; the
weight and input gradients are large torch GEMMs over all steps after the backward kernel (see
fused_s2s/ops/lstm_triton.py). Only the recurrence is here.

Two forward kernels share one body (`lstm_fwd_kernel`); the launcher picks one per call (`select_forward`):
- **per-step**: one launch per time step; programs tile batch rows × hidden units, so even a small batch
  spreads over many SMs. With proj_size > 0 a program owns all hidden units of its rows (the projection
  needs the whole h row), still one launch per step.
- **persistent**: one launch loops over all steps. Each program owns a tile of batch rows and all hidden
  units, so programs never wait on each other (it runs under the interpreter) and re-read W_hh from L2
  every step.
The backward kernel (`lstm_bwd_kernel`) is persistent and batch-tiled the same way: per step it computes
dh → gate gradients dG (saved for the weight GEMMs) → dh_{t-1} = dG·W_hh and dc_{t-1}.

PEEPHOLE (a constexpr of both kernels; the branches compile away when off) is the peephole cell of
FusedLSTM(peephole=True) (fused_s2s/reference/lstm.py peephole_lstm_cell, csrc/include/fused_s2s/lstm_cell.h):
i = σ(a_i + w_ci ⊙ c_{t-1}), f = σ(a_f + w_cf ⊙ c_{t-1}), o = σ(a_o + w_co ⊙ c_t). The backward adds the peephole
paths to dc; dw_c is a reduction over rows and steps of the stored dG times the saved cells, taken by the op in
torch (fused_s2s/ops/lstm_triton.py) like the other weight gradients. No projection with it (FusedLSTM refuses).

Lengths and direction (the semantics of fused_s2s.reference.lstm.lstm_layer): at iteration s a row b is
active while s < len_b; it then reads time t_b = s (forward) or len_b - 1 - s (reverse). An inactive row keeps
its state and writes a zero output at time s, which is then a padding position. So every y[t, b] is written.

Precision: fp32, fp16 and bf16 inputs; products accumulate in fp32, and the cell state c and the gates saved
for the backward are fp32 (bf16 saved gates tripled the error of the gradients against torch's own bf16 error).
fp64 inputs (for gradcheck) accumulate in fp64. fp32 dots
use IEEE fp32 unless torch.backends.cuda.matmul.allow_tf32 is on.

Interpreter note (DESIGN.md §2): under TRITON_INTERPRET=1, tl.dot on two bf16 operands returns garbage, so
the launcher sets DOT_FP32 to upcast the operands there (common.dot_fp32); compiled code keeps the native bf16 dot.
The helpers shared with lstm_grid.py and cells.py (configs, dot, batch tiling, the lengths rule) are in common.py.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fused_s2s.triton.cell_math import lstm_cell, peephole_lstm_cell, tanh
from fused_s2s.triton.common import (INTERPRET, Config, acc_dtype, batch_tile, dot, dot_fp32, dot_precision,
                                     output_buffer, row_time, sm_count)
from fused_s2s.triton.lstm_grid import lstm_fwd_grid

# Every shipped configuration, in one place. The AOT check compiles each for sm_80/sm_90 × fp32/fp16/bf16 and
# fails on any spill; these are spill-free ones from a scan over BB 16-64, BH 16-64, BK 16-32, 4-8 warps
# (larger tiles spilled: 150-230 registers already, the four gate tiles and their addresses live together).
FWD_CONFIGS = (Config(16, 32, 16, 8), Config(16, 32, 32, 8))
BWD_CONFIGS = (Config(16, 32, 32, 8), Config(16, 64, 16, 8))


def pick_config(configs: tuple[Config, ...], H: int) -> Config:
    """Rule: the first config for H ≤ 256 and under the interpreter; the second (longer K tiles, fewer loop
    trips) for larger layers."""
    if H <= 256 or INTERPRET:
        return configs[0]
    return configs[1]


# "grid_persistent" (fused_s2s/triton/lstm_grid.py) is opt-in only: no GPU has run it yet.
FORWARD_KERNELS = ("persistent", "per_step", "grid_persistent")


def select_forward(B: int, H: int, P: int, config: Config, sm_count: int) -> str:
    """"persistent" or "per_step" for a forward call; FUSED_S2S_TRITON_LSTM_KERNEL overrides it (and is the
    only way to get "grid_persistent").

    Per-step costs a launch (~3-5 µs) per step but spreads a step over cdiv(B, block_b)·cdiv(H, block_h)
    programs. Persistent has only cdiv(B, block_b) programs, each re-reading all of W_hh every step: worth it
    when W_hh is small (H·P ≤ 256², launch overhead dominates) or the batch alone fills half the SMs.
    """
    override = os.environ.get("FUSED_S2S_TRITON_LSTM_KERNEL", "")
    if override:
        if override not in FORWARD_KERNELS:
            raise ValueError(f"FUSED_S2S_TRITON_LSTM_KERNEL must be one of {FORWARD_KERNELS}, got {override!r}")
        return override
    batch_programs = triton.cdiv(B, config.block_b)
    if H * P <= 256 * 256 or batch_programs >= max(1, sm_count // 2):
        return "persistent"
    return "per_step"


@triton.jit
def lstm_fwd_kernel(
    XP,       # [T, B, 4H] input projection plus both biases (input dtype)
    W_HH,     # [4H, P] recurrent weight (input dtype)
    W_HR,     # [P, H] projection weight (HAS_PROJ)
    LEN,      # [B] int64 sequence lengths (HAS_LEN)
    HS,       # [2, B, P] h ping-pong: HS[s % 2] holds h before iteration s (input dtype)
    CS,       # [B, H] fp32 cell state, updated in place (the launcher fills it with c0)
    HRAW,     # [B, H] fp32 scratch: h before the projection (HAS_PROJ)
    Y,        # [T, B, P] output
    HN,       # [B, P] final h
    GATES,    # [T, B, 4H] activated gates i, f, g, o, fp32 (SAVE; zero at padding positions)
    CELLS,    # [T, B, H] fp32 cell states (SAVE; zero at padding positions)
    W_C,      # [3H] peephole weights w_ci, w_cf, w_co (input dtype; PEEPHOLE, which implies P == H)
    B, T, H, P,
    s_begin, n_steps,       # iterations s_begin .. s_begin + n_steps - 1
    units_per_program,      # hidden units per program along grid axis 1 (a multiple of BLOCK_H)
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_PROJ: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr,
    PEEPHOLE: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    rows, row_ok, rows64, lens = batch_tile(LEN, B, T, BLOCK_B, HAS_LEN)
    u_begin = tl.program_id(1) * units_per_program
    u_end = tl.minimum(u_begin + units_per_program, H)
    G = 4 * H
    out_ty = Y.dtype.element_ty
    ACC: tl.constexpr = CS.dtype.element_ty  # fp32, or fp64 for fp64 inputs

    for i in range(n_steps):
        s = s_begin + i
        active, t = row_time(s, lens, row_ok, REVERSE)
        last = row_ok & ((lens * 0 + s) == T - 1)  # the final iteration also writes h_n
        src = s % 2
        dst = 1 - src
        for u0 in range(u_begin, u_end, BLOCK_H):
            units = u0 + tl.arange(0, BLOCK_H)
            u_ok = units < u_end
            ru = row_ok[:, None] & u_ok[None, :]
            au = active[:, None] & u_ok[None, :]
            acc_i = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
            acc_f = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
            acc_g = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
            acc_o = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
            for k0 in range(0, P, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < P
                h_prev = tl.load(HS + (src * B + rows64)[:, None] * P + ks[None, :],
                                 mask=row_ok[:, None] & k_ok[None, :], other=0.0)          # [BB, BK]
                w = W_HH + units[None, :] * P + ks[:, None]                                  # [BK, BH] of W_hhᵀ
                wm = k_ok[:, None] & u_ok[None, :]
                acc_i += dot(h_prev, tl.load(w, mask=wm, other=0.0), DOT_FP32, PRECISION)
                acc_f += dot(h_prev, tl.load(w + H * P, mask=wm, other=0.0), DOT_FP32, PRECISION)
                acc_g += dot(h_prev, tl.load(w + 2 * H * P, mask=wm, other=0.0), DOT_FP32, PRECISION)
                acc_o += dot(h_prev, tl.load(w + 3 * H * P, mask=wm, other=0.0), DOT_FP32, PRECISION)
            # the input projection is added after the loop, so its addresses are not live during it
            xp = XP + (t * B + rows64)[:, None] * G + units[None, :]
            acc_i += tl.load(xp, mask=au, other=0.0).to(ACC)
            acc_f += tl.load(xp + H, mask=au, other=0.0).to(ACC)
            acc_g += tl.load(xp + 2 * H, mask=au, other=0.0).to(ACC)
            acc_o += tl.load(xp + 3 * H, mask=au, other=0.0).to(ACC)
            cs = CS + rows64[:, None] * H + units[None, :]
            c_prev = tl.load(cs, mask=ru, other=0.0)
            if PEEPHOLE:
                # loaded here, after the K loop, so the three [BLOCK_H] weight rows are not live during it;
                # o's peephole sees c_t, so the saved og is the gate after it (what the backward needs)
                wc = W_C + units
                ig, fg, gg, og, c, h = peephole_lstm_cell(
                    acc_i, acc_f, acc_g, acc_o, c_prev, tl.load(wc, mask=u_ok, other=0.0).to(ACC)[None, :],
                    tl.load(wc + H, mask=u_ok, other=0.0).to(ACC)[None, :],
                    tl.load(wc + 2 * H, mask=u_ok, other=0.0).to(ACC)[None, :])
            else:
                ig, fg, gg, og, c, h = lstm_cell(acc_i, acc_f, acc_g, acc_o, c_prev)
            tl.store(cs, tl.where(active[:, None], c, c_prev), mask=ru)
            if SAVE:
                gp = GATES + (t * B + rows64)[:, None] * G + units[None, :]
                # zeros at padding positions, so the saved buffers are deterministic outputs of the op
                on = active[:, None]
                tl.store(gp, tl.where(on, ig, 0.0), mask=ru)
                tl.store(gp + H, tl.where(on, fg, 0.0), mask=ru)
                tl.store(gp + 2 * H, tl.where(on, gg, 0.0), mask=ru)
                tl.store(gp + 3 * H, tl.where(on, og, 0.0), mask=ru)
                tl.store(CELLS + (t * B + rows64)[:, None] * H + units[None, :], tl.where(on, c, 0.0), mask=ru)
            if HAS_PROJ:
                tl.store(HRAW + rows64[:, None] * H + units[None, :], h, mask=ru)
            else:
                h_old = tl.load(HS + (src * B + rows64)[:, None] * P + units[None, :], mask=ru, other=0.0)
                h_keep = tl.where(active[:, None], h.to(out_ty), h_old)
                tl.store(HS + (dst * B + rows64)[:, None] * P + units[None, :], h_keep, mask=ru)
                tl.store(Y + (t * B + rows64)[:, None] * P + units[None, :],
                         tl.where(active[:, None], h, 0.0).to(out_ty), mask=ru)
                tl.store(HN + rows64[:, None] * P + units[None, :], h_keep, mask=ru & last[:, None])
        if HAS_PROJ:
            # Orders the HRAW stores above (one program wrote all H units of its rows) before the loads
            # below, which read them in the dot-operand layout.
            tl.debug_barrier()
            for p0 in range(0, P, BLOCK_H):
                ps = p0 + tl.arange(0, BLOCK_H)
                p_ok = ps < P
                acc = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
                for k0 in range(0, H, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    k_ok = ks < H
                    hr = tl.load(HRAW + rows64[:, None] * H + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                                 other=0.0)
                    w = tl.load(W_HR + ps[None, :] * H + ks[:, None], mask=k_ok[:, None] & p_ok[None, :],
                                other=0.0)                                                   # [BK, BP] of W_hrᵀ
                    acc += dot(hr.to(W_HR.dtype.element_ty), w, DOT_FP32, PRECISION)
                rp = row_ok[:, None] & p_ok[None, :]
                h_old = tl.load(HS + (src * B + rows64)[:, None] * P + ps[None, :], mask=rp, other=0.0)
                h_keep = tl.where(active[:, None], acc.to(out_ty), h_old)
                tl.store(HS + (dst * B + rows64)[:, None] * P + ps[None, :], h_keep, mask=rp)
                tl.store(Y + (t * B + rows64)[:, None] * P + ps[None, :],
                         tl.where(active[:, None], acc, 0.0).to(out_ty), mask=rp)
                tl.store(HN + rows64[:, None] * P + ps[None, :], h_keep, mask=rp & last[:, None])
        # Orders this step's HS[dst] stores before the next step's HS loads (as dot operands, another
        # layout), and this step's HS[src]/HRAW loads before the next step overwrites them.
        tl.debug_barrier()


@triton.jit
def lstm_bwd_kernel(
    DY,       # [T, B, P] gradient of y (input dtype)
    GATES,    # [T, B, 4H] activated gates saved by the forward (fp32)
    CELLS,    # [T, B, H] fp32 cell states saved by the forward
    C0,       # [B, H] initial cell state
    W_HH,     # [4H, P]
    W_HR,     # [P, H] (HAS_PROJ)
    LEN,      # [B] int64 (HAS_LEN)
    DHS,      # [2, B, P] fp32 ping-pong of the carried dh (the launcher fills DHS[0] with dh_n)
    DCS,      # [B, H] fp32 carried dc, updated in place (filled with dc_n); holds dc0 at the end
    DHRAW,    # [B, H] fp32 scratch: dh before the projection (HAS_PROJ)
    DG,       # [T, B, 4H] pre-activation gate gradients (input dtype); zero at padding positions
    DHT,      # [T, B, P] fp32 dh of the projected output, for dW_hr (HAS_PROJ); zero at padding positions
    W_C,      # [3H] peephole weights w_ci, w_cf, w_co (input dtype; PEEPHOLE, which implies P == H)
    B, T, H, P,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_PROJ: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, PEEPHOLE: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    rows, row_ok, rows64, lens = batch_tile(LEN, B, T, BLOCK_B, HAS_LEN)
    G = 4 * H
    dg_ty = DG.dtype.element_ty
    ACC: tl.constexpr = DCS.dtype.element_ty  # fp32, or fp64 for fp64 inputs

    for i in range(T):
        s = T - 1 - i
        active, t = row_time(s, lens, row_ok, REVERSE)
        if REVERSE:
            t_prev = t + 1
        else:
            t_prev = t - 1
        src = i % 2
        dst = 1 - src
        if HAS_PROJ:
            # dh of the projected output, then back through the projection: dh_raw = dh·W_hr
            for p0 in range(0, P, BLOCK_K):
                ps = p0 + tl.arange(0, BLOCK_K)
                rp = row_ok[:, None] & (ps < P)[None, :]
                dh = tl.load(DHS + (src * B + rows64)[:, None] * P + ps[None, :], mask=rp, other=0.0)
                dh += tl.load(DY + (t * B + rows64)[:, None] * P + ps[None, :],
                              mask=rp & active[:, None], other=0.0).to(ACC)
                tl.store(DHT + (t * B + rows64)[:, None] * P + ps[None, :], tl.where(active[:, None], dh, 0.0),
                         mask=rp)
            # Orders the DHT stores before their loads as dot operands below.
            tl.debug_barrier()
            for u0 in range(0, H, BLOCK_H):
                units = u0 + tl.arange(0, BLOCK_H)
                u_ok = units < H
                acc = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
                for p0 in range(0, P, BLOCK_K):
                    ps = p0 + tl.arange(0, BLOCK_K)
                    p_ok = ps < P
                    dh = tl.load(DHT + (t * B + rows64)[:, None] * P + ps[None, :],
                                 mask=row_ok[:, None] & p_ok[None, :], other=0.0)
                    w = tl.load(W_HR + ps[:, None] * H + units[None, :], mask=p_ok[:, None] & u_ok[None, :],
                                other=0.0)
                    acc += dot(dh.to(W_HR.dtype.element_ty), w, DOT_FP32, PRECISION)
                tl.store(DHRAW + rows64[:, None] * H + units[None, :], acc, mask=row_ok[:, None] & u_ok[None, :])
            # Orders the DHRAW stores before the loads in the cell loop below (another layout).
            tl.debug_barrier()
        for u0 in range(0, H, BLOCK_H):
            units = u0 + tl.arange(0, BLOCK_H)
            u_ok = units < H
            ru = row_ok[:, None] & u_ok[None, :]
            au = active[:, None] & u_ok[None, :]
            if HAS_PROJ:
                dh = tl.load(DHRAW + rows64[:, None] * H + units[None, :], mask=au, other=0.0)
            else:
                dh = tl.load(DHS + (src * B + rows64)[:, None] * P + units[None, :], mask=au, other=0.0)
                dh += tl.load(DY + (t * B + rows64)[:, None] * P + units[None, :], mask=au, other=0.0).to(ACC)
            gp = GATES + (t * B + rows64)[:, None] * G + units[None, :]
            ig = tl.load(gp, mask=au, other=0.0).to(ACC)
            fg = tl.load(gp + H, mask=au, other=0.0).to(ACC)
            gg = tl.load(gp + 2 * H, mask=au, other=0.0).to(ACC)
            og = tl.load(gp + 3 * H, mask=au, other=0.0).to(ACC)
            c = tl.load(CELLS + (t * B + rows64)[:, None] * H + units[None, :], mask=au, other=0.0)
            # c_{t-1}: the saved cell of the previous iteration, or c0 at a sequence's first step (s == 0)
            first = ((lens * 0 + s) == 0)[:, None]
            c_prev_saved = tl.load(CELLS + (t_prev * B + rows64)[:, None] * H + units[None, :],
                                   mask=au & ~first, other=0.0)
            c_init = tl.load(C0 + rows64[:, None] * H + units[None, :], mask=au & first, other=0.0).to(ACC)
            c_prev = tl.where(first, c_init, c_prev_saved)
            dc_carry = tl.load(DCS + rows64[:, None] * H + units[None, :], mask=ru, other=0.0)
            tc = tanh(c)
            dc = dc_carry + dh * og * (1.0 - tc * tc)
            if PEEPHOLE:
                # o saw c_t through w_co; i and f saw c_{t-1} through w_ci, w_cf (csrc/include/fused_s2s/
                # lstm_cell.h peephole_cell_backward). dw_c is not reduced here: it is Σ d_a·c over rows and
                # steps, which the op takes in torch from the stored DG and the saved cells (no accumulator
                # tiles live in this kernel, whose registers are near the spill limit already).
                d_o = dh * tc * og * (1.0 - og)
                dc += d_o * tl.load(W_C + 2 * H + units, mask=u_ok, other=0.0).to(ACC)[None, :]
            d_i = dc * gg * ig * (1.0 - ig)
            d_f = dc * c_prev * fg * (1.0 - fg)
            d_g = dc * ig * (1.0 - gg * gg)
            if not PEEPHOLE:
                # here, after the other gates, as before the flag existed: the off path compiles to the same code
                d_o = dh * tc * og * (1.0 - og)
            dc_prev = dc * fg
            if PEEPHOLE:
                dc_prev += d_i * tl.load(W_C + units, mask=u_ok, other=0.0).to(ACC)[None, :]
                dc_prev += d_f * tl.load(W_C + H + units, mask=u_ok, other=0.0).to(ACC)[None, :]
            tl.store(DCS + rows64[:, None] * H + units[None, :], tl.where(active[:, None], dc_prev, dc_carry),
                     mask=ru)
            dgp = DG + (t * B + rows64)[:, None] * G + units[None, :]
            tl.store(dgp, tl.where(active[:, None], d_i, 0.0).to(dg_ty), mask=ru)
            tl.store(dgp + H, tl.where(active[:, None], d_f, 0.0).to(dg_ty), mask=ru)
            tl.store(dgp + 2 * H, tl.where(active[:, None], d_g, 0.0).to(dg_ty), mask=ru)
            tl.store(dgp + 3 * H, tl.where(active[:, None], d_o, 0.0).to(dg_ty), mask=ru)
        # Orders the DG stores above before their loads as dot operands below.
        tl.debug_barrier()
        # dh_{t-1} = dG·W_hh for active rows; inactive rows carry dh unchanged
        for p0 in range(0, P, BLOCK_H):
            ps = p0 + tl.arange(0, BLOCK_H)
            p_ok = ps < P
            acc = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
            for k0 in range(0, G, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < G
                dg = tl.load(DG + (t * B + rows64)[:, None] * G + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                             other=0.0)
                w = tl.load(W_HH + ks[:, None] * P + ps[None, :], mask=k_ok[:, None] & p_ok[None, :], other=0.0)
                acc += dot(dg, w, DOT_FP32, PRECISION)
            rp = row_ok[:, None] & p_ok[None, :]
            carry = tl.load(DHS + (src * B + rows64)[:, None] * P + ps[None, :], mask=rp, other=0.0)
            tl.store(DHS + (dst * B + rows64)[:, None] * P + ps[None, :], tl.where(active[:, None], acc, carry),
                     mask=rp)
        # Orders this step's DHS[dst] stores before the next step's loads of them, and this step's
        # DHS[src]/DG/DHRAW loads before the next step overwrites those buffers.
        tl.debug_barrier()


# ---- launchers ----

def lstm_fwd(xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], lengths: Optional[Tensor],
             reverse: bool, save: bool, kernel: Optional[str] = None, w_c: Optional[Tensor] = None
             ) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """Recurrence over xp [T, B, 4H] (input projection plus biases): y [T, B, P], h_n [B, P], c_n [B, H] (c0's
    dtype), and when `save` the activated gates [T, B, 4H] and cells [T, B, H] (both acc_dtype) for the backward.

    All tensors are contiguous and on one device; lengths is int64 on that device. kernel: "persistent",
    "per_step", "grid_persistent" or None (select_forward decides). w_c [3H] (w_ci, w_cf, w_co; no projection):
    the peephole cell; the saved o gate is then the one after its peephole.
    """
    T, B, G = xp.shape
    H = G // 4
    P = w_hh.shape[1]
    dtype, device = xp.dtype, xp.device
    cfg = pick_config(FWD_CONFIGS, H)
    kernel = kernel or select_forward(B, H, P, cfg, sm_count(device))
    hs = torch.empty(2, B, P, dtype=dtype, device=device)
    hs[0] = h0
    acc_t = acc_dtype(dtype)
    cs = c0.to(acc_t, copy=True)
    hraw = torch.empty(B, H, dtype=acc_t, device=device) if w_hr is not None else cs
    y = output_buffer((T, B, P), dtype, device)
    h_n = output_buffer((B, P), dtype, device)
    gates = output_buffer((T, B, G), acc_t, device) if save else xp
    cells = output_buffer((T, B, H), acc_t, device) if save else cs
    common = dict(BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k, HAS_PROJ=w_hr is not None,
                  HAS_LEN=lengths is not None, REVERSE=reverse, SAVE=save, PEEPHOLE=w_c is not None,
                  DOT_FP32=dot_fp32(dtype), PRECISION=dot_precision(dtype), **cfg.launch_options())
    args = (xp, w_hh, w_hr if w_hr is not None else w_hh, lengths if lengths is not None else xp, hs, cs, hraw,
            y, h_n, gates, cells, w_c if w_c is not None else w_hh, B, T, H, P)
    batch_programs = triton.cdiv(B, cfg.block_b)
    if T == 0:
        pass
    elif kernel == "persistent":
        lstm_fwd_kernel[(batch_programs, 1)](*args, 0, T, triton.cdiv(H, cfg.block_h) * cfg.block_h, **common)
    elif kernel == "grid_persistent":
        if w_hr is not None:
            raise RuntimeError("FUSED_S2S_TRITON_LSTM_KERNEL=grid_persistent cannot run: it has no proj_size support")
        if w_c is not None:
            raise RuntimeError("FUSED_S2S_TRITON_LSTM_KERNEL=grid_persistent cannot run: it has no peephole support")
        return lstm_fwd_grid(xp, h0, c0, w_hh, lengths, reverse, save)
    elif kernel == "per_step":
        # with a projection a program needs whole h rows: one program per batch tile, still one launch a step
        unit_programs = 1 if w_hr is not None else triton.cdiv(H, cfg.block_h)
        units = triton.cdiv(H, cfg.block_h * unit_programs) * cfg.block_h
        for s in range(T):
            lstm_fwd_kernel[(batch_programs, unit_programs)](*args, s, 1, units, **common)
    else:
        raise ValueError(f"kernel must be 'persistent' or 'per_step', got {kernel!r}")
    c_n = cs.to(c0.dtype)
    return y, h_n, c_n, (gates if save else None), (cells if save else None)


def lstm_bwd(dy: Tensor, dh_n: Tensor, dc_n: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
             lengths: Optional[Tensor], reverse: bool, gates: Tensor, cells: Tensor, w_c: Optional[Tensor] = None
             ) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Backward recurrence: dG [T, B, 4H] (pre-activation gate gradients, zero at padding positions), dh0 [B, P]
    (fp32), dc0 [B, H] (fp32) and, with a projection, dh of the projected output [T, B, P] (fp32) for dW_hr.
    With w_c [3H] (the peephole cell, as lstm_fwd) dG holds the peephole cell's gate gradients; dw_c is the
    caller's reduction Σ dG_{i,f}·c_{t-1}, Σ dG_o·c_t over rows and steps."""
    T, B, G = gates.shape
    H = G // 4
    P = w_hh.shape[1]
    dtype, device = dy.dtype, dy.device
    cfg = pick_config(BWD_CONFIGS, H)
    acc_t = acc_dtype(dtype)
    dhs = torch.empty(2, B, P, dtype=acc_t, device=device)
    dhs[0] = dh_n
    dcs = dc_n.to(acc_t, copy=True)
    dhraw = torch.empty(B, H, dtype=acc_t, device=device) if w_hr is not None else dcs
    dg = output_buffer((T, B, G), dtype, device)
    dht = output_buffer((T, B, P), acc_t, device) if w_hr is not None else dcs
    if T > 0:
        lstm_bwd_kernel[(triton.cdiv(B, cfg.block_b),)](
            dy, gates, cells, c0, w_hh, w_hr if w_hr is not None else w_hh,
            lengths if lengths is not None else gates, dhs, dcs, dhraw, dg, dht, w_c if w_c is not None else w_hh,
            B, T, H, P, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k, HAS_PROJ=w_hr is not None,
            HAS_LEN=lengths is not None, REVERSE=reverse, PEEPHOLE=w_c is not None, DOT_FP32=dot_fp32(dtype),
            PRECISION=dot_precision(dtype), **cfg.launch_options())
    return dg, dhs[T % 2], dcs, (dht if w_hr is not None else None)


# ---- ahead-of-time compile cases (fused_s2s/triton/aot.py) ----

def aot_cases() -> list:
    """Every shipped config × fp32/fp16/bf16 of both kernels, each in its plain and its heaviest variants
    (projection, lengths, reverse, saving for backward; the peephole cell with lengths, reverse and saving, which
    excludes a projection). The per-step and persistent forward kernels are one
    compiled kernel (they differ in launch grid and step range only)."""
    from fused_s2s.triton.aot import AotCase

    cases = []
    for dtype in ("fp32", "fp16", "bf16"):
        dt, acc = f"*{dtype}", "*fp32"  # triton's pointer type names match ours
        precision = "ieee" if dtype == "fp32" else "tf32"
        for variant, proj, peephole in (("plain", False, False), ("proj", True, False), ("peephole", False, True)):
            for cfg in FWD_CONFIGS:
                sig = {"XP": dt, "W_HH": dt, "W_HR": dt, "LEN": "*i64", "HS": dt, "CS": acc, "HRAW": acc, "Y": dt,
                       "HN": dt, "GATES": acc, "CELLS": acc, "W_C": dt, "B": "i32", "T": "i32", "H": "i32", "P": "i32",
                       "s_begin": "i32", "n_steps": "i32", "units_per_program": "i32"}
                consts = dict(BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k, HAS_PROJ=proj,
                              HAS_LEN=True, REVERSE=proj or peephole, SAVE=True, PEEPHOLE=peephole, DOT_FP32=False,
                              PRECISION=precision)
                sig.update({k: "constexpr" for k in consts})
                cases.append(AotCase(lstm_fwd_kernel, f"lstm_fwd[{variant}]", cfg.name, dtype, sig, consts,
                                     cfg.num_warps, cfg.num_stages, {"maxnreg": cfg.maxnreg}))
            for cfg in BWD_CONFIGS:
                sig = {"DY": dt, "GATES": acc, "CELLS": acc, "C0": dt, "W_HH": dt, "W_HR": dt, "LEN": "*i64",
                       "DHS": acc, "DCS": acc, "DHRAW": acc, "DG": dt, "DHT": acc, "W_C": dt, "B": "i32", "T": "i32",
                       "H": "i32", "P": "i32"}
                consts = dict(BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k, HAS_PROJ=proj,
                              HAS_LEN=True, REVERSE=proj or peephole, PEEPHOLE=peephole, DOT_FP32=False,
                              PRECISION=precision)
                sig.update({k: "constexpr" for k in consts})
                cases.append(AotCase(lstm_bwd_kernel, f"lstm_bwd[{variant}]", cfg.name, dtype, sig, consts,
                                     cfg.num_warps, cfg.num_stages, {"maxnreg": cfg.maxnreg}))
    return cases
