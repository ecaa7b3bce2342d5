"""`fused-s2s-bench`: benchmark fused_s2s against nn.LSTM on this machine, and gate on regressions.

commands:
  report     measure the grid (FusedLSTM vs nn.LSTM, the decoder step vs eager): table, JSON and plot
  ab         A/B gate: build two revisions, run them in interleaved processes, a verdict per case
  compare    gate one report JSON against a baseline JSON (speedups over nn.LSTM, no statistics)
  baseline   merge several report JSONs into a baseline (per case the median run), with its commit
  plot       draw a report JSON as a PNG
  kind       print this machine's kind, the name under which baselines are kept

`fused-s2s-bench COMMAND --help` explains each. `python -m fused_s2s.bench ...` is the same program.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

COMMANDS = ("report", "ab", "compare", "baseline", "plot", "kind")


def _compare(argv: list[str]) -> int:
    from .compare import run_compare

    parser = argparse.ArgumentParser(
        prog="fused-s2s-bench compare",
        description="Gate CURRENT against BASELINE: a case regresses when its speedup over nn.LSTM (eager "
                    "PyTorch for the decoder step) falls more than --max-slowdown below the baseline's. Exit 0 "
                    "pass, 1 a regression or a missing case, 2 unreadable input or reports of different "
                    "machine kinds or grids. One run against a stored number: noisier than `ab`.")
    parser.add_argument("baseline", type=Path, help="report JSON of the reference run")
    parser.add_argument("current", type=Path, help="report JSON of the run under test")
    parser.add_argument("--max-slowdown", default="10%",
                        help="largest accepted loss of speedup per case, e.g. 10%% or 0.1 (default 10%%)")
    parser.add_argument("--metric", choices=["median", "min"], default="median",
                        help="speedup from median times (default) or from each side's fastest call")
    parser.add_argument("--allow-missing", action="store_true",
                        help="baseline cases absent from CURRENT do not fail")
    args = parser.parse_args(argv)
    return run_compare(args.baseline, args.current, args.max_slowdown, args.allow_missing, args.metric)


def _plot(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fused-s2s-bench plot", description="Draw a report JSON as a PNG: "
                                     "speedup over nn.LSTM per shape, one panel per pass.")
    parser.add_argument("report", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args(argv)
    from .compare import load_report
    from .plot import plot

    try:
        plot(load_report(args.report), args.png)
    except ValueError as e:
        print(f"fused-s2s-bench plot: {e}", file=sys.stderr)
        return 2
    print(f"plot: {args.png}")
    return 0


def _kind(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="fused-s2s-bench kind", description="Print this machine's kind (device model, "
                            "CPU capability, threads), e.g. cpu-amd-epyc-avx512-2t: baselines are kept per "
                            "kind, benchmarks/baselines/<kind>-quick.json.").parse_args(argv)
    from .environment import default_device, machine_kind

    print(machine_kind(default_device()))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "report":
        from .report import main as report_main

        report_main(rest)
        return 0
    if command == "ab":
        from .ab import parse_and_run

        return parse_and_run(rest)
    if command == "compare":
        return _compare(rest)
    if command == "baseline":
        from .make_baseline import main as baseline_main

        return baseline_main(rest)
    if command == "plot":
        return _plot(rest)
    if command == "kind":
        return _kind(rest)
    print(f"fused-s2s-bench: unknown command {command!r}; choose one of {', '.join(COMMANDS)} (--help)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
