"""The suite under pytest-benchmark: every case of the grid × every implementation, against nn.LSTM.

    pytest benchmarks/test_lstm_suite.py --benchmark-json out.json          # the quick grid
    FUSED_S2S_BENCH_GRID=full pytest benchmarks/test_lstm_suite.py ...      # the full grid

pytest-benchmark times the implementation; nn.LSTM is timed by the `setup` hook right before each round,
so the two are interleaved and `extra_info.speedup_vs_nn_lstm` (nn.LSTM median / ours) comes from the same
run. `fused-s2s-bench compare` gates JSON written this way as it does the report's. `python -m
`fused-s2s-bench report` runs the same cases (fused_s2s/bench/measure.py) with a progress bar, table and plot.
"""
from __future__ import annotations

import os
import statistics

import pytest
import torch

from fused_s2s.bench.cases import REFERENCE, default_cells, default_dtypes, grid
from fused_s2s.bench.measure import build_case, implementations, peak_bytes, saved_bytes
from fused_s2s.bench.timing import time_call

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GRID = os.environ.get("FUSED_S2S_BENCH_GRID", "quick")
PAIRS = [(case, impl) for case in grid(GRID, default_dtypes(DEVICE), cells=default_cells(DEVICE))
         for impl in implementations(case, DEVICE)]
WARMUP = 2
ROUNDS = {REFERENCE: 3}  # the reference is a Python loop per step
DEFAULT_ROUNDS = 15


@pytest.mark.parametrize("case,impl", PAIRS, ids=[f"{impl} {case.id}" for case, impl in PAIRS])
def test_lstm(benchmark, case, impl):
    built = build_case(case, DEVICE)
    ours, theirs = built.steps[impl], built.steps[built.baseline]
    for _ in range(WARMUP):
        theirs()
        ours()
    nn_ms: list[float] = []

    def target() -> None:
        ours()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)  # pytest-benchmark reads a host clock

    benchmark.group = case.id
    benchmark.pedantic(target, setup=lambda: nn_ms.append(time_call(theirs, DEVICE)),
                       rounds=ROUNDS.get(impl, DEFAULT_ROUNDS), iterations=1)
    median_ms = benchmark.stats.stats.median * 1e3
    vs = "nn_lstm" if case.cell == "lstm" else "torch"  # the key names the report and the baselines use
    info = {"impl": impl, "backend": built.backends[impl], f"speedup_vs_{vs}": statistics.median(nn_ms) / median_ms,
            f"{vs}_median_s": statistics.median(nn_ms) / 1e3, "gate": impl != REFERENCE,
            f"max_abs_diff_vs_{vs}": built.max_abs_diff[impl]}
    if case.backward:
        params = [built.x]
        ours_saved = saved_bytes(built.forwards[impl], params + list(built.modules[impl].parameters()))
        nn_saved = saved_bytes(built.forwards[built.baseline], params + list(built.modules[built.baseline].parameters()))
        info.update(saved_bytes=ours_saved, saved_bytes_ratio=ours_saved / nn_saved if nn_saved else None)
        if DEVICE.type == "cuda":
            info["peak_bytes_ratio"] = peak_bytes(ours, DEVICE) / peak_bytes(theirs, DEVICE)
    benchmark.extra_info.update(info)
    # A sanity bound, not a correctness test (tests/ does that): cuDNN runs float32 as TF32 by default.
    exact = case.dtype == "float32" and DEVICE.type == "cpu"
    assert built.max_abs_diff[impl] < (1e-3 if exact else 5e-2)
