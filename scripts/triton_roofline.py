"""Bytes and FLOPs per time step of the Triton LSTM kernels, and the time they imply on an H100 SXM
(3.35 TB/s HBM, ~67 TFLOP/s fp32, ~990 TFLOP/s dense bf16/fp16): the roofline the kernels are held to when a
GPU runs them. Static arithmetic from the kernels' loads and stores (fused_s2s/triton/lstm.py, lstm_grid.py),
no GPU. W_hh is counted once per step (it comes from L2 for every batch tile after the first), except for
the grid kernel, which keeps it on chip; its per-step floor is really the grid barrier (~1 µs).

    python scripts/triton_roofline.py
"""
from __future__ import annotations

HBM_BYTES_PER_S = 3.35e12
PEAK_FLOPS = {"fp32": 67e12, "bf16": 990e12, "fp16": 990e12}
SIZE = {"fp32": 4, "bf16": 2, "fp16": 2}
ACC = 4  # fp32 cell state, saved gates and cells


def forward_step(B: int, H: int, dtype: str, save: bool) -> tuple[float, float]:
    """(bytes, flops) of one forward step: W_hh once, xp in, h in/out, y out, c in/out, saved gates/cells."""
    s = SIZE[dtype]
    weight = 4 * H * H * s
    activations = B * 4 * H * s + 3 * B * H * s + 2 * B * H * ACC
    saved = (B * 4 * H + B * H) * ACC if save else 0
    flops = 2 * B * 4 * H * H + 25 * B * H
    return weight + activations + saved, flops


def grid_forward_step(B: int, H: int, dtype: str) -> tuple[float, float]:
    """(bytes, flops) of one step of the grid-persistent forward: W_hh stays on chip, so only activations
    move (every program reads all of h_{t-1}: B·H·s per program, from L2, not counted as HBM traffic)."""
    nbytes, flops = forward_step(B, H, dtype, False)
    return nbytes - 4 * H * H * SIZE[dtype], flops


def backward_step(B: int, H: int, dtype: str) -> tuple[float, float]:
    """(bytes, flops) of one backward step: W_hh once, dy, saved gates and two cells in, dG out, dh/dc state."""
    s = SIZE[dtype]
    weight = 4 * H * H * s
    activations = B * H * s + (B * 4 * H + 2 * B * H) * ACC + B * 4 * H * s + 2 * B * H * ACC * 2
    flops = 2 * B * 4 * H * H + 30 * B * H
    return weight + activations, flops


def main() -> None:
    print("| kernel | B | H | dtype | bytes/step | FLOPs/step | HBM time (µs) | compute time (µs) | bound (µs) |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for B, H in ((16, 256), (16, 768), (64, 512), (64, 1024), (256, 1024)):
        for dtype in ("bf16", "fp32"):
            kernels = [("lstm_fwd (inference)", forward_step(B, H, dtype, False)),
                       ("lstm_fwd (training)", forward_step(B, H, dtype, True)),
                       ("lstm_bwd", backward_step(B, H, dtype))]
            if H <= (512 if dtype == "fp32" else 256):
                kernels.append(("lstm_fwd_grid (inference)", grid_forward_step(B, H, dtype)))
            for name, (nbytes, flops) in kernels:
                t_mem = nbytes / HBM_BYTES_PER_S * 1e6
                t_flop = flops / PEAK_FLOPS[dtype] * 1e6
                print(f"| {name} | {B} | {H} | {dtype} | {nbytes / 1e6:.2f} MB | {flops / 1e9:.2f} G | "
                      f"{t_mem:.2f} | {t_flop:.2f} | {max(t_mem, t_flop):.2f} |")


if __name__ == "__main__":
    main()
