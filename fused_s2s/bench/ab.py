"""`fused-s2s-bench ab`: an A/B comparison of two builds of fused_s2s on this machine, in one run.

    fused-s2s-bench ab --base REV --head REV [--quick] [--cases TEXT] [--pairs N] [--threshold PCT]

Both revisions are built into their own folders (builds.py), then measured in interleaved processes: pair
i runs a base process and a head process, base first in even pairs and head first in odd ones, so a slow
drift of the machine lands on both sides alike (asv `continuous`, pyperf `compare_to`). Every process runs
the whole selected grid with the same benchmark code (a copy of this package's bench/, see worker.py) and
reports per case the speedup of its build over nn.LSTM, measured interleaved inside that process; stats.py
turns the per-process speedups into a ratio, an interval and a verdict per case. Exit 0: no case slower
beyond the threshold; 1: at least one; 2: bad input (unknown revision, a build that fails, unreadable file).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .builds import GateError, base_for_head, build, default_cache, repo_root, resolve
from .compare import METRICS, load_report, parse_fraction
from .options import add_grid_arguments, resolve_grid_arguments
from .stats import ALPHA, compare_case, format_results, min_pairs

HARNESS = "fused_s2s_bench_harness"  # the name the copied bench package is imported under in a worker
DEFAULT_PAIRS = 6
DEFAULT_THRESHOLD = "15%"  # see the README, "The A/B gate", for how it was chosen


@dataclass
class Side:
    """One build under comparison: a label, its commit (if known) and where it is installed."""

    label: str  # "base" or "head"
    commit: Optional[str]
    lib: Optional[Path]  # None: the fused_s2s this Python imports
    how: str  # how it was chosen and built, for the log


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base = parser.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", metavar="REV", help="the revision to compare against (built into the cache)")
    base.add_argument("--baseline", metavar="JSON", type=Path,
                      help="take the base revision from this report's commit_info (its merge-base with head if "
                           "that commit is not an ancestor of head), as .ci/run does")
    base.add_argument("--base-lib", metavar="DIR", type=Path,
                      help="an installed build to use as base (a folder filled by `pip install --target DIR .`)")
    head = parser.add_mutually_exclusive_group(required=True)
    head.add_argument("--head", metavar="REV", help="the revision under test (built into the cache)")
    head.add_argument("--head-lib", metavar="DIR", type=Path, help="an installed build to use as head")
    head.add_argument("--head-installed", action="store_true",
                      help="head is the fused_s2s this Python imports (e.g. this checkout's editable build, "
                           "which must be at a clean HEAD)")
    add_grid_arguments(parser)
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS,
                        help=f"interleaved base/head process pairs (default {DEFAULT_PAIRS}; at least "
                             f"{min_pairs()}, the fewest for which the rank test can reach p < {ALPHA})")
    parser.add_argument("--threshold", default=DEFAULT_THRESHOLD,
                        help=f"a case fails when it is significantly slower and head takes more than 1 + this "
                             f"of base's time (default {DEFAULT_THRESHOLD.replace('%', '%%')})")
    parser.add_argument("--out", type=Path, default=Path("fused-s2s-bench-results") / "ab",
                        help="folder for every process's report and the comparison (default "
                             "./fused-s2s-bench-results/ab)")
    parser.add_argument("--repo", type=Path, default=None, help="the git checkout (default: the one holding .)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="build cache (default $FUSED_S2S_AB_CACHE or ~/.cache/fused_s2s/ab)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _installed_side(repo: Optional[Path], rev: Optional[str]) -> Side:
    from .environment import git_commit

    commit = git_commit()
    if commit is None:
        return Side("head", None, None, "the installed fused_s2s (commit unknown)")
    if commit.endswith("-dirty"):
        raise GateError(f"--head-installed: the installed fused_s2s is a checkout with uncommitted changes "
                        f"({commit}); commit them, or pass --head REV to build a revision")
    return Side("head", commit, None, f"the installed build of this checkout at {commit[:12]}")


def _sides(args: argparse.Namespace) -> tuple[Side, Side, Optional[Path]]:
    needs_repo = args.base or args.baseline or args.head
    repo = repo_root(args.repo or Path.cwd()) if needs_repo else None
    cache = args.cache or default_cache()
    if args.head_installed:
        head = _installed_side(repo, None)
    elif args.head_lib:
        head = Side("head", None, args.head_lib, f"the installed build in {args.head_lib}")
    else:
        sha = resolve(repo, args.head)
        head = Side("head", sha, None, f"revision {args.head} = {sha[:12]}")
    if args.base_lib:
        base = Side("base", None, args.base_lib, f"the installed build in {args.base_lib}")
    elif args.base:
        sha = resolve(repo, args.base)
        base = Side("base", sha, None, f"revision {args.base} = {sha[:12]}")
    else:
        recorded = _recorded_commit(args.baseline, args)
        if head.commit is None:
            raise GateError("--baseline needs a head whose commit is known (--head REV or --head-installed)")
        sha, how = base_for_head(repo, recorded, head.commit)
        base = Side("base", sha, None, how)
    for side in (base, head):
        if side.lib is None and side.commit is not None and not (side is head and args.head_installed):
            t0 = time.perf_counter()
            print(f"ab: {side.label} ({side.how}): the build in {cache}, building it if it is not there ...",
                  flush=True)
            side.lib, cached = build(repo, side.commit, cache)
            side.how += f", {'cached build' if cached else f'built in {time.perf_counter() - t0:.0f} s'}: {side.lib}"
        elif side.lib is not None and side.commit is None:
            if not (side.lib / "fused_s2s" / "__init__.py").is_file():
                raise GateError(f"{side.lib} holds no installed fused_s2s (no fused_s2s/__init__.py)")
    return base, head, repo


def _recorded_commit(path: Path, args: argparse.Namespace) -> str:
    """The commit a baseline report was measured at; GateError for a file that is not a usable baseline."""
    try:
        report = load_report(path)
    except OSError as e:
        raise GateError(f"cannot read the baseline {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise GateError(str(e)) from None
    commit = (report.get("commit_info") or {}).get("id")
    if not commit:
        raise GateError(f"{path}: the baseline records no commit (commit_info.id); remake it with "
                        "`fused-s2s-bench baseline`")
    grid = (report.get("settings") or {}).get("grid")
    if grid is not None and grid != args.grid:
        raise GateError(f"{path} is a baseline of the {grid!r} grid, this run measures the {args.grid!r} grid")
    from .environment import default_device, machine_kind

    kind, here = (report.get("machine_info") or {}).get("machine_kind"), machine_kind(default_device())
    if kind is not None and kind != here:
        raise GateError(f"{path} is a baseline of another machine kind ({kind}; this is {here}): use "
                        f"benchmarks/baselines/{here}-quick.json, or --base REV")
    return commit.removesuffix("-dirty")


def _harness(work: Path) -> Path:
    """A copy of this bench package under another name, so a worker can load any build as fused_s2s."""
    dest = work / "harness"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(Path(__file__).resolve().parent, dest / HARNESS,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _worker_cmd(side: Side, json_path: Path, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", f"{HARNESS}.worker", "--json", str(json_path), "--grid", args.grid,
           "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--budget", str(args.budget)]
    if args.cases:
        cmd += ["--cases", args.cases]
    cmd += ["--no-reference"]  # never gated: its rows would cost time and say nothing
    if args.dtypes:
        cmd += ["--dtypes", args.dtypes]
    if side.lib is not None:
        cmd += ["--lib", str(side.lib.resolve())]
    return cmd


def run_processes(base: Side, head: Side, args: argparse.Namespace) -> dict[str, list[dict]]:
    """2 × pairs worker processes, interleaved; each side's reports in the order they ran."""
    from tqdm import tqdm

    # Absolute: the workers run in a temporary folder, where a relative path would point elsewhere.
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    reports: dict[str, list[dict]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory(prefix="fused_s2s_ab_") as tmp:
        work = Path(tmp)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_harness(work))] +
                                                            ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
        order = [(i, s) for i in range(args.pairs) for s in ((base, head) if i % 2 == 0 else (head, base))]
        bar = tqdm(order, desc="ab processes", unit="proc", disable=args.no_progress)
        for i, side in bar:
            bar.set_postfix_str(f"pair {i + 1} {side.label}")
            path = args.out / f"{side.label}-{i + 1}.json"
            run_env = {**env, "FUSED_S2S_BENCH_COMMIT": side.commit or ""}
            # cwd: a neutral folder, so `python -m` cannot pick up a checkout's fused_s2s/ from the cwd.
            done = subprocess.run(_worker_cmd(side, path, args), cwd=work, env=run_env, capture_output=True,
                                  text=True)
            (args.out / f"{side.label}-{i + 1}.log").write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                last = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-1:] or ["?"]
                raise GateError(f"the {side.label} process of pair {i + 1} failed (exit {done.returncode}): "
                                f"{last[0].strip()} (log {args.out / f'{side.label}-{i + 1}.log'})")
            try:
                reports[side.label].append(json.loads(path.read_text()))
            except (OSError, ValueError) as e:
                raise GateError(f"the {side.label} process of pair {i + 1} left no readable report at {path} "
                                f"({e}; log {args.out / f'{side.label}-{i + 1}.log'})") from None
    return reports


