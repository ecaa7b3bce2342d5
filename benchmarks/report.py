"""The main job: benchmark FusedLSTM against nn.LSTM (and the reference) on whatever device is present.
Prints a markdown table, writes JSON (pytest-benchmark's layout, ratios in extra_info) and a PNG plot.

    python -m benchmarks.report [--quick] [--json PATH] [--png PATH] [--cases TEXT] [--dtypes float32,...]

In each case nn.LSTM and every implementation are timed interleaved after warm-up; the speedup is nn.LSTM's
median / the implementation's median, both from the same run. Forward+backward cases also record the bytes
autograd saves for backward (and on CUDA the peak allocated memory), ours / nn.LSTM's.
`fused-s2s-bench compare BASELINE.json CURRENT.json --max-slowdown 10%` gates on the speedups.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from benchmarks.cases import GRIDS, Case, default_dtypes, grid
from benchmarks.environment import REPO_ROOT, environment
from benchmarks.measure import run_case
from benchmarks.plot import plot
from fused_s2s.ops.lstm import triton_unavailable_reason

RESULTS = REPO_ROOT / "benchmarks" / "results"
FORMAT_VERSION = "fused_s2s-bench/1"

# Timing per grid: (warm-up rounds, most timed rounds, seconds of timed calls per case before stopping
# early, never under 3 rounds). Cheap cases get many rounds, costly ones few.
SETTINGS = {"full": (3, 50, 8.0), "quick": (3, 80, 6.0), "smoke": (1, 3, 0.5)}


def _ms(row: dict, key: str = "median") -> float:
    return row["stats"][key] * 1e3


def _ratio(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}"


SPEEDUP_KEYS = ("speedup_vs_nn_lstm", "speedup_vs_eager")


def _speedup(row: dict) -> Optional[float]:
    return next((row["extra_info"][k] for k in SPEEDUP_KEYS if k in row["extra_info"]), None)


def markdown_table(rows: list[dict], cuda: bool) -> str:
    """One line per case and implementation under test: times, the baseline's times (nn.LSTM; eager PyTorch
    for the decoder step), speedup, memory ratio."""
    base_rows = {r["group"]: r for r in rows if _speedup(r) is None}
    head = ["case", "impl", "ms, median (p20–p80)", "baseline ms, median (p20–p80)", "speedup",
            "saved for backward, ours/nn"]
    if cuda:
        head.append("peak memory, ours/nn")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([" --- "] * 2 + [" ---: "] * (len(head) - 2)) + "|"]
    for r in rows:
        e = r["extra_info"]
        if _speedup(r) is None:
            continue
        n = base_rows[r["group"]]
        cells = [r["group"], e["impl"], f"{_ms(r):.3f} ({_ms(r, 'p20'):.3f}–{_ms(r, 'p80'):.3f})",
                 f"{n['extra_info']['impl']} {_ms(n):.3f} ({_ms(n, 'p20'):.3f}–{_ms(n, 'p80'):.3f})",
                 f"{_speedup(r):.2f}",
                 _ratio(e.get("saved_bytes_ratio"))]
        if cuda:
            cells.append(_ratio(e.get("peak_bytes_ratio")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def decoder_rows(device: torch.device, grid_name: str) -> list[dict]:
    """The greedy decoder step (benchmarks/decoder_speed.py: FusedDecoder.step vs eager PyTorch on this
    device: the C++ step on the CPU, the Triton step on CUDA) as rows of this report: per batch size, an
    'eager' row and a 'fused-<backend>' row with speedup_vs_eager."""
    if importlib.util.find_spec("benchmarks.decoder_speed") is None:
        return []
    from benchmarks import decoder_speed

    backend = "cpu" if device.type == "cpu" else "triton"
    if backend == "triton" and triton_unavailable_reason(device) is not None:
        print(f"decoder step rows skipped: {triton_unavailable_reason(device)}")
        return []
    rows = []
    for r in decoder_speed.run_cases(quick=grid_name != "full", backend=backend, device=device):
        shape = r["shape"]
        group = f"greedy step B{shape['B']} H{shape['H']} E{shape['E']} S{shape['S']} {shape['attention']} float32"
        params = {**shape, "backward": False, "dtype": "float32", "op": "decoder_step"}
        for impl, t in (("eager", r["eager_ms"]), (f"fused-{r['backend']}", r["fused_ms"])):
            extra: dict[str, object] = {"impl": impl, "backend": r["backend"] if impl != "eager" else "eager"}
            if impl != "eager":
                extra.update(speedup_vs_eager=r["speedup"], max_abs_diff_vs_eager=r["max_diff"], gate=True)
            rows.append({"group": group, "name": f"{impl} {group}", "params": {**params, "impl": impl},
                         "stats": {"median": t["median"] / 1e3, "p20": t["p20"] / 1e3, "p80": t["p80"] / 1e3,
                                   "rounds": t["n"]}, "extra_info": extra})
    return rows


def select(cases: list[Case], pattern: Optional[str]) -> list[Case]:
    """Cases whose id contains every comma-separated part of pattern (case-insensitive)."""
    if not pattern:
        return cases
    parts = [p.strip().lower() for p in pattern.split(",") if p.strip()]
    return [c for c in cases if all(p in c.id.lower() for p in parts)]


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI-sized grid (a few minutes on 2 CPU cores)")
    parser.add_argument("--grid", choices=GRIDS, default=None, help=argparse.SUPPRESS)  # 'smoke': the tests
    parser.add_argument("--cases", default=None, help="only cases whose id contains every comma-separated part")
    parser.add_argument("--dtypes", default=None, help="comma-separated dtypes (default: what the device takes)")
    parser.add_argument("--json", type=Path, default=None, help="output JSON (default benchmarks/results/<grid>.json)")
    parser.add_argument("--png", type=Path, default=None, help="output plot (default: the JSON path with .png)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds per case")
    parser.add_argument("--repeats", type=int, default=None, help="most timed rounds per case")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timed calls per case (min 3 rounds)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    args.grid = args.grid or ("quick" if args.quick else "full")
    warmup, repeats, budget = SETTINGS[args.grid]
    args.warmup = warmup if args.warmup is None else args.warmup
    args.repeats = repeats if args.repeats is None else args.repeats
    args.budget = budget if args.budget is None else args.budget
    args.json = args.json or RESULTS / f"{args.grid}.json"
    args.png = args.png or args.json.with_suffix(".png")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = args.dtypes.split(",") if args.dtypes else default_dtypes(device)
    cases = select(grid(args.grid, dtypes), args.cases)
    if not cases:
        raise SystemExit(f"no benchmark case matches {args.cases!r}")
    env = environment(device)
    print(f"# fused_s2s vs nn.LSTM on {env['device']} ({env['device_name']}), torch {env['torch']}, triton "
          f"{env['triton']}, {env['num_threads']} threads, commit {env['git_commit']}; grid {args.grid}: "
          f"{len(cases)} cases, {args.warmup} warm-up, up to {args.repeats} rounds or {args.budget:g} s each\n",
          flush=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    rows: list[dict] = []
    for case in tqdm(cases, desc="cases", unit="case", disable=args.no_progress):
        rows += run_case(case, device, args.warmup, args.repeats, args.budget)
    rows += decoder_rows(device, args.grid)
    elapsed = time.perf_counter() - start
    print(markdown_table(rows, device.type == "cuda"))
    report = {
        "version": FORMAT_VERSION,
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine_info": env,
        "commit_info": {"id": env["git_commit"]},
        "settings": {"grid": args.grid, "dtypes": dtypes, "cases": args.cases, "warmup": args.warmup,
                     "repeats": args.repeats, "budget_s": args.budget, "elapsed_s": elapsed,
                     "layout": "sequence-first [T, B, I], input size = hidden size",
                     "speedup": "nn.LSTM median / implementation median, timed interleaved in the same run"},
        "benchmarks": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.png)
    print(f"\n{len(cases)} cases in {elapsed:.0f} s. JSON: {args.json}  plot: {args.png}")
    return report


if __name__ == "__main__":
    main()
