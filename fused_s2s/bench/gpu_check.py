"""The GPU check's benchmark (scripts/gpu_check.sh, issue 15): FusedLSTM on each backend vs nn.LSTM (cuDNN).

Cases: B16 T1024 H768, B64 T256 H512, B1 T512 H1024 (input size = H), bf16 and fp16, forward (no grad) and
forward+backward; one layer, one direction, the unit the CUDA kernels implement. Per case the candidates
(nn.LSTM and FusedLSTM with each backend, the same weights) are timed interleaved with CUDA events
(fused_s2s.bench.timing), median of the repeats, and each result is checked against nn.LSTM's output once.
A backend that fails or falls back (backend="cuda" runs a layer it cannot take on Triton, with a warning) is
recorded in its row, never silently: the row says "error: ..." or "fallback: ...". Writes
gpu_check_bench.json (environment, settings, one row per case and backend) and gpu_check_bench.md (a table)
to --out.

    python -m fused_s2s.bench.gpu_check [--out DIR] [--repeats N] [--warmup N] [--backends cuda,triton]
    python -m fused_s2s.bench.gpu_check --dry-run     # tiny shapes on the CPU: exercises the code path only
"""
from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from fused_s2s.bench.environment import environment
from fused_s2s.bench.timing import measure_interleaved, summarise
from fused_s2s.nn.lstm import FusedLSTM
from fused_s2s.ops import lstm as lstm_ops

GPU_SHAPES = ((16, 1024, 768), (64, 256, 512), (1, 512, 1024))  # (B, T, H), from issue 15
DRY_SHAPES = ((2, 5, 8), (1, 3, 16))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PASSES = ("fwd", "fwd+bwd")
JSON_NAME, MD_NAME = "gpu_check_bench.json", "gpu_check_bench.md"


@dataclass
class Row:
    """One case × implementation. ms fields are None when the implementation did not run."""

    B: int
    T: int
    H: int
    dtype: str
    pass_: str
    impl: str                      # "nn.LSTM" or "FusedLSTM[<backend>]"
    median_ms: Optional[float] = None
    p20_ms: Optional[float] = None
    p80_ms: Optional[float] = None
    repeats: int = 0
    vs_cudnn: Optional[float] = None   # nn.LSTM's median / this median (> 1: faster than nn.LSTM)
    max_abs_diff: Optional[float] = None  # |y − y_nn.LSTM|, first call
    note: str = ""                 # "error: ..." or "fallback: ..." (backend="cuda" ran Triton)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fused_s2s.bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu-check-out"), help="folder for the JSON and markdown")
    p.add_argument("--backends", default=None,
                   help="comma-separated FusedLSTM backends (default: cuda,triton; with --dry-run: cpu,reference)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per case (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds per case (Triton compiles here)")
    p.add_argument("--budget-s", type=float, default=3.0, help="timed seconds per case before stopping early")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny shapes on the CPU, 1 warm-up and 2 repeats: checks the code path, measures nothing")
    args = p.parse_args(argv)
    if args.backends is None:
        args.backends = "cpu,reference" if args.dry_run else "cuda,triton"
    args.backends = [b for b in args.backends.split(",") if b]
    if args.dry_run:
        args.repeats, args.warmup = min(args.repeats, 2), min(args.warmup, 1)
    return args


def _case_fns(lstm: nn.Module, x: torch.Tensor, grad: torch.Tensor, pass_: str) -> Callable[[], torch.Tensor]:
    """One call of the case: forward without autograd, or forward and backward (input and weight grads)."""
    params = list(lstm.parameters())

    def fwd() -> torch.Tensor:
        with torch.no_grad():
            return lstm(x)[0]

    def fwd_bwd() -> torch.Tensor:
        for p_ in params:
            p_.grad = None
        xg = x.detach().requires_grad_()
        y = lstm(xg)[0]
        y.backward(grad)
        return y

    return fwd if pass_ == "fwd" else fwd_bwd


