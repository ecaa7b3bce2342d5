"""Shared test helpers: per-dtype tolerances in one place and a mismatch report that says what is wrong."""
from __future__ import annotations

import torch

# Per-dtype floors (rtol, atol). fp32 kernels differ from nn.LSTM/oneDNN only by rounding order, so
# 1e-5-level relative error on O(1) values; gradients accumulate over T steps and B rows, hence the atol.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 2e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (5e-3, 5e-3),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for comparing a result of this dtype with the reference."""
    return TOLERANCES[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str = "tensor",
                 rtol: float | None = None, atol: float | None = None) -> None:
    """assert_close with a report naming the count, first indices, max error and NaN/inf of mismatches.

    NaN in `expected` must be NaN in `actual` at the same place (NaN in means NaN out).
    """
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != expected {expected.dtype}"
    d_rtol, d_atol = tolerance(expected.dtype)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    nan_mismatch = a.isnan() != e.isnan()
    err = (a - e).abs()
    bad = (err > atol + rtol * e.abs()) & ~e.isnan()
    bad |= nan_mismatch
    bad |= a.isinf() != e.isinf()
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        finite = err[~err.isnan()]
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements differ (rtol={rtol}, atol={atol}); "
            f"max abs error {float(finite.max()) if finite.numel() else float('nan'):.3e}; "
            f"first indices {idx}; NaN in actual {int(a.isnan().sum())} vs expected {int(e.isnan().sum())}; "
            f"inf in actual {int(a.isinf().sum())}"
        )


def case_id(**kw) -> str:
    """Readable test ids such as B2-T17-H33-float32."""
    return "-".join(f"{k}{v}" if not isinstance(v, bool) else (k if v else f"no{k}") for k, v in kw.items())
