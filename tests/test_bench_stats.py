"""The A/B gate's statistics (fused_s2s.bench.stats) on synthetic per-process speedups: no timing here."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy")

from fused_s2s.bench.stats import compare_case, format_results, min_pairs  # noqa: E402


def noisy(center: float, n: int, spread: float, rng: np.random.Generator) -> list[float]:
    """n speedups around `center`, log-normal noise of relative size `spread` (as the processes scatter)."""
    return list(center * np.exp(rng.normal(0, spread, n)))


def test_rank_test_needs_five_processes_per_side():
    assert min_pairs() == 5 and min_pairs(0.05) == 4


@pytest.mark.parametrize("slowdown,verdict,fails", [(1.3, "slower", True), (1.0 / 1.3, "faster", False)])
def test_clear_change_gets_its_verdict(slowdown, verdict, fails):
    rng = np.random.default_rng(1)
    base = noisy(1.0, 6, 0.03, rng)
    head = noisy(1.0 / slowdown, 6, 0.03, rng)  # head takes `slowdown` times the time: its speedup drops
    r = compare_case("c", base, head, threshold=0.15)
    assert r.verdict == verdict and r.fails is fails
    assert r.ratio == pytest.approx(slowdown, rel=0.06)
    assert r.low < r.ratio < r.high and (r.low > 1 if slowdown > 1 else r.high < 1)
    assert r.p_value < 0.01


def test_small_slowdown_is_slower_but_passes_the_threshold():
    rng = np.random.default_rng(2)
    r = compare_case("c", noisy(1.0, 6, 0.02, rng), noisy(1 / 1.1, 6, 0.02, rng), threshold=0.15)
    assert r.verdict == "slower" and not r.fails and 1.05 < r.ratio < 1.15


def test_same_code_with_noise_is_same():
    """Two samples of one distribution (8% per process, as a noisy case here): 'same' in almost every draw
    (the rank test's level is 1%), and failing the 15% threshold in at most 1 of 200."""
    rng = np.random.default_rng(3)
    verdicts = [compare_case("c", noisy(1.0, 6, 0.08, rng), noisy(1.0, 6, 0.08, rng), 0.15) for _ in range(200)]
    assert sum(r.fails for r in verdicts) <= 1
    assert sum(r.verdict != "same" for r in verdicts) <= 6
    assert all(r.low <= r.ratio <= r.high for r in verdicts)


def test_large_but_noisy_difference_is_not_called():
    """Ratio above the threshold, but the samples overlap: not significant, so neither slower nor failing."""
    r = compare_case("c", [1.0, 1.4, 0.7, 1.2, 0.8], [0.6, 1.3, 0.7, 1.1, 0.65], threshold=0.15)
    assert r.ratio > 1.15 and r.verdict == "same" and not r.fails


def test_ungated_case_never_fails():
    r = compare_case("c", [1.0] * 5 + [1.01], [0.5] * 5 + [0.51], threshold=0.15, gated=False)
    assert r.verdict == "slower" and not r.fails


def test_identical_samples():
    r = compare_case("c", [1.0] * 5, [1.0] * 5, threshold=0.1)
    assert r.ratio == r.low == r.high == 1.0 and r.verdict == "same"


@pytest.mark.parametrize("base,head,verdict,fails", [([], [1.0] * 5, "only in head", False),
                                                     ([1.0] * 5, [], "only in base", True)])
def test_case_in_one_build_only(base, head, verdict, fails):
    r = compare_case("c", base, head, threshold=0.1)
    assert r.verdict == verdict and r.ratio is None and r.fails is fails
    table = format_results([r], 0.1, "b", "h")
    assert verdict in table


def test_interval_is_reproducible():
    rng = np.random.default_rng(4)
    base, head = noisy(1.0, 6, 0.05, rng), noisy(0.9, 6, 0.05, rng)
    a, b = compare_case("c", base, head, 0.1), compare_case("c", base, head, 0.1)
    assert (a.low, a.high, a.verdict) == (b.low, b.high, b.verdict)
