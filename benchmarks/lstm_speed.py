"""FusedLSTM vs torch.nn.LSTM: speed on whatever device is present (CUDA if available, else CPU).

Both modules hold identical weights (load_state_dict), run fp32 on the same time-major input [T, B, I], and
are timed INTERLEAVED: each repeat calls one then the other (the order alternates between repeats), so drift
in machine load hits both alike. Each case reports the median and p20/p80 of the per-call times and the
speedup nn.LSTM median / fused median, judged against the issue's targets.

    python -m benchmarks.lstm_speed [--quick] [--json PATH] [--repeats N] [--warmup N]

nn.LSTM runs oneDNN on the CPU and cuDNN on CUDA. FusedLSTM runs the backend that "auto" picks on the device
(FUSED_S2S_BACKEND overrides it); the table names it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from fused_s2s import FusedLSTM
from fused_s2s.ops.lstm import resolve_backend

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO_ROOT / "benchmarks" / "results" / "lstm_speed.json"


@dataclass(frozen=True)
class Case:
    """One benchmark case: shape, pass (forward without grad, or forward + backward) and its target."""

    name: str
    batch: int
    seq_len: int
    input_size: int
    hidden_size: int
    backward: bool
    target_speedup: Optional[float]  # nn.LSTM time / fused time must reach this; None: no target


CASES = (
    Case("fwd B64 T100 I256 H256", 64, 100, 256, 256, backward=False, target_speedup=0.95),
    Case("fwd B1 T100 I256 H256", 1, 100, 256, 256, backward=False, target_speedup=0.95),
    Case("fwd+bwd B64 T100 I256 H256", 64, 100, 256, 256, backward=True, target_speedup=1.5),
    Case("fwd+bwd B1 T100 I256 H256", 1, 100, 256, 256, backward=True, target_speedup=None),
)


@dataclass
class Stats:
    """Per-call times in milliseconds, summarised."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    n: int
    times_ms: list[float] = field(repr=False)


@dataclass
class CaseResult:
    """The measurements of one case."""

    case: Case
    backend: str
    fused: Stats
    nn_lstm: Stats
    speedup: float  # nn.LSTM median / fused median
    median_pair_ratio: float  # median over repeats of (nn.LSTM time / fused time) of the same repeat
    max_abs_diff_y: float  # |fused y - nn.LSTM y|, a sanity check that both computed the same thing
    target_met: Optional[bool]


# ---------------------------------------------------------------- timing


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of values, linearly interpolated."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarise(times_ms: list[float]) -> Stats:
    """Median, p20, p80 and min of per-call times."""
    return Stats(median_ms=statistics.median(times_ms), p20_ms=percentile(times_ms, 20),
                 p80_ms=percentile(times_ms, 80), min_ms=min(times_ms), n=len(times_ms), times_ms=times_ms)


