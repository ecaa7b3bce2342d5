"""The A/B gate's statistics: from per-process speedups of two builds, a time ratio with a confidence
interval and a verdict per case.

Each worker process of `fused-s2s-bench ab` measures, per case, the speedup of the build it loaded over
nn.LSTM (eager PyTorch for the decoder step), both timed interleaved in that process. So a case has one
speedup per process: `base` samples from the base build's processes, `head` samples from the head's.

    ratio = median(base) / median(head)     head's time relative to base's: 1.3 means head is 1.3x slower

The 99% interval of the ratio is scipy's bootstrap (percentile method, processes resampled within each
side, fixed seed so a verdict is reproducible from its samples). The p-value is scipy's exact two-sided
Mann-Whitney U test of the two samples. A case is

    slower  when the whole interval lies above 1 and the rank test agrees (p < alpha),
    faster  when the whole interval lies below 1 and the rank test agrees,
    same    otherwise,

and it fails the gate only when it is slower *and* its ratio exceeds 1 + threshold: asv's `continuous` rule
(a change must be both significant and larger than the factor). Cases measured in one build only are
reported as such: one that only base measured fails (head lost it), one only head measured passes (new). This module needs scipy and numpy, not torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import stats as sps

# The rank test's level, and the interval's confidence to match. 0.01 rather than 0.05: a gate tests ~17
# cases at once, and on the 2-core VM (README, "The A/B gate") 0.05 failed unchanged code in about 5% of
# simulated runs against 1% with 0.01, while a 1.3x slowdown still failed every one. 4 vs 4 processes
# cannot reach p < 0.01 (smallest two-sided p 0.029): min_pairs().
ALPHA = 0.01
CONFIDENCE = 1 - ALPHA
SEED = 20261204  # the bootstrap's generator: the same samples give the same interval and verdict


@dataclass
class CaseResult:
    """One case of an A/B comparison: both sides' samples, the ratio, its interval and the verdict."""

    name: str
    base: list[float]  # speedups over the in-process baseline (nn.LSTM / eager), one per base process
    head: list[float]  # the same for the head build
    ratio: Optional[float] = None  # head time / base time (> 1: head slower)
    low: Optional[float] = None  # the interval of the ratio
    high: Optional[float] = None
    p_value: Optional[float] = None
    verdict: str = "same"  # slower | faster | same | only in base | only in head | too few samples
    fails: bool = False
    gated: bool = True  # False for rows that are shown, never gated (the reference backend)


def min_pairs(alpha: float = ALPHA) -> int:
    """The fewest processes per side for which the exact rank test can reach p < alpha at all."""
    n = 2
    while sps.mannwhitneyu(range(n), range(n, 2 * n), method="exact").pvalue >= alpha:  # fully separated
        n += 1
    return n


def _median_log_ratio(base: np.ndarray, head: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(base, axis=axis) - np.median(head, axis=axis)


def compare_case(name: str, base: list[float], head: list[float], threshold: float, gated: bool = True,
                 confidence: float = CONFIDENCE, alpha: float = ALPHA) -> CaseResult:
    """The ratio, interval, p-value and verdict of one case (see the module docstring)."""
    r = CaseResult(name, list(base), list(head), gated=gated)
    if not base or not head:
        # A case head no longer measures (it raised, or was dropped) fails like a missing case in `compare`;
        # a case only head measures is new and passes.
        r.verdict = "only in head" if not base else "only in base"
        r.fails = gated and not head
        return r
    lb, lh = np.log(np.asarray(base, dtype=float)), np.log(np.asarray(head, dtype=float))
    r.ratio = float(np.exp(_median_log_ratio(lb, lh)))
    if len(base) < 2 or len(head) < 2:
        r.verdict = "too few samples"
        return r
    if np.ptp(np.concatenate([lb, lh])) == 0:  # every sample equal: no spread to resample
        r.low = r.high = r.ratio
        r.p_value = 1.0
    else:
        boot = sps.bootstrap((lb, lh), _median_log_ratio, vectorized=True, method="percentile",
                             confidence_level=confidence, n_resamples=4000, rng=np.random.default_rng(SEED))
        r.low, r.high = float(np.exp(boot.confidence_interval.low)), float(np.exp(boot.confidence_interval.high))
        r.p_value = float(sps.mannwhitneyu(lb, lh, alternative="two-sided", method="exact").pvalue)
    significant = r.p_value < alpha
    if significant and r.low > 1:
        r.verdict = "slower"
    elif significant and r.high < 1:
        r.verdict = "faster"
    r.fails = gated and r.verdict == "slower" and r.ratio > 1 + threshold
    return r


def format_results(results: list[CaseResult], threshold: float, base_label: str, head_label: str) -> str:
    """A markdown table: per case both sides' median speedups, the ratio with its interval, p, verdict."""
    lines = [f"base = {base_label}, head = {head_label}; ratio = head time / base time (> 1: head slower), "
             f"{CONFIDENCE:.0%} bootstrap interval, Mann-Whitney p; fails when slower and ratio > "
             f"{1 + threshold:.2f}\n",
             "| case | base speedup | head speedup | head/base time | interval | p | n | verdict |",
             "| --- | ---: | ---: | ---: | --- | ---: | --- | --- |"]
    for r in results:
        med = lambda xs: f"{float(np.median(xs)):.3f}" if xs else "—"  # noqa: E731
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else "—"
        interval = f"{r.low:.3f}–{r.high:.3f}" if r.low is not None else "—"
        p = f"{r.p_value:.3f}" if r.p_value is not None else "—"
        verdict = ("FAIL: " if r.fails else "") + r.verdict + ("" if r.gated else " (not gated)")
        lines.append(f"| {r.name} | {med(r.base)} | {med(r.head)} | {ratio} | {interval} | {p} | "
                     f"{len(r.base)}+{len(r.head)} | {verdict} |")
    return "\n".join(lines)
