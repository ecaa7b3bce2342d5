"""Small calls of the CUDA C++ LSTM ops, for compute-sanitizer (scripts/gpu_check.sh runs it under memcheck
and racecheck): forward and backward, fp32/bf16/fp16, lengths and reverse, a short last CTA slice.

Small shapes keep the sanitizers' slowdown bounded; each call is also compared with the reference, loosely
(correctness is tests/test_cuda_lstm.py's job; this only makes sure the calls did something sensible).
A fallback to Triton is an error here: every call must reach the CUDA kernels. Exits non-zero on failure.

    python scripts/cuda_lstm_smoke.py
"""
from __future__ import annotations

import sys
import warnings

import torch

from fused_s2s.ops import lstm_layer
from fused_s2s.reference.lstm import lstm_layer as reference_layer

# (T, B, I, H): H 37 leaves a short last CTA slice; B 9 pads the mma tile's n; H 160 spreads over two units
# per CTA on a 132-SM part.
SHAPES = ((5, 3, 4, 8), (4, 9, 6, 37), (3, 2, 8, 160))


def one_case(T: int, B: int, I: int, H: int, dtype: torch.dtype, lengths: bool, reverse: bool) -> float:
    """Max abs difference of y and every gradient from the fp32 reference on the same (rounded) inputs."""
    g = torch.Generator().manual_seed(T * 1000 + B * 100 + H)
    shapes = [(T, B, I), (B, H), (B, H), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,)]
    leaves = [(torch.randn(s, generator=g) * 0.5).to(dtype) for s in shapes]
    lens = torch.randint(1, T + 1, (B,), generator=g) if lengths else None
    if lens is not None:
        lens[0] = T
    worst = 0.0
    outs = []
    for device in ("cuda", "cpu"):
        args = [t.to(device).float().requires_grad_() if device == "cpu" else t.to(device).requires_grad_()
                for t in leaves]
        fn = (lambda *a: lstm_layer(*a, backend="cuda")) if device == "cuda" else reference_layer
        y, h_n, c_n = fn(*args[:5], args[5], args[6], None, lens, reverse)
        grads = torch.autograd.grad((y.float().sum() + h_n.float().sum() + c_n.float().sum()), args)
        outs.append([y, h_n, c_n, *grads])
    for got, want in zip(*outs):
        worst = max(worst, (got.detach().float().cpu() - want.detach()).abs().max().item())
    return worst


def main() -> int:
    if not torch.cuda.is_available():
        print("cuda_lstm_smoke: no CUDA GPU", file=sys.stderr)
        return 2
    # a fallback to Triton would not exercise the CUDA kernels: make its warning an error
    warnings.filterwarnings("error", message=".*on Triton instead")
    tolerance = {torch.float32: 1e-3, torch.bfloat16: 0.25, torch.float16: 0.05}
    failed = 0
    for T, B, I, H in SHAPES:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for lengths, reverse in ((False, False), (True, True)):
                err = one_case(T, B, I, H, dtype, lengths, reverse)
                ok = err <= tolerance[dtype]
                failed += not ok
                print(f"T{T} B{B} I{I} H{H} {str(dtype)[6:]} lengths={lengths} reverse={reverse}: "
                      f"max abs diff {err:.2e} {'ok' if ok else 'TOO LARGE'}", flush=True)
    torch.cuda.synchronize()
    print(f"cuda_lstm_smoke: {failed} case(s) failed" if failed else "cuda_lstm_smoke: all cases ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