def time_call(fn: Callable[[], None], device: torch.device) -> float:
    """Wall time of one call of fn in milliseconds (CUDA events on a GPU, perf_counter on the CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def measure_interleaved(fused_fn: Callable[[], None], nn_fn: Callable[[], None], device: torch.device,
                        warmup: int, repeats: int) -> tuple[list[float], list[float]]:
    """Per-call times of both functions, called alternately; the first in each pair alternates too."""
    for _ in range(warmup):
        fused_fn()
        nn_fn()
    fused_ms: list[float] = []
    nn_ms: list[float] = []
    for r in range(repeats):
        if r % 2 == 0:
            fused_ms.append(time_call(fused_fn, device))
            nn_ms.append(time_call(nn_fn, device))
        else:
            nn_ms.append(time_call(nn_fn, device))
            fused_ms.append(time_call(fused_fn, device))
    return fused_ms, nn_ms


# ---------------------------------------------------------------- one case


def make_modules(case: Case, device: torch.device) -> tuple[FusedLSTM, nn.LSTM]:
    """A FusedLSTM and an nn.LSTM with identical fp32 weights, seq-first."""
    ref = nn.LSTM(case.input_size, case.hidden_size, device=device, dtype=torch.float32)
    fused = FusedLSTM(case.input_size, case.hidden_size, device=device, dtype=torch.float32)
    fused.load_state_dict(ref.state_dict())
    # Inference mode for the forward-only cases, training mode when we also run backward.
    ref.train(case.backward)
    fused.train(case.backward)
    return fused, ref


def make_step(module: nn.Module, x: Tensor, backward: bool) -> Callable[[], None]:
    """One timed call: forward under no_grad, or forward + y.sum().backward() (grads reset beforehand)."""
    if not backward:
        def forward() -> None:
            with torch.no_grad():
                module(x)
        return forward

    params = list(module.parameters())

    def forward_backward() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        y, _ = module(x)
        y.sum().backward()
    return forward_backward


def run_case(case: Case, device: torch.device, warmup: int, repeats: int) -> CaseResult:
    """Build both modules, check they agree, and time them interleaved."""
    fused, ref = make_modules(case, device)
    x = torch.randn(case.seq_len, case.batch, case.input_size, device=device, dtype=torch.float32)
    with torch.no_grad():
        diff = (fused(x)[0] - ref(x)[0]).abs().max().item()
    x.requires_grad_(case.backward)
    fused_ms, nn_ms = measure_interleaved(make_step(fused, x, case.backward), make_step(ref, x, case.backward),
                                          device, warmup, repeats)
    fused_stats, nn_stats = summarise(fused_ms), summarise(nn_ms)
    speedup = nn_stats.median_ms / fused_stats.median_ms
    pair_ratio = statistics.median(n / f for n, f in zip(nn_ms, fused_ms))
    met = None if case.target_speedup is None else speedup >= case.target_speedup
    return CaseResult(case=case, backend=resolve_backend("auto", device), fused=fused_stats, nn_lstm=nn_stats,
                      speedup=speedup, median_pair_ratio=pair_ratio, max_abs_diff_y=diff, target_met=met)


# ---------------------------------------------------------------- environment and report


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> Optional[str]:
    """HEAD of the repository this file is in, with '-dirty' if the work tree has changes; None without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def environment(device: torch.device) -> dict[str, object]:
    """Device, versions, CPU and commit: what a result must be tagged with."""
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "num_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "fused_s2s_backend_env": os.environ.get("FUSED_S2S_BACKEND"),
        "ci": os.environ.get("CI") == "true",
    }


def format_stats(s: Stats) -> str:
    """'median (p20-p80)' in ms."""
    return f"{s.median_ms:.3f} ({s.p20_ms:.3f}–{s.p80_ms:.3f})"


def markdown_table(results: list[CaseResult]) -> str:
    """The report: one row per case."""
    lines = [
        "| case | fused backend | fused ms, median (p20–p80) | nn.LSTM ms, median (p20–p80) "
        "| speedup (nn/fused) | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        target = "—" if r.case.target_speedup is None else f"≥ {r.case.target_speedup:g}"
        met = "—" if r.target_met is None else ("met" if r.target_met else "NOT met")
        lines.append(f"| {r.case.name} | {r.backend} | {format_stats(r.fused)} | {format_stats(r.nn_lstm)} "
                     f"| {r.speedup:.2f} | {target} | {met} |")
    return "\n".join(lines)


def write_json(path: Path, env: dict[str, object], settings: dict[str, object], results: list[CaseResult]) -> None:
    """All stats (with the raw per-call times) plus the environment, as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": env, "settings": settings, "results": [asdict(r) for r in results]}
    path.write_text(json.dumps(payload, indent=2) + "\n")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (CI smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per module and case")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per module and case")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output JSON (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (10 if args.quick else 50)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    env = environment(device)
    settings = {"repeats": args.repeats, "warmup": args.warmup, "quick": args.quick, "dtype": "float32",
                "layout": "seq-first [T, B, I]", "timing": "interleaved; speedup = nn.LSTM median / fused median"}
    print(f"# FusedLSTM vs nn.LSTM on {env['device']} ({env['device_name']}), torch {env['torch']}, "
          f"{env['num_threads']} threads, commit {env['git_commit']}, {args.repeats} repeats "
          f"after {args.warmup} warm-up\n", flush=True)
    results = [run_case(case, device, args.warmup, args.repeats) for case in CASES]
    print(markdown_table(results))
    print(f"\nmax |y_fused - y_nn.LSTM| per case: "
          + ", ".join(f"{r.case.name}: {r.max_abs_diff_y:.1e}" for r in results))
    write_json(args.json, env, settings, results)
    print(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
