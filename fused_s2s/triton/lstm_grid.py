"""Cross-program persistent LSTM forward (opt-in, NOT run on a GPU yet): W_hh stays on chip for all steps.

Each program owns BLOCK_H hidden units for every batch row and loads its four gate slices of W_hh
([H, BLOCK_H] each, H ≤ MAX_H) once, before the time loop, so a step reads no weights from memory:
the step costs one exchange of h through global memory plus a grid-wide barrier (FlashRNN, Baidu's
persistent RNNs; DESIGN.md §4). The barrier is an atomic counter: after storing its slice of h_t, a program
adds 1 (release) and spins until the counter reaches (s + 1) · n_programs (acquire).

**Co-residency limit.** Every program must be resident at once, or the spinning ones starve the rest and the
kernel deadlocks. Triton has no cooperative launch, so the launcher only checks n_programs = cdiv(H,
BLOCK_H) ≤ the SM count (one program per SM); other work sharing the GPU (MPS, concurrent streams) can still
break the guarantee. Hence: never selected by default; only FUSED_S2S_TRITON_LSTM_KERNEL=grid_persistent
picks it, for layers without proj_size and H ≤ MAX_H (512 fp32, 256 16-bit). Under the interpreter programs run one after another,
so only a single-program grid (H ≤ BLOCK_H) can run there: that is what the tests run (the math, the step
loop and the counter for n = 1); the cross-program waiting is covered by the compile check alone.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fused_s2s.triton.cell_math import sigmoid, tanh
from fused_s2s.triton.common import INTERPRET, acc_dtype, dot, dot_fp32, dot_precision, output_buffer, row_time

# The largest H whose four [H, BLOCK_H] weight slices stay on chip without spills and within an SM's 64K
# registers (from the compile check: 16-bit at H 512 spilled with 8 warps and needed 2x the registers with 16).
MAX_H = {torch.float32: 512, torch.float16: 256, torch.bfloat16: 256, torch.float64: 256}
BLOCK_B = 16
BLOCK_H = 16
NUM_WARPS = 8


@triton.jit
def lstm_fwd_grid_kernel(
    XP,       # [T, B, 4H] input projection plus both biases (input dtype)
    W_HH,     # [4H, H]
    LEN,      # [B] int64 (HAS_LEN)
    HS,       # [2, B, H] h ping-pong (input dtype); HS[0] = h0
    CS,       # [B, H] cell state (acc dtype), updated in place; starts as c0
    Y,        # [T, B, H]
    HN,       # [B, H]
    GATES,    # [T, B, 4H] activated gates (acc dtype, SAVE)
    CELLS,    # [T, B, H] (acc dtype, SAVE)
    SYNC,     # [1] int32 zero-initialised barrier counter
    B, T, H,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, H_PAD: tl.constexpr,
    HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    n_programs = tl.num_programs(0)
    units = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    u_ok = units < H
    ks = tl.arange(0, H_PAD)
    k_ok = ks < H
    wm = k_ok[:, None] & u_ok[None, :]
    w = W_HH + units[None, :] * H + ks[:, None]                   # [H_PAD, BLOCK_H] of W_hhᵀ, loaded once
    w_i = tl.load(w, mask=wm, other=0.0)
    w_f = tl.load(w + H * H, mask=wm, other=0.0)
    w_g = tl.load(w + 2 * H * H, mask=wm, other=0.0)
    w_o = tl.load(w + 3 * H * H, mask=wm, other=0.0)
    G = 4 * H
    out_ty = Y.dtype.element_ty
    ACC: tl.constexpr = CS.dtype.element_ty

    for s in range(T):
        src = s % 2
        dst = 1 - src
        for b0 in range(0, B, BLOCK_B):
            rows = b0 + tl.arange(0, BLOCK_B)
            row_ok = rows < B
            rows64 = rows.to(tl.int64)
            if HAS_LEN:
                lens = tl.load(LEN + rows, mask=row_ok, other=0).to(tl.int32)
            else:
                lens = tl.zeros([BLOCK_B], dtype=tl.int32) + T
            active, t = row_time(s, lens, row_ok, REVERSE)
            ru = row_ok[:, None] & u_ok[None, :]
            au = active[:, None] & u_ok[None, :]
            # .cg: h_{t-1} was written by other SMs; read it from L2, never from a stale L1 line
            h_prev = tl.load(HS + (src * B + rows64)[:, None] * H + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                             other=0.0, cache_modifier=".cg")
            xp = XP + (t * B + rows64)[:, None] * G + units[None, :]
            a_i = dot(h_prev, w_i, DOT_FP32, PRECISION) + tl.load(xp, mask=au, other=0.0).to(ACC)
            a_f = dot(h_prev, w_f, DOT_FP32, PRECISION) + tl.load(xp + H, mask=au, other=0.0).to(ACC)
            a_g = dot(h_prev, w_g, DOT_FP32, PRECISION) + tl.load(xp + 2 * H, mask=au, other=0.0).to(ACC)
            a_o = dot(h_prev, w_o, DOT_FP32, PRECISION) + tl.load(xp + 3 * H, mask=au, other=0.0).to(ACC)
            # activations before the c_{t-1} load, inline: loading c first (as cell_math.lstm_cell needs)
            # cost 16-bit H 256 an 8-byte spill on sm_90
            ig = sigmoid(a_i)
            fg = sigmoid(a_f)
            gg = tanh(a_g)
            og = sigmoid(a_o)
            cs = CS + rows64[:, None] * H + units[None, :]
            c_prev = tl.load(cs, mask=ru, other=0.0)
            c = fg * c_prev + ig * gg
            h = og * tanh(c)
            on = active[:, None]
            tl.store(cs, tl.where(on, c, c_prev), mask=ru)
            if SAVE:
                gp = GATES + (t * B + rows64)[:, None] * G + units[None, :]
                tl.store(gp, tl.where(on, ig, 0.0), mask=ru)
                tl.store(gp + H, tl.where(on, fg, 0.0), mask=ru)
                tl.store(gp + 2 * H, tl.where(on, gg, 0.0), mask=ru)
                tl.store(gp + 3 * H, tl.where(on, og, 0.0), mask=ru)
                tl.store(CELLS + (t * B + rows64)[:, None] * H + units[None, :], tl.where(on, c, 0.0), mask=ru)
            h_old = tl.load(HS + (src * B + rows64)[:, None] * H + units[None, :], mask=ru, other=0.0,
                            cache_modifier=".cg")
            h_keep = tl.where(on, h.to(out_ty), h_old)
            tl.store(HS + (dst * B + rows64)[:, None] * H + units[None, :], h_keep, mask=ru)
            tl.store(Y + (t * B + rows64)[:, None] * H + units[None, :], tl.where(on, h, 0.0).to(out_ty), mask=ru)
            last = row_ok & ((lens * 0 + s) == T - 1)
            tl.store(HN + rows64[:, None] * H + units[None, :], h_keep, mask=ru & last[:, None])
        # Grid barrier. The CTA barrier orders all of this program's HS[dst] stores before the release
        # below; the acquire spin then waits until every program has released step s; the second CTA barrier
        # keeps every thread's next HS loads behind that acquire. It also orders this step's HS[src] loads
        # (all programs) before anyone overwrites HS[src] at step s + 1.
        tl.debug_barrier()
        tl.atomic_add(SYNC, 1, sem="release", scope="gpu")
        target = (s + 1) * n_programs
        arrived = tl.atomic_add(SYNC, 0, sem="acquire", scope="gpu")
        while arrived < target:
            arrived = tl.atomic_add(SYNC, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()


def unavailable_reason(H: int, has_proj: bool, dtype: torch.dtype, device: torch.device) -> Optional[str]:
    """Why the grid-persistent kernel cannot take this call, or None."""
    if has_proj:
        return "it has no proj_size support"
    if H > MAX_H.get(dtype, 0):
        return f"it holds {dtype} W_hh on chip only up to H = {MAX_H.get(dtype, 0)}, got H = {H}"
    n_programs = triton.cdiv(H, BLOCK_H)
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        if n_programs > sms:
            return f"its {n_programs} programs would not all be resident on {sms} SMs (it would deadlock)"
    elif INTERPRET and n_programs > 1:
        return (f"under the interpreter programs run one after another, so its {n_programs} programs would "
                f"deadlock at the first grid barrier (only H ≤ {BLOCK_H} runs there)")
    return None


def lstm_fwd_grid(xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, lengths: Optional[Tensor], reverse: bool,
                  save: bool) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """The same contract as fused_s2s.triton.lstm.lstm_fwd (no projection)."""
    T, B, G = xp.shape
    H = G // 4
    reason = unavailable_reason(H, False, xp.dtype, xp.device)
    if reason is not None:
        raise RuntimeError(f"FUSED_S2S_TRITON_LSTM_KERNEL=grid_persistent cannot run: {reason}")
    dtype, device = xp.dtype, xp.device
    acc_t = acc_dtype(dtype)
    hs = torch.empty(2, B, H, dtype=dtype, device=device)
    hs[0] = h0
    cs = c0.to(acc_t, copy=True)
    y = output_buffer((T, B, H), dtype, device)
    h_n = output_buffer((B, H), dtype, device)
    gates = output_buffer((T, B, G), acc_t, device) if save else cs
    cells = output_buffer((T, B, H), acc_t, device) if save else cs
    sync = torch.zeros(1, dtype=torch.int32, device=device)
    if T > 0:
        lstm_fwd_grid_kernel[(triton.cdiv(H, BLOCK_H),)](
            xp, w_hh, lengths if lengths is not None else xp, hs, cs, y, h_n, gates, cells, sync, B, T, H,
            BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, H_PAD=max(16, triton.next_power_of_2(H)),
            HAS_LEN=lengths is not None, REVERSE=reverse, SAVE=save, DOT_FP32=dot_fp32(dtype),
            PRECISION=dot_precision(dtype), num_warps=NUM_WARPS, num_stages=1, maxnreg=255)
    return y, h_n, cs.to(c0.dtype), (gates if save else None), (cells if save else None)


def aot_cases() -> list:
    """fp32/fp16/bf16 × every H_PAD up to the dtype's MAX_H (the on-chip weight footprint sets the registers)."""
    from fused_s2s.triton.aot import AotCase

    cases = []
    for dtype, torch_dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        dt, acc = f"*{dtype}", "*fp32"
        for h_pad in (h for h in (128, 256, 512) if h <= MAX_H[torch_dtype]):
            sig = {"XP": dt, "W_HH": dt, "LEN": "*i64", "HS": dt, "CS": acc, "Y": dt, "HN": dt, "GATES": acc,
                   "CELLS": acc, "SYNC": "*i32", "B": "i32", "T": "i32", "H": "i32"}
            consts = dict(BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, H_PAD=h_pad, HAS_LEN=True, REVERSE=False, SAVE=True,
                          DOT_FP32=False, PRECISION="ieee" if dtype == "fp32" else "tf32")
            sig.update({k: "constexpr" for k in consts})
            cases.append(AotCase(lstm_fwd_grid_kernel, "lstm_fwd_grid", f"BB{BLOCK_B}-BH{BLOCK_H}-HP{h_pad}-w{NUM_WARPS}",
                                 dtype, sig, consts, NUM_WARPS, 1, {"maxnreg": 255}))
    return cases
