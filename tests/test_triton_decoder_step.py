"""The Triton fused decoder step (backend="triton") against the reference step: every attention kind, 1 and 2
layers, input feeding on/off, lengths (full, 1, all-but-one masked), odd sizes, fp32; bad input.

Runs under TRITON_INTERPRET=1 on CPU tensors in its own process (scripts/test.sh), or on CUDA tensors with a
GPU. Outputs start NaN-filled (conftest sets FUSED_S2S_POISON_BUFFERS=1), so an unwritten element fails."""
from __future__ import annotations

import pytest
import torch

from fused_s2s.ops.decoder_step import attention_keys, decoder_step, prepare_decoder_weights
from tests.test_decoder_step import KINDS, assert_step_matches_reference, make_step_case
from fused_s2s.reference.decoder import decoder_step as reference_step
from tests.utils import assert_close, case_id

pytestmark = pytest.mark.triton_interpret
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _to_device(case):
    if DEVICE == "cpu":
        return case
    x, feed, h, c, w, memory, lens = case
    mv = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    weights = prepare_decoder_weights([tuple(mv(t) for t in layer) for layer in w.lstm_weights], w.attn_kind,
                                      {k: mv(v) for k, v in w.attn_params.items()}, mv(w.w_out), mv(w.b_out))
    return mv(x), mv(feed), mv(h), mv(c), weights, mv(memory), mv(lens)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("feed", [True, False])
@pytest.mark.parametrize("lengths", ["mixed", "none", "all_but_one"])
def test_triton_matches_reference(kind, L, feed, lengths):
    with torch.no_grad():
        assert_step_matches_reference(_to_device(make_step_case(kind=kind, L=L, feed=feed, lengths=lengths)),
                                      "triton")


@pytest.mark.parametrize("case", [
    dict(B=1, E=3, H=5, M=11, S=1, L=1, A=3, bias=False, lengths="one"),
    dict(B=19, E=13, H=33, M=37, S=70, L=2, A=7, bias=True, lengths="mixed"),  # two batch and S tiles, odd H
], ids=lambda c: case_id(**c))
@pytest.mark.parametrize("kind", ["general", "additive"])
def test_triton_odd_sizes(case, kind):
    with torch.no_grad():
        assert_step_matches_reference(_to_device(make_step_case(**case, kind=kind)), "triton")


@pytest.mark.parametrize("case", [
    dict(B=1, E=3, H=5, M=11, S=1, L=1, A=3, bias=False, lengths="one"),
    dict(B=19, E=13, H=33, M=37, S=70, L=2, A=7, bias=True, lengths="mixed"),
], ids=lambda c: case_id(**c))
def test_triton_general_projected_query(case):
    """General attention scored as (W h)·m_s (the query projected by w, memory itself as the keys)."""
    with torch.no_grad():
        assert_step_matches_reference(_to_device(make_step_case(**case, kind="general")), "triton",
                                      precomputed_keys="project_query")


@pytest.mark.parametrize("bad, match", [
    ("lengths", r"every memory length must be in \[1, 9\]"),
    ("feed", r"expected feed of size \[3, 6\]"),
    ("dtype", "support float32, bfloat16 and float16"),
    ("batch", "batch sizes disagree"),
])
def test_triton_bad_input(bad, match):
    x, feed, h, c, weights, memory, lens = make_step_case()
    if bad == "lengths":
        lens[0] = 10
    elif bad == "feed":
        feed = feed[:, :5]
    elif bad == "dtype":
        x = x.double()
    elif bad == "batch":
        memory = memory[:2]
    with torch.no_grad(), pytest.raises(RuntimeError, match=match):
        decoder_step(x, feed, h, c, weights, memory, lens, backend="triton")


def test_triton_step_opcheck():
    x, feed, h, c, weights, memory, lens = _to_device(make_step_case(kind="additive", L=2))
    keys = attention_keys("additive", weights.attn_params, memory)
    p = weights.attn_params
    args = (x, feed, h, c, list(weights.w_cat), list(weights.b_cat), "additive", keys.keys, 1.0, p["w_query"],
            p["b_query"], p["v"], memory, lens, weights.w_out, weights.b_out)
    torch.library.opcheck(torch.ops.fused_s2s.triton_decoder_step.default, args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", ["general", "additive"])
@pytest.mark.parametrize("L", [1, 2])
def test_triton_16bit_step_computes_in_fp32(dtype, kind, L):
    """16-bit tensors: the fp32 reference on the same values, rounded to the dtype (layer 2 reads layer 1's h
    rounded to the dtype, as a 16-bit model does, so the bound is the dtype's tolerance)."""
    x, feed, h, c, w, memory, lens = _to_device(make_step_case(kind=kind, L=L, dtype=dtype))
    up = lambda t: None if t is None else t.float()  # noqa: E731
    with torch.no_grad():
        got = decoder_step(x, feed, h, c, w, memory, lens, backend="triton")
        want = reference_step(up(x), up(feed), up(h), up(c), [tuple(up(t) for t in layer) for layer in w.lstm_weights],
                              w.attn_kind, {k: up(p) for k, p in w.attn_params.items()}, up(w.w_out), up(w.b_out),
                              up(memory), lens)
    for name, a, e in zip(("out", "h_new", "c_new", "attn"), got, want):
        assert a.dtype == dtype, name
        assert_close(a, e.to(dtype), name)
