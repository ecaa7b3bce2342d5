"""Where the fp32 time of one FusedLSTM layer goes on the CPU, next to nn.LSTM (README, "How the CPU kernel
works").

    python scripts/cpu_phases.py T B H        e.g. python scripts/cpu_phases.py 50 16 256

The op as a whole (fused_s2s::lstm_layer_fwd, then its backward through autograd) and the GEMMs of the
backward timed alone at the same shapes (dX, dW_ih, dW_hh, the bias sum): the backward recurrence is the
remainder. The forward computes its input projection inside the recurrence, so it is one figure, printed next
to what oneDNN's projection GEMM alone takes. Medians of 15 calls; I = H; weights reused across calls, as in training.
"""
from __future__ import annotations

import statistics
import sys
import time
from typing import Callable

import torch
from torch import nn

import fused_s2s  # noqa: F401  (registers the fused_s2s ops)


def median_ms(fn: Callable[[], object], repeats: int = 15) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(T: int, B: int, H: int) -> None:
    torch.manual_seed(0)
    I = H
    x = torch.randn(T, B, I, requires_grad=True)
    w_ih = (torch.randn(4 * H, I) * 0.05).requires_grad_()
    w_hh = (torch.randn(4 * H, H) * 0.05).requires_grad_()
    b_ih, b_hh = torch.zeros(4 * H, requires_grad=True), torch.zeros(4 * H, requires_grad=True)
    h0, c0 = torch.zeros(B, H), torch.zeros(B, H)
    args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, None, False)
    dy = torch.randn(T, B, H)

    def forward_backward() -> None:
        y = torch.ops.fused_s2s.lstm_layer_fwd(*args)[0]
        torch.autograd.backward([y], [dy])

    linear = torch.ops.mkldnn._linear_pointwise
    x2, dg2 = x.detach().view(T * B, I), torch.randn(T * B, 4 * H)
    t_proj = median_ms(lambda: linear(x2, w_ih.detach(), b_ih.detach(), "none", [], ""))
    t_fwd = median_ms(lambda: torch.ops.fused_s2s.lstm_layer_fwd(*args))
    t_fb = median_ms(forward_backward)
    t_dx = median_ms(lambda: linear(dg2, w_ih.detach().t().contiguous(), None, "none", [], ""))
    t_dw = 2 * median_ms(lambda: torch.mm(dg2.t(), x2))  # dW_ih and dW_hh: the same shapes at I = H
    t_db = median_ms(lambda: dg2.sum(0))

    lstm = nn.LSTM(I, H)
    xm = x.detach().clone().requires_grad_()
    with torch.no_grad():
        t_nn_fwd = median_ms(lambda: lstm(xm))
    t_nn_fb = median_ms(lambda: lstm(xm)[0].backward(dy))

    t_bwd = t_fb - t_fwd
    t_bwd_rec = t_bwd - t_dx - t_dw - t_db
    gemm_gflop = 2 * T * B * I * 4 * H / 1e9  # one [T·B, I] x [I, 4H] product
    # The forward computes the input projection inside the recurrence (lstm_kernels.h, FusedRecurrenceArgs::x):
    # one figure for both, next to what oneDNN's projection GEMM alone takes.
    print(f"T{T} B{B} H{H}: forward {t_fwd:.2f} ms, projection and recurrence together "
          f"({2 * gemm_gflop / t_fwd * 1e3:.0f} GFLOP/s; oneDNN's projection alone {t_proj:.2f} ms); "
          f"backward {t_bwd:.2f} ms = dX {t_dx:.2f} + dW {t_dw:.2f} "
          f"+ db {t_db:.2f} + recurrence {t_bwd_rec:.2f} ({gemm_gflop / max(t_bwd_rec, 1e-9) * 1e3:.0f} GFLOP/s); "
          f"projection GEMM {gemm_gflop / t_proj * 1e3:.0f} GFLOP/s | ours fwd {t_fwd:.2f}, fwd+bwd {t_fb:.2f} ms; "
          f"nn.LSTM fwd (no grad) {t_nn_fwd:.2f}, fwd+bwd {t_nn_fb:.2f} ms")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*(int(a) for a in sys.argv[1:4]))
