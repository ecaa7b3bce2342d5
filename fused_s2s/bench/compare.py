"""The performance-regression gate's logic: compare two benchmark reports by their speedup ratios.

A report (`fused-s2s-bench report`, or `pytest benchmarks --benchmark-json`) lists rows in pytest-benchmark's
layout; each row measured against nn.LSTM in the same run carries `extra_info.speedup_vs_nn_lstm` (the
decoder step, measured against eager PyTorch, `speedup_vs_eager`).
Absolute times move with the machine and its load; the ratio of two implementations timed interleaved
moves far less, so the gate compares ratios. Rows with `extra_info.gate` false (the reference backend)
are shown but never fail. This module imports nothing but the standard library.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# Which speedup the gate reads: "median" (the baseline implementation's median / ours, the report's figure:
# against nn.LSTM for the LSTM cases, against eager PyTorch for the decoder step) or "min" (best call against
# best call, which ignores the rounds a busy machine slowed down). The first key a row has is used.
METRICS = {"median": ("speedup_vs_nn_lstm", "speedup_vs_torch", "speedup_vs_eager"),
           "min": ("speedup_min_vs_nn_lstm", "speedup_min_vs_torch")}


@dataclass
class Row:
    """One compared case: speedups over nn.LSTM in the baseline and the current run."""

    name: str
    baseline: float
    current: float
    gated: bool

    @property
    def change(self) -> float:
        """Relative change of the speedup: -0.2 means the case runs at 80% of the baseline's speed."""
        return self.current / self.baseline - 1


@dataclass
class Comparison:
    """The outcome of a comparison: rows that regressed or passed, and cases on one side only."""

    max_slowdown: float
    regressed: list[Row] = field(default_factory=list)
    passed: list[Row] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the baseline, not in the current run
    new: list[str] = field(default_factory=list)  # in the current run, not in the baseline
    warnings: list[str] = field(default_factory=list)

    def ok(self, allow_missing: bool = False) -> bool:
        return not self.regressed and (allow_missing or not self.missing)


def parse_fraction(text: str, option: str = "--max-slowdown") -> float:
    """'10%' or '0.1' -> 0.1; must lie in [0, 1)."""
    t = str(text).strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"{option} must be a percentage like 10% or a fraction like 0.1, got {text!r}") from None
    if not 0 <= value < 1:
        raise ValueError(f"{option} must be in [0%, 100%), got {text!r}")
    return value


def load_report(path: Path) -> dict:
    """A report's JSON; ValueError naming the file if it is missing or not one."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ValueError(f"{path}: not a benchmark report (no 'benchmarks' list)")
    for i, row in enumerate(data["benchmarks"]):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise ValueError(f"{path}: benchmark row {i} has no name")
    return data


def check_comparable(baseline: dict, current: dict) -> None:
    """ValueError when two reports come from different machine kinds or different grids: their ratios
    cannot be compared (a baseline for this machine kind and grid is needed)."""
    kinds = [r.get("machine_info", {}).get("machine_kind") for r in (baseline, current)]
    if None not in kinds and kinds[0] != kinds[1]:
        raise ValueError(f"the baseline was measured on {kinds[0]}, this run on {kinds[1]}: ratios differ "
                         "between machine kinds, so compare against a baseline of this kind")
    grids = [(r.get("settings") or {}).get("grid") for r in (baseline, current)]
    if None not in grids and grids[0] != grids[1]:
        raise ValueError(f"the baseline is of the {grids[0]!r} grid, this run of the {grids[1]!r} grid")


def speedups(report: dict, metric: str = "median") -> dict[str, tuple[float, bool]]:
    """name -> (speedup over nn.LSTM, gated) for every row that has a speedup."""
    out = {}
    for row in report["benchmarks"]:
        extra = row.get("extra_info") or {}
        key = next((k for k in METRICS[metric] if k in extra), None)
        if key is not None:
            out[row["name"]] = (float(extra[key]), bool(extra.get("gate", True)))
    return out


def compare(baseline: dict, current: dict, max_slowdown: float, metric: str = "median") -> Comparison:
    """A gated case regresses when its current speedup is below baseline speedup × (1 − max_slowdown)."""
    if metric not in METRICS:
        raise ValueError(f"--metric must be one of {sorted(METRICS)}, got {metric!r}")
    base, cur = speedups(baseline, metric), speedups(current, metric)
    result = Comparison(max_slowdown, missing=sorted(set(base) - set(cur)), new=sorted(set(cur) - set(base)))
    for name in sorted(set(base) & set(cur), key=list(base).index):
        row = Row(name, base[name][0], cur[name][0], base[name][1] and cur[name][1])
        (result.regressed if row.gated and row.change < -max_slowdown else result.passed).append(row)
    return result


def format_comparison(c: Comparison) -> str:
    """A markdown table of every compared case, the missing and new ones, then the regressions and verdict."""
    lines = [f"| case | baseline speedup | current speedup | change | status (max slowdown {c.max_slowdown:.0%}) |",
             "| --- | ---: | ---: | ---: | --- |"]
    bad = {id(r) for r in c.regressed}
    for r in sorted(c.regressed + c.passed, key=lambda r: r.name):
        status = "REGRESSED" if id(r) in bad else ("ok" if r.gated else "ok (not gated)")
        lines.append(f"| {r.name} | {r.baseline:.3f} | {r.current:.3f} | {r.change:+.1%} | {status} |")
    lines += [f"| {n} | | | | MISSING from the current run |" for n in c.missing]
    lines += [f"| {n} | | | | NEW (not in the baseline) |" for n in c.new]
    for w in c.warnings:
        lines.append(f"\nwarning: {w}")
    if c.regressed:
        lines.append(f"\nREGRESSED ({len(c.regressed)}):")
        lines += [f"  {r.name}: speedup {r.baseline:.3f} -> {r.current:.3f} ({r.change:+.1%}, limit "
                  f"-{c.max_slowdown:.0%})" for r in c.regressed]
    if c.missing:
        lines.append(f"\nMISSING ({len(c.missing)}): " + "; ".join(c.missing))
    if c.new:
        lines.append(f"\nNEW ({len(c.new)}): " + "; ".join(c.new))
    return "\n".join(lines)


def verdict(c: Comparison, allow_missing: bool = False) -> str:
    """The last line the gate prints."""
    return (f"gate: {'PASS' if c.ok(allow_missing) else 'FAIL'} ({len(c.passed)} ok, {len(c.regressed)} "
            f"regressed, {len(c.missing)} missing{' (allowed)' if allow_missing and c.missing else ''}, "
            f"{len(c.new)} new)")


def run_compare(baseline: Path, current: Path, max_slowdown: str, allow_missing: bool = False,
                metric: str = "median") -> int:
    """The `compare` command: prints the table and verdict; exit code 0 pass, 1 fail, 2 unreadable input."""
    try:
        limit = parse_fraction(max_slowdown)
        base_report, current_report = load_report(baseline), load_report(current)
        check_comparable(base_report, current_report)
        c = compare(base_report, current_report, limit, metric)
    except (OSError, ValueError) as e:
        print(f"fused-s2s-bench compare: {e}")
        return 2
    print(f"speedups over nn.LSTM ({metric} times): {baseline} -> {current}\n")
    print(format_comparison(c) + "\n\n" + verdict(c, allow_missing))
    return 0 if c.ok(allow_missing) else 1