def _samples(reports: list[dict]) -> tuple[dict[str, list[float]], dict[str, bool], dict[str, str]]:
    """name -> speedups (one per process), name -> gated, name -> error (a case that failed in a process)."""
    keys = METRICS["median"]
    samples: dict[str, list[float]] = {}
    gated: dict[str, bool] = {}
    errors: dict[str, str] = {}
    for rep in reports:
        for row in rep["benchmarks"]:
            extra = row.get("extra_info") or {}
            key = next((k for k in keys if k in extra), None)
            if key is not None:
                samples.setdefault(row["name"], []).append(float(extra[key]))
                gated[row["name"]] = bool(extra.get("gate", True))
        errors.update(rep.get("errors") or {})
    return samples, gated, errors


def compare_reports(base_reports: list[dict], head_reports: list[dict], threshold: float) -> tuple[list, dict]:
    """Per case the stats.compare_case result, in the order the cases ran; and the cases that raised."""
    b, gated_b, err_b = _samples(base_reports)
    h, gated_h, err_h = _samples(head_reports)
    names = list(dict.fromkeys(list(b) + list(h)))
    results = [compare_case(n, b.get(n, []), h.get(n, []), threshold, gated_b.get(n, True) and gated_h.get(n, True))
               for n in names]
    return results, {"base": err_b, "head": err_h}


