"""The fused decoder step (fused_s2s.ops.decoder_step) against the reference step: every attention kind,
1 and 2 layers, input feeding on/off, lengths (full, 1, all-but-one masked), odd sizes, fp32 and fp64;
the packed-weight cache after an in-place weight update; opcheck; bad input."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fused_s2s.ops.decoder_step import attention_keys, decoder_step, prepare_decoder_weights
from fused_s2s.reference.decoder import decoder_step as reference_step
from tests.utils import assert_close, case_id, tolerance

KINDS = ("dot", "scaled_dot", "general", "additive")


def make_step_case(B=3, E=5, H=6, M=7, S=9, L=1, A=4, kind="general", feed=True, lengths="mixed",
                   dtype=torch.float32, bias=True):
    """(x, feed, h, c, weights, memory, memory_lengths) with fresh random draws; M = H for dot kinds."""
    if kind in ("dot", "scaled_dot"):
        M = H
    r = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    # Weights scaled by their fan-in so pre-activations and scores are O(1) at every size: saturated gates
    # or a one-hot softmax would hide kernel errors and amplify rounding differences.
    w = lambda rows, fan_in: r(rows, fan_in) * (2 / fan_in ** 0.5)  # noqa: E731
    lstm_weights = []
    for layer in range(L):
        in_l = (E + H if feed else E) if layer == 0 else H
        lstm_weights.append((w(4 * H, in_l), w(4 * H, H), r(4 * H) if bias else None,
                             r(4 * H) if bias and layer == 0 else None))
    params = {"dot": {}, "scaled_dot": {}, "general": {"w": w(M, H) / M ** 0.5},
              "additive": {"w_query": w(A, H), "b_query": r(A) if bias else None, "w_memory": w(A, M) / 2,
                           "v": w(1, A)[0] / 2}}[kind]
    weights = prepare_decoder_weights(lstm_weights, kind, params, w(H, M + H), r(H) if bias else None)
    if lengths == "none":
        lens = None
    elif lengths == "one":
        lens = torch.ones(B, dtype=torch.long)
    elif lengths == "all_but_one":  # every position but the first is padding, and one row full
        lens = torch.ones(B, dtype=torch.long)
        lens[-1] = S
    else:
        lens = torch.randint(1, S + 1, (B,))
        lens[0] = S
    return (r(B, E), r(B, H) if feed else None, r(L, B, H), r(L, B, H), weights, r(B, S, M), lens)


def _reference(x, feed, h, c, weights, memory, lens, to=None):
    cast = (lambda t: t if t is None or to is None else t.to(to))  # noqa: E731
    lstm = [tuple(cast(t) for t in w) for w in weights.lstm_weights]
    params = {k: cast(v) for k, v in weights.attn_params.items()}
    return reference_step(cast(x), cast(feed), cast(h), cast(c), lstm, weights.attn_kind, params,
                          cast(weights.w_out), cast(weights.b_out), cast(memory), lens)


def assert_step_matches_reference(case, backend, dtype=torch.float32, precomputed_keys=True):
    """Outputs vs the reference. fp64: the reference in fp64. fp32: the reference run in fp64, with the fp32
    tolerance floor or three times the fp32 reference's own error, whichever is larger (the error of a
    wide fp32 GEMM depends on its summation order, which differs between kernels). precomputed_keys: True
    (attention_keys), False (none: the op makes them), or "project_query" (general's projected query
    against memory itself)."""
    x, feed, h, c, weights, memory, lens = case
    keys = (attention_keys(weights.attn_kind, weights.attn_params, memory,
                           project_query=precomputed_keys == "project_query") if precomputed_keys else None)
    got = decoder_step(x, feed, h, c, weights, memory, lens, keys=keys, backend=backend)
    exact = _reference(*case, to=torch.float64)
    own = _reference(*case) if dtype == torch.float32 else exact
    rtol, atol = tolerance(dtype)
    for name, a, e64, e in zip(("out", "h_new", "c_new", "attn"), got, exact, own):
        own_err = float((e.double() - e64).abs().max()) if e.numel() else 0.0
        assert_close(a.double(), e64, name, rtol=rtol, atol=max(atol, 3 * own_err))
    if lens is not None:  # padding gets exactly zero weight
        pad = torch.arange(memory.shape[1], device=memory.device) >= lens.unsqueeze(1)
        assert (got[3][pad] == 0).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("feed", [True, False])
@pytest.mark.parametrize("lengths", ["mixed", "none", "one", "all_but_one"])
def test_cpu_matches_reference(kind, L, feed, lengths):
    with torch.no_grad():
        assert_step_matches_reference(make_step_case(kind=kind, L=L, feed=feed, lengths=lengths), "cpu")


ODD_SIZES = [
    dict(B=1, E=3, H=5, M=11, S=1, L=1, A=3, bias=False),
    dict(B=17, E=13, H=33, M=19, S=23, L=2, A=7, bias=True),
    dict(B=64, E=16, H=40, M=24, S=50, L=1, A=16, bias=True),
    # weights large enough for the kernels of a real step (csrc/cpu/decoder_step.cpp, step_linear):
    # B4 the multi-threaded rowwise GEMV (row and column tails), B9 small_gemm's cached panels for layer 0
    # (and the attention rows split over threads, S 200), B40 oneDNN's packed GEMM
    dict(B=4, E=200, H=157, M=160, S=37, L=1, A=64, bias=True),
    dict(B=9, E=200, H=157, M=160, S=200, L=2, A=64, bias=True),
    dict(B=40, E=200, H=157, M=160, S=20, L=1, A=64, bias=True),
]


@pytest.mark.parametrize("case", ODD_SIZES, ids=lambda c: case_id(**c))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cpu_odd_sizes(case, kind, dtype):
    with torch.no_grad():
        assert_step_matches_reference(make_step_case(**case, kind=kind, dtype=dtype), "cpu", dtype)


@pytest.mark.parametrize("env", [{"ATEN_CPU_CAPABILITY": "default"}, {"ATEN_CPU_CAPABILITY": "avx2"},
                                 {"OMP_NUM_THREADS": "1"}], ids=["capability-default", "capability-avx2", "one-thread"])
def test_every_kernel_build_matches_reference(env):
    """The step's vectorised kernels are compiled per CPU capability: run the comparisons above on the other
    builds (and on one thread) in a fresh process, where the environment variable takes effect."""
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          "test_cpu_odd_sizes or test_cpu_matches_reference or test_general_projected_query"], env=dict(os.environ, **env),
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert " passed" in res.stdout and "failed" not in res.stdout


@pytest.mark.parametrize("case", ODD_SIZES, ids=lambda c: case_id(**c))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_general_projected_query_matches_reference(case, dtype):
    """General attention scored as (W h)·m_s: the query projected by w, memory itself as the keys."""
    with torch.no_grad():
        assert_step_matches_reference(make_step_case(**case, kind="general", dtype=dtype), "cpu", dtype,
                                      precomputed_keys="project_query")


def test_keys_computed_when_not_given():
    with torch.no_grad():
        assert_step_matches_reference(make_step_case(kind="additive", L=2), "cpu", precomputed_keys=False)


def test_auto_is_cpu_and_reference_backend():
    x, feed, h, c, weights, memory, lens = make_step_case()
    with torch.no_grad():
        a = decoder_step(x, feed, h, c, weights, memory, lens)
        b = decoder_step(x, feed, h, c, weights, memory, lens, backend="cpu")
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert_step_matches_reference((x, feed, h, c, weights, memory, lens), "reference")


@pytest.mark.parametrize("B", [1, 8, 40])
def test_weight_update_in_place_is_seen(B):
    """The C++ op caches packed weights (small_gemm's panels at B8, oneDNN's layout at B40) keyed on the
    weight's version: an in-place update must repack. Layer 0's weight is large enough for those paths."""
    case = make_step_case(B=B, E=200, H=157, M=160, S=20, L=2)
    with torch.no_grad():
        assert_step_matches_reference(case, "cpu")
        w = case[4]
        w.w_cat[0].mul_(-0.5)
        w.w_out.add_(0.25)
        w.lstm_weights[0][0].copy_(w.w_cat[0][:, :w.lstm_weights[0][0].shape[1]])
        w.lstm_weights[0][1].copy_(w.w_cat[0][:, w.lstm_weights[0][0].shape[1]:])
        assert_step_matches_reference(case, "cpu")


def test_opcheck():
    x, feed, h, c, weights, memory, lens = make_step_case(kind="additive", L=2, dtype=torch.float64)
    keys = attention_keys("additive", weights.attn_params, memory)
    p = weights.attn_params
    args = (x, feed, h, c, list(weights.w_cat), list(weights.b_cat), "additive", keys.keys, 1.0, p["w_query"],
            p["b_query"], p["v"], memory, lens, weights.w_out, weights.b_out)
    torch.library.opcheck(torch.ops.fused_s2s.decoder_step.default, args)


def test_requires_grad_is_refused():
    x, feed, h, c, weights, memory, lens = make_step_case()
    h.requires_grad_(True)
    with pytest.raises(RuntimeError, match="inference only"):
        decoder_step(x, feed, h, c, weights, memory, lens)
    keys = attention_keys("general", weights.attn_params, memory)
    args = (x, feed, h, c, list(weights.w_cat), list(weights.b_cat), "dot", keys.keys, 1.0, None, None, None, memory,
            lens, weights.w_out, weights.b_out)
    with pytest.raises(RuntimeError, match="inference only"):  # the op itself, called directly
        torch.ops.fused_s2s.decoder_step(*args)
    with torch.no_grad():
        decoder_step(x, feed, h, c, weights, memory, lens)  # fine without grad mode
        torch.ops.fused_s2s.decoder_step(*args)


@pytest.mark.parametrize("bad, match", [
    ("lengths_zero", r"every memory length must be in \[1, 9\]"),
    ("lengths_long", r"every memory length must be in \[1, 9\]"),
    ("lengths_float", "memory_lengths must be an integer tensor"),
    ("lengths_size", r"expected memory_lengths of size \[3\]"),
    ("batch", r"expected memory of size \[3, S, M\]"),
    ("x_size", r"expected layer 0 weight \[w_ih \| w_hh\] of size"),
    ("feed_size", r"expected feed of size \[3, 6\]"),
    ("dtype", "must have the type"),
    ("memory_size", r"expected w_out of size \[6, 16\]"),
])
def test_bad_input(bad, match):
    x, feed, h, c, weights, memory, lens = make_step_case()
    if bad == "lengths_zero":
        lens[1] = 0
    elif bad == "lengths_long":
        lens[1] = 10
    elif bad == "lengths_float":
        lens = lens.float()
    elif bad == "lengths_size":
        lens = lens[:2]
    elif bad == "batch":
        memory = memory[:2]
    elif bad == "x_size":
        x = torch.randn(3, 4)
    elif bad == "feed_size":
        feed = torch.randn(3, 5)
    elif bad == "dtype":
        x = x.double()
    elif bad == "memory_size":
        memory = torch.randn(3, 9, 10)
    keys = attention_keys("general", weights.attn_params, torch.randn(3, 9, 7)) if bad == "memory_size" else None
    with torch.no_grad(), pytest.raises((RuntimeError, ValueError), match=match):
        decoder_step(x, feed, h, c, weights, memory, lens, keys=keys, backend="cpu")


def test_projected_query_of_the_wrong_size_is_refused():
    x, feed, h, c, weights, memory, lens = make_step_case(kind="general")
    w = weights.attn_params["w"]
    args = (x, feed, h, c, list(weights.w_cat), list(weights.b_cat), "dot", memory, 1.0, w[:, :-1], None, None,
            memory, lens, weights.w_out, weights.b_out)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"expected w_query of size"):
        torch.ops.fused_s2s.decoder_step(*args)


def test_lengths_on_other_device_is_refused():
    x, feed, h, c, weights, memory, lens = make_step_case()
    with torch.no_grad(), pytest.raises(RuntimeError, match="memory_lengths must be on cpu"):
        decoder_step(x, feed, h, c, weights, memory, lens.to("meta"), backend="cpu")


def test_unknown_attention_kind():
    with pytest.raises(ValueError, match="unknown attention kind 'luong'"):
        prepare_decoder_weights([], "luong", {}, torch.randn(2, 4), None)


def test_auto_runs_dtypes_the_kernel_does_not_take_on_the_reference():
    x, feed, h, c, weights, memory, lens = make_step_case(dtype=torch.bfloat16)
    with torch.no_grad():
        got = decoder_step(x, feed, h, c, weights, memory, lens)
        want = reference_step(x, feed, h, c, weights.lstm_weights, weights.attn_kind, weights.attn_params,
                              weights.w_out, weights.b_out, memory, lens)
        for a, e in zip(got, want):
            assert a.dtype == torch.bfloat16 and torch.equal(a, e)
        with pytest.raises(RuntimeError, match="supports float32 and float64"):
            decoder_step(x, feed, h, c, weights, memory, lens, backend="cpu")
