"""`fused-s2s-bench`: the benchmark report and the performance-regression gate.

    fused-s2s-bench compare BASELINE.json CURRENT.json [--max-slowdown 10%] [--metric median|min] [--allow-missing]
    fused-s2s-bench report [--quick] [--json PATH] ...    (runs benchmarks/report.py of a checkout)
    python -m fused_s2s.bench_cli ...                     (the same without the console script)

`compare` exits 0 when no gated case lost more than --max-slowdown of its speedup over nn.LSTM and no
baseline case is missing, 1 otherwise (printing the rows that regressed), 2 on unreadable input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from fused_s2s.bench_compare import run_compare


def _report(argv: list[str]) -> int:
    # The suite is not part of the wheel: it lives in the repository's benchmarks/ folder. Look for it in
    # the working directory, so `fused-s2s-bench report` works from a checkout.
    if Path("benchmarks", "report.py").is_file() and "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        from benchmarks import report
    except ImportError as e:
        print(f"fused-s2s-bench report: run it from a fused_s2s checkout; the suite lives in its benchmarks/ "
              f"folder ({e})", file=sys.stderr)
        return 2
    report.main(argv)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="fused-s2s-bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="gate CURRENT against BASELINE by speedups over nn.LSTM")
    cmp.add_argument("baseline", type=Path, help="report JSON of the reference run")
    cmp.add_argument("current", type=Path, help="report JSON of the run under test")
    cmp.add_argument("--max-slowdown", default="10%",
                     help="largest accepted loss of speedup per case, e.g. 10%% or 0.1 (default 10%%)")
    cmp.add_argument("--metric", choices=["median", "min"], default="median",
                     help="speedup from median times (default) or from each side's fastest call")
    cmp.add_argument("--allow-missing", action="store_true", help="baseline cases absent from CURRENT do not fail")
    sub.add_parser("report", help="run the benchmark report (python -m benchmarks.report --help)", add_help=False)
    if argv[:1] == ["report"]:
        return _report(argv[1:])
    args = parser.parse_args(argv)
    return run_compare(args.baseline, args.current, args.max_slowdown, args.allow_missing, args.metric)


if __name__ == "__main__":
    sys.exit(main())