def main(args: argparse.Namespace) -> int:
    try:
        threshold = parse_fraction(args.threshold, "--threshold")
        if args.pairs < min_pairs():
            raise GateError(f"--pairs must be at least {min_pairs()} (with fewer processes per side the rank test "
                            f"cannot reach p < {ALPHA}, so no case could ever be called slower), got {args.pairs}")
        base, head, _ = _sides(args)
        print(f"ab: base = {base.how}\nab: head = {head.how}\nab: {args.pairs} pairs of processes, grid "
              f"{args.grid}{f', cases {args.cases!r}' if args.cases else ''}, threshold {threshold:.0%}", flush=True)
        t0 = time.perf_counter()
        reports = run_processes(base, head, args)
    except GateError as e:
        print(f"fused-s2s-bench ab: {e}", file=sys.stderr)
        return 2
    results, errors = compare_reports(reports["base"], reports["head"], threshold)
    label = lambda s: (s.commit or "?")[:12] if s.lib is None or s.commit else str(s.lib)  # noqa: E731
    print()
    print(format_results(results, threshold, label(base), label(head)))
    for side, errs in errors.items():
        for name, msg in errs.items():
            print(f"ab: case {name!r} raised in the {side} build: {msg}")
    one_sided = [r for r in results if r.verdict.startswith("only in")]
    failed = [r for r in results if r.fails]
    slower = [r for r in results if r.verdict == "slower"]
    summary = {"base": asdict(base) | {"lib": str(base.lib) if base.lib else None},
               "head": asdict(head) | {"lib": str(head.lib) if head.lib else None},
               "pairs": args.pairs, "threshold": threshold, "grid": args.grid, "cases": args.cases,
               "elapsed_s": time.perf_counter() - t0, "errors": errors,
               "results": [asdict(r) for r in results]}
    (args.out / "ab.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nab: {len(results)} cases in {summary['elapsed_s']:.0f} s: {len(slower)} slower ({len(failed)} beyond "
          f"{threshold:.0%}), {sum(r.verdict == 'faster' for r in results)} faster, {len(one_sided)} in one build "
          f"only. JSON: {args.out / 'ab.json'}")
    if failed:
        print("ab: FAIL: " + "; ".join(f"{r.name} {r.ratio:.2f}x the time ({r.low:.2f}–{r.high:.2f})"
                                         if r.ratio is not None else f"{r.name} missing from head" for r in failed))
        return 1
    print("ab: PASS")
    return 0


def parse_and_run(argv: list[str]) -> int:
    """`fused-s2s-bench ab ...`: parse, fill in the grid's defaults, run."""
    parser = argparse.ArgumentParser(prog="fused-s2s-bench ab", description=__doc__.split("\n\n")[0] + "\n\n" +
                                     __doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    resolve_grid_arguments(parser, args)
    return main(args)
