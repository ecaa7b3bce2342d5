"""A gate baseline from several runs of the report: each row keeps the run whose speedup is the median.

    fused-s2s-bench baseline RUN1.json RUN2.json RUN3.json -o benchmarks/baselines/KIND-quick.json

One run can land in a slow or a fast mode of the machine; the per-case median of a few runs sits in the
middle, so honest noise moves a later run less far from it than from any single run.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Optional

from .compare import METRICS, load_report


def merge(reports: list[dict]) -> dict:
    """The first report's layout and environment; per row with a speedup, that row of the run with the median
    speedup (rows without one, nn.LSTM's, stay as the first run has them: the gate does not read them)."""
    out = copy.deepcopy(reports[0])
    by_name = [{r["name"]: r for r in rep["benchmarks"]} for rep in reports]
    rows = []
    for row in out["benchmarks"]:
        versions = [b[row["name"]] for b in by_name if row["name"] in b]
        key = next((k for k in METRICS["median"] if k in row["extra_info"]), None)
        if key is not None:
            ranked = sorted(versions, key=lambda r: r["extra_info"][key])
            row = copy.deepcopy(ranked[len(ranked) // 2])  # the median run (of an odd count)
            row["extra_info"]["baseline_runs"] = [r["extra_info"][key] for r in versions]
        rows.append(row)
    out["benchmarks"] = rows
    out["settings"]["baseline_of"] = [rep.get("datetime") for rep in reports]
    return out


def recorded_commit(reports: list[dict], names: list[str]) -> str:
    """The one commit all runs were measured at; ValueError if they differ, are unknown or uncommitted."""
    commits = {(rep.get("commit_info") or {}).get("id") for rep in reports}
    if len(commits) != 1:
        raise ValueError(f"the runs were measured at different commits ({', '.join(sorted(map(str, commits)))}): "
                         "a baseline is one commit's measurement")
    commit = commits.pop()
    if not commit:
        raise ValueError(f"{names[0]} records no commit (measured outside a checkout?): pass --commit REV")
    if commit.endswith("-dirty"):
        raise ValueError(f"the runs were measured on uncommitted changes ({commit}): the A/B gate could not "
                         "rebuild that base; commit first, or pass --commit REV if the changes do not matter")
    return commit


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fused-s2s-bench baseline", description=__doc__.split("\n\n")[0] +
                                     " The baseline records the runs' commit (commit_info), which `fused-s2s-bench "
                                     "ab --baseline FILE` builds as its base.")
    parser.add_argument("runs", nargs="+", type=Path, help="report JSON files (an odd number, 3 or more)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--commit", default=None, help="the commit to record (default: the runs' own)")
    args = parser.parse_args(argv)
    try:
        if len(args.runs) < 3 or len(args.runs) % 2 == 0:
            raise ValueError(f"give an odd number of runs, 3 or more (got {len(args.runs)}): the baseline keeps "
                             "each case's median run")
        reports = [load_report(p) for p in args.runs]
        commit = args.commit or recorded_commit(reports, [str(p) for p in args.runs])
    except ValueError as e:
        print(f"fused-s2s-bench baseline: {e}", file=sys.stderr)
        return 2
    merged = merge(reports)
    merged["commit_info"] = {**(merged.get("commit_info") or {}), "id": commit}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(merged, indent=1) + "\n")
    spreads = [max(r["extra_info"]["baseline_runs"]) / min(r["extra_info"]["baseline_runs"]) - 1
               for r in merged["benchmarks"] if "baseline_runs" in r["extra_info"]]
    print(f"{args.output}: {len(spreads)} rows at commit {commit[:12]}, largest spread between runs "
          f"{max(spreads, default=0.0):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
