"""The main job: benchmark FusedLSTM against nn.LSTM (and the reference) on whatever device is present.
Prints a markdown table, writes JSON (pytest-benchmark's layout, ratios in extra_info) and a PNG plot.

    fused-s2s-bench report [--quick] [--out DIR] [--json PATH] [--png PATH] [--cases TEXT] [--dtypes float32,...]

In each case nn.LSTM and every implementation are timed interleaved after warm-up; the speedup is nn.LSTM's
median / the implementation's median, both from the same run. Forward+backward cases also record the bytes
autograd saves for backward (and on CUDA the peak allocated memory), ours / nn.LSTM's.
`fused-s2s-bench compare BASELINE.json CURRENT.json` gates one report against another on the speedups;
`fused-s2s-bench ab` compares two builds by interleaved runs of this grid.
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from fused_s2s.ops.lstm import triton_unavailable_reason

from . import decoder_speed
from .cases import default_cells, default_dtypes, grid, matches, select
from .environment import default_device, environment
from .measure import run_case
from .options import add_grid_arguments, resolve_grid_arguments
from .plot import plot

DEFAULT_OUT = "fused-s2s-bench-results"  # in the current directory: never inside the installed package
FORMAT_VERSION = "fused_s2s-bench/1"



def _ms(row: dict, key: str = "median") -> float:
    return row["stats"][key] * 1e3


def _ratio(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}"


SPEEDUP_KEYS = ("speedup_vs_nn_lstm", "speedup_vs_torch", "speedup_vs_eager")


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


def decoder_rows(device: torch.device, args: argparse.Namespace) -> list[dict]:
    """The greedy decoder step (decoder_speed.py: FusedDecoder.step vs eager PyTorch on this device: the C++
    step on the CPU, the Triton step on CUDA) as rows of this report: per batch size and variant (keys
    precomputed, or none passed) whose id matches --cases, an 'eager' row and a 'fused-<backend>' row with
    speedup_vs_eager."""
    backend = "cpu" if device.type == "cpu" else "triton"
    rows = []
    for precomputed in (True, False):
        batches = tuple(b for b in decoder_speed.BATCHES if matches(decoder_speed.case_id(b, precomputed), args.cases))
        if args.grid == "smoke":
            batches = batches[:1]
        if not batches:
            continue
        if backend == "triton" and triton_unavailable_reason(device) is not None:
            print(f"decoder step rows skipped: {triton_unavailable_reason(device)}")
            return []
        # A loop sample is 16 steps: the decoder gets more samples than an LSTM case has rounds (B1 samples
        # take a few ms), within the same time budget.
        for r in decoder_speed.run_cases(backend=backend, device=device, batches=batches, repeats=args.repeats * 4,
                                         budget=args.budget, alternating=False, precomputed=precomputed):
            shape = r["shape"]
            group = decoder_speed.case_id(shape["B"], precomputed)
            params = {**shape, "backward": False, "dtype": "float32", "op": "decoder_step"}
            for impl, t in (("eager", r["eager_ms"]), (f"fused-{r['backend']}", r["fused_ms"])):
                extra: dict[str, object] = {"impl": impl, "backend": r["backend"] if impl != "eager" else "eager"}
                if impl != "eager":
                    extra.update(speedup_vs_eager=r["speedup"], max_abs_diff_vs_eager=r["max_diff"], gate=True)
                rows.append({"group": group, "name": f"{impl} {group}", "params": {**params, "impl": impl},
                             "stats": {"median": t["median"] / 1e3, "p20": t["p20"] / 1e3, "p80": t["p80"] / 1e3,
                                       "rounds": t["n"]}, "extra_info": extra})
    return rows


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fused-s2s-bench report", description=__doc__.split("\n\n")[0])
    add_grid_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                        help=f"folder for the JSON and the plot (default ./{DEFAULT_OUT}/ in this directory)")
    parser.add_argument("--json", type=Path, default=None, help="output JSON (default OUT/<grid>.json)")
    parser.add_argument("--png", type=Path, default=None, help="output plot (default: the JSON path with .png)")
    parser.add_argument("--no-plot", action="store_true", help="write no plot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    resolve_grid_arguments(parser, args)
    args.json = args.json or args.out / f"{args.grid}.json"
    args.png = args.png or args.json.with_suffix(".png")
    return args


def run_grid(args: argparse.Namespace, progress: bool = True, keep_going: bool = False) -> dict:
    """Measure every selected case on this machine's device; the report as a dict (nothing written).

    keep_going: a case that raises is recorded in the report's "errors" (id -> message) instead of
    stopping the run, so an A/B run of an older build that lacks a feature still measures the rest.
    """
    device = default_device()
    dtypes = args.dtypes.split(",") if args.dtypes else default_dtypes(device)
    cases = select(grid(args.grid, dtypes, reference=not args.no_reference, cells=default_cells(device)), args.cases)
    decoder_ids = [decoder_speed.case_id(b, p) for b in decoder_speed.BATCHES for p in (True, False)]
    if not cases and not any(matches(i, args.cases) for i in decoder_ids):
        raise SystemExit(f"no benchmark case matches {args.cases!r}")
    env = environment(device)
    print(f"# fused_s2s vs nn.LSTM on {env['device']} ({env['device_name']}), torch {env['torch']}, triton "
          f"{env['triton']}, {env['num_threads']} threads, commit {env['git_commit']}; grid {args.grid}: "
          f"{len(cases)} LSTM/GRU/RNN cases, {args.warmup} warm-up, up to {args.repeats} rounds or {args.budget:g} s "
          "each", flush=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    rows: list[dict] = []
    errors: dict[str, str] = {}
    for case in tqdm(cases, desc="cases", unit="case", disable=not progress):
        try:
            rows += run_case(case, device, args.warmup, args.repeats, args.budget)
        except Exception as e:  # noqa: BLE001 (recorded in the report, and the caller decides)
            if not keep_going:
                raise
            errors[case.id] = f"{type(e).__name__}: {e}".splitlines()[0]
    try:
        rows += decoder_rows(device, args)
    except Exception as e:  # noqa: BLE001
        if not keep_going:
            raise
        for i in decoder_ids:
            if matches(i, args.cases):
                errors[i] = f"{type(e).__name__}: {e}".splitlines()[0]
    return {
        "version": FORMAT_VERSION,
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine_info": env,
        "commit_info": {"id": env["git_commit"]},
        "settings": {"grid": args.grid, "dtypes": dtypes, "cases": args.cases, "warmup": args.warmup,
                     "repeats": args.repeats, "budget_s": args.budget, "elapsed_s": time.perf_counter() - start,
                     "layout": "sequence-first [T, B, I], input size = hidden size",
                     "speedup": "torch module (nn.LSTM, nn.GRU, nn.RNN; eager PyTorch for the decoder step) median "
                                "/ implementation median, timed interleaved in the same run"},
        "benchmarks": rows,
        "errors": errors,
    }


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    report = run_grid(args, progress=not args.no_progress)
    print()
    print(markdown_table(report["benchmarks"], report["machine_info"]["device"].startswith("cuda")))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    where = f"JSON: {args.json}"
    if not args.no_plot:
        plot(report, args.png)
        where += f"  plot: {args.png}"
    print(f"\n{len(report['benchmarks'])} rows in {report['settings']['elapsed_s']:.0f} s. {where}")
    return report


if __name__ == "__main__":
    main()
