"""Interleaved timing: the implementations of a case are called in turn, so drift in machine load hits all alike."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Stats:
    """Per-call times in milliseconds, summarised (median and p20/p80, as the report shows them)."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    n: int


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of values, linearly interpolated."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarise(times_ms: list[float]) -> Stats:
    """Median, p20, p80, min, max and mean of per-call times."""
    return Stats(median_ms=statistics.median(times_ms), p20_ms=percentile(times_ms, 20),
                 p80_ms=percentile(times_ms, 80), min_ms=min(times_ms), max_ms=max(times_ms),
                 mean_ms=statistics.fmean(times_ms), n=len(times_ms))


def time_call(fn: Callable[[], None], device: torch.device) -> float:
    """Wall time of one call of fn in milliseconds (CUDA events on a GPU, perf_counter on the CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def measure_interleaved(fns: list[Callable[[], None]], device: torch.device, warmup: int, repeats: int,
                        budget_s: float = float("inf"), min_repeats: int = 3) -> list[list[float]]:
    """Per-call times (ms) of each function, called in turn; the first of each round rotates.

    Stops after `repeats` rounds, or earlier once the timed calls took `budget_s` seconds and at least
    `min_repeats` rounds ran: cheap cases get many rounds, the slowest cases of a grid stay bounded.
    Warm-up likewise stops after one round once it took a quarter of the budget.
    """
    t0 = time.perf_counter()
    for _ in range(warmup):
        for fn in fns:
            fn()
        if time.perf_counter() - t0 > budget_s / 4:
            break
    times: list[list[float]] = [[] for _ in fns]
    spent = 0.0
    for r in range(repeats):
        k = r % len(fns)
        for i in list(range(k, len(fns))) + list(range(k)):
            t = time_call(fns[i], device)
            times[i].append(t)
            spent += t / 1e3
        if spent > budget_s and r + 1 >= min_repeats:
            break
    return times
