"""The GPU path's time indexing past 65,535 steps (where cuDNN stops): the Triton LSTM forward kernel run for
a few iterations at time steps 69,998-70,000 of a 70,001-step problem, forward and reverse, against the
reference cell from the same state. The kernel takes its iteration range as arguments (s_begin, n_steps),
so the interpreter runs three steps, not 70,001 (about 40 s per 1,000 steps here). The launch grid never
depends on T (programs tile batch rows and hidden units), so only the address arithmetic is at stake."""
from __future__ import annotations

import os

import pytest
import torch

from fused_s2s.reference.lstm import lstm_cell
from tests.utils import assert_close

pytestmark = pytest.mark.triton_interpret

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_lstm_forward_kernel_at_time_steps_past_65535(reverse):
    from fused_s2s.triton import lstm as kernels

    T, B, H, steps = 70_001, 3, 5, 3
    dev = dict(device=DEVICE, dtype=torch.float32)
    xp = torch.randn(T, B, 4 * H, **dev)  # the input projection x·W_ihᵀ + biases, given directly
    w_hh = torch.randn(4 * H, H, **dev) / H ** 0.5
    h0, c0 = torch.randn(B, H, **dev), torch.randn(B, H, **dev)
    cfg = kernels.pick_config(kernels.FWD_CONFIGS, H)
    # Iterations s_begin .. s_begin + steps - 1 read times s (forward) or T - 1 - s (reverse).
    s_begin = 0 if reverse else T - steps
    times = [T - 1 - s for s in range(s_begin, s_begin + steps)] if reverse else list(range(s_begin, T))
    assert min(times) > 65_535
    hs = torch.empty(2, B, H, **dev)
    hs[s_begin % 2] = h0  # HS[s % 2] holds h before iteration s
    cs = c0.clone()
    y = torch.full((T, B, H), float("nan"), **dev)
    h_n = torch.empty(B, H, **dev)
    gates = torch.full((T, B, 4 * H), float("nan"), **dev)
    cells = torch.full((T, B, H), float("nan"), **dev)
    units = triton_cdiv(H, cfg.block_h) * cfg.block_h
    kernels.lstm_fwd_kernel[(triton_cdiv(B, cfg.block_b), 1)](
        xp, w_hh, w_hh, xp, hs, cs, cs, y, h_n, gates, cells, w_hh, B, T, H, H, s_begin, steps, units,
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k, HAS_PROJ=False, HAS_LEN=False,
        REVERSE=reverse, SAVE=True, PEEPHOLE=False, DOT_FP32=False, PRECISION="ieee", **cfg.launch_options())

    eye = torch.eye(4 * H, **dev)  # so lstm_cell's x·w_ihᵀ is xp[t] itself
    h, c = h0, c0
    for t in times:
        h, c = lstm_cell(xp[t], h, c, eye, w_hh, None, None, None)
        assert_close(y[t], h, f"y[{t}]")
        assert_close(cells[t], c, f"cells[{t}]")
    assert_close(cs, c, "c after the last step")
    # Nothing outside those steps was written.
    others = torch.ones(T, dtype=torch.bool)
    others[times] = False
    assert y[others].isnan().all() and cells[others].isnan().all()


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
