"""A gate baseline from several runs of the report: each row keeps the run whose speedup is the median.

    python -m benchmarks.make_baseline RUN1.json RUN2.json RUN3.json -o benchmarks/baselines/KIND-quick.json

One run can land in a slow or a fast mode of the machine; the per-case median of a few runs sits in the
middle, so honest noise moves a later run less far from it than from any single run.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Optional

from fused_s2s.bench_compare import METRICS, load_report


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


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="report JSON files (an odd number, 3 or more)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    merged = merge([load_report(p) for p in args.runs])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(merged, indent=1) + "\n")
    spreads = [max(r["extra_info"]["baseline_runs"]) / min(r["extra_info"]["baseline_runs"]) - 1
               for r in merged["benchmarks"] if "baseline_runs" in r["extra_info"]]
    print(f"{args.output}: {len(spreads)} rows, largest spread between runs {max(spreads, default=0.0):.1%}")


if __name__ == "__main__":
    main()