def run_case(B: int, T: int, H: int, dtype_name: str, pass_: str, backends: list[str], device: torch.device,
             args: argparse.Namespace) -> list[Row]:
    """Rows for nn.LSTM and each backend on one case; a failing backend gets an error row, the rest still run."""
    dtype = DTYPES[dtype_name]
    ref = nn.LSTM(H, H).to(device, dtype)
    x = torch.randn(T, B, H, device=device, dtype=dtype)
    grad = torch.randn(T, B, H, device=device, dtype=dtype)
    impls: list[tuple[str, Callable[[], torch.Tensor]]] = [("nn.LSTM", _case_fns(ref, x, grad, pass_))]
    rows: list[Row] = []
    y_ref = impls[0][1]().detach()
    for backend in backends:
        row = Row(B, T, H, dtype_name, pass_, f"FusedLSTM[{backend}]")
        try:
            fn = _case_fns(FusedLSTM.from_lstm(ref, backend=backend), x, grad, pass_)
            lstm_ops._FALLBACK_WARNED.clear()  # the op states a fallback once per process: here, once per case
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                y = fn().detach()
            fallbacks = [str(w.message) for w in caught if "on Triton instead: " in str(w.message)]
            if fallbacks:
                row.note = "fallback: " + fallbacks[0].split("instead: ", 1)[-1]
            row.max_abs_diff = (y.float() - y_ref.float()).abs().max().item()
            impls.append((row.impl, fn))
        except Exception as e:  # noqa: BLE001 - recorded in the report; the other backends still run
            row.note = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        rows.append(row)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fallback was recorded above, once
        times = measure_interleaved([fn for _, fn in impls], device, args.warmup, args.repeats, args.budget_s)
    stats = {name: summarise(t) for (name, _), t in zip(impls, times)}
    base = stats["nn.LSTM"]
    out = [Row(B, T, H, dtype_name, pass_, "nn.LSTM", base.median_ms, base.p20_ms, base.p80_ms, base.n, 1.0, 0.0)]
    for row in rows:
        if row.impl in stats:
            s = stats[row.impl]
            row.median_ms, row.p20_ms, row.p80_ms, row.repeats = s.median_ms, s.p20_ms, s.p80_ms, s.n
            row.vs_cudnn = base.median_ms / s.median_ms
        out.append(row)
    return out


def markdown(rows: list[Row], env: dict) -> str:
    """One line per case and implementation: median (p20–p80) ms, speed vs nn.LSTM, max |Δy|, note."""
    lines = [f"GPU check benchmark on {env.get('device_name')} (torch {env.get('torch')}, triton "
             f"{env.get('triton')}, cuDNN {env.get('cudnn')}, commit {env.get('git_commit')}). One layer, one "
             "direction, input size = H; medians of interleaved calls (CUDA events on a GPU); ×: nn.LSTM's time / this "
             "time (> 1 is faster).",
             "", "| B | T | H | dtype | pass | impl | median ms (p20–p80) | × nn.LSTM | max abs Δy | note |",
             "| ---: | ---: | ---: | --- | --- | --- | --- | ---: | ---: | --- |"]
    for r in rows:
        ms = f"{r.median_ms:.3f} ({r.p20_ms:.3f}–{r.p80_ms:.3f})" if r.median_ms is not None else "—"
        ratio = f"{r.vs_cudnn:.2f}" if r.vs_cudnn is not None else "—"
        diff = f"{r.max_abs_diff:.2e}" if r.max_abs_diff is not None else "—"
        lines.append(f"| {r.B} | {r.T} | {r.H} | {r.dtype} | {r.pass_} | {r.impl} | {ms} | {ratio} | {diff} "
                     f"| {r.note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    if args.dry_run:
        device, shapes = torch.device("cpu"), DRY_SHAPES
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA GPU (use --dry-run to exercise the code path on the CPU)")
        device, shapes = torch.device("cuda"), GPU_SHAPES
    torch.manual_seed(0)
    rows: list[Row] = []
    for B, T, H in shapes:
        for dtype_name in DTYPES:
            for pass_ in PASSES:
                case_rows = run_case(B, T, H, dtype_name, pass_, args.backends, device, args)
                rows.extend(case_rows)
                print("\n".join(markdown(case_rows, {}).splitlines()[4:]), flush=True)  # the table's lines
    env = environment(device)
    result = {"environment": env,
              "settings": {"backends": args.backends, "repeats": args.repeats, "warmup": args.warmup,
                           "budget_s": args.budget_s, "dry_run": args.dry_run},
              "rows": [{("pass" if k == "pass_" else k): v for k, v in asdict(r).items()} for r in rows]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / JSON_NAME).write_text(json.dumps(result, indent=2))
    (args.out / MD_NAME).write_text(markdown(rows, env))
    print(f"gpu_check: wrote {args.out / JSON_NAME} and {args.out / MD_NAME}")
    return result


if __name__ == "__main__":
    main()
