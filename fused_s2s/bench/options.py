"""The options that say what a benchmark run measures (grid, cases, dtypes, timing), shared by `report`, the
A/B gate and its worker processes. Imports no fused_s2s: a worker parses them before it picks the build."""
from __future__ import annotations

import argparse

from .cases import GRIDS

# Timing per grid: (warm-up rounds, most timed rounds, seconds of timed calls per case before stopping
# early, never under 3 rounds). Cheap cases get many rounds, costly ones few.
SETTINGS = {"full": (3, 50, 8.0), "quick": (3, 80, 6.0), "smoke": (1, 3, 0.5)}


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say what runs: shared by `report`, the A/B gate and its worker processes."""
    parser.add_argument("--quick", action="store_true", help="the CI-sized grid (about a minute on 2 CPU cores)")
    parser.add_argument("--grid", choices=GRIDS, default=None, help=argparse.SUPPRESS)  # 'smoke': the tests
    parser.add_argument("--cases", default=None, help="only cases whose id contains every comma-separated part, "
                        "e.g. 'fwd+bwd,B16' or 'greedy step'")
    parser.add_argument("--dtypes", default=None, help="comma-separated dtypes (default: what the device takes)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds per case")
    parser.add_argument("--repeats", type=int, default=None, help="most timed rounds per case")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timed calls per case (min 3 rounds)")
    parser.add_argument("--no-reference", action="store_true",
                        help="do not time the plain-PyTorch reference (it is shown, never gated)")


def resolve_grid_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill in the grid's defaults for the options left unset."""
    args.grid = args.grid or ("quick" if args.quick else "full")
    warmup, repeats, budget = SETTINGS[args.grid]
    args.warmup = warmup if args.warmup is None else args.warmup
    args.repeats = repeats if args.repeats is None else args.repeats
    args.budget = budget if args.budget is None else args.budget
    if args.repeats < 1 or args.warmup < 0 or args.budget <= 0:
        parser.error("--repeats must be >= 1, --warmup >= 0 and --budget > 0")
