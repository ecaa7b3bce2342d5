"""Helpers shared by the batch-tiled recurrent kernels (lstm.py, lstm_grid.py, cells.py): launch configs, the dot
wrapper, batch tiling and the lengths/direction rule, and the launcher-side dtype choices.

The kernel files import this one and not each other, so a change to one kernel family never drags in another
(DESIGN.md §1 listed lstm.py ↔ lstm_grid.py as a known fault).

Interpreter note (DESIGN.md §2): under TRITON_INTERPRET=1, tl.dot on two bf16 operands returns garbage, so the
launchers set DOT_FP32 (`dot_fp32`) to upcast the operands there; compiled code keeps the native bf16 dot.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Tests set this: buffers a kernel must fully write start as NaN, so a missed element fails a comparison.
POISON = os.environ.get("FUSED_S2S_POISON_BUFFERS") == "1"


@dataclass(frozen=True)
class Config:
    """Block sizes and launch parameters of one shipped configuration."""

    block_b: int   # batch rows per program (≥ 16: tl.dot's minimum M)
    block_h: int   # hidden units per inner block (one [block_b, block_h] accumulator per gate)
    block_k: int   # reduction tile of h·W_hhᵀ and of the projection
    num_warps: int
    num_stages: int = 1
    # ptxas otherwise sometimes caps these kernels at 128 registers and spills; 255 lets it use what it needs
    maxnreg: int = 255

    @property
    def name(self) -> str:
        return f"BB{self.block_b}-BH{self.block_h}-BK{self.block_k}-w{self.num_warps}-s{self.num_stages}"

    def launch_options(self) -> dict:
        return {"num_warps": self.num_warps, "num_stages": self.num_stages, "maxnreg": self.maxnreg}


@triton.jit
def dot(a, b, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """tl.dot(a, b), with both operands upcast to fp32 when DOT_FP32 (bf16 under the interpreter)."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def batch_tile(LEN, B, T, BLOCK_B: tl.constexpr, HAS_LEN: tl.constexpr):
    """This program's batch rows (int32 and int64), which exist, and their lengths (T without LEN).
    LEN: [B] int64 sequence lengths (read only when HAS_LEN)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    if HAS_LEN:
        lens = tl.load(LEN + rows, mask=row_ok, other=0).to(tl.int32)
    else:
        lens = tl.zeros([BLOCK_B], dtype=tl.int32) + T
    return rows, row_ok, rows.to(tl.int64), lens


@triton.jit
def row_time(s, lens, row_ok, REVERSE: tl.constexpr):
    """(active, t): whether each row runs at iteration s, and the time step it reads or writes then.

    At iteration s a row b is active while s < len_b and then reads t_b = s (forward) or len_b − 1 − s
    (reverse); an inactive row gets t = s, the padding position it writes zeros to."""
    active = row_ok & (s < lens)
    if REVERSE:
        t = lens - 1 - s
    else:
        t = lens * 0 + s
    return active, tl.where(active, t, s).to(tl.int64)


# ---- launcher side ----

def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision: IEEE for fp64, and for fp32 unless torch allows TF32 matmuls."""
    if dtype == torch.float64 or dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # ignored by 16-bit dots


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the cell state, the saved cells and every accumulator: fp32, or fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dot_fp32(dtype: torch.dtype) -> bool:
    """The DOT_FP32 constexpr: upcast dot operands only for bf16 under the interpreter (see the docstring)."""
    return INTERPRET and dtype == torch.bfloat16


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def output_buffer(shape, dtype, device) -> Tensor:
    """A buffer the kernel writes completely: NaN-filled in tests, so a missed element shows."""
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
