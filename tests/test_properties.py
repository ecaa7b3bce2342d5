"""Property tests (hypothesis): shapes and options drawn at random, FusedLSTM on the C++ backend against
nn.LSTM (outputs, final states and every gradient) and the attention op against the reference.

The examples are derandomized (a fixed seed, so CI replays the same ones) and bounded: the "ci" profile runs
a few dozen per test. FUSED_S2S_HYPOTHESIS_PROFILE=dev draws 500 per test, with a fresh seed each run, for
local runs that look for new failures.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fused_s2s import FusedLSTM  # noqa: E402
from fused_s2s.ops import lstm as ops_lstm  # noqa: E402
from fused_s2s.ops.attention import KINDS, attention  # noqa: E402
from fused_s2s.reference.attention import attention as reference_attention  # noqa: E402
from tests.utils import assert_close  # noqa: E402

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=500, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FUSED_S2S_HYPOTHESIS_PROFILE", "ci"))

pytestmark = [pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
              pytest.mark.skipif(ops_lstm._C_ERROR is not None, reason=f"C++ backend: {ops_lstm._C_ERROR}")]

LENGTHS = ("none", "all_equal", "all_one", "packed_sorted", "packed_unsorted", "lengths_kw")


@st.composite
def lstm_cases(draw):
    hidden = draw(st.integers(1, 9))
    return dict(
        input_size=draw(st.integers(1, 9)), hidden=hidden,
        proj=draw(st.sampled_from([0] + list(range(1, hidden)))),
        layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()), batch_first=draw(st.booleans()),
        bias=draw(st.booleans()), steps=draw(st.integers(1, 8)), batch=draw(st.integers(1, 5)),
        lengths=draw(st.sampled_from(LENGTHS)), hx=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])), seed=draw(st.integers(0, 2**31 - 1)))


def draw_lengths(kind: str, steps: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "all_equal":
        return torch.full((batch,), steps, dtype=torch.long)
    if kind == "all_one":
        return torch.ones(batch, dtype=torch.long)
    lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
    lengths[0] = steps
    return lengths.sort(descending=True).values if kind == "packed_sorted" else lengths[torch.randperm(batch, generator=gen)]


@given(lstm_cases())
def test_fused_lstm_matches_nn_lstm(c):
    gen = torch.Generator().manual_seed(c["seed"])
    torch.manual_seed(c["seed"])
    dt = c["dtype"]
    kw = dict(num_layers=c["layers"], bias=c["bias"], batch_first=c["batch_first"],
              bidirectional=c["bidirectional"], proj_size=c["proj"], dtype=dt)
    ref = nn.LSTM(c["input_size"], c["hidden"], **kw)
    ours = FusedLSTM(c["input_size"], c["hidden"], **kw, backend="cpu")
    ours.load_state_dict(ref.state_dict())
    T, B = c["steps"], c["batch"]
    x = torch.randn((B, T, c["input_size"]) if c["batch_first"] else (T, B, c["input_size"]), dtype=dt,
                    generator=gen).requires_grad_()
    D = 2 if c["bidirectional"] else 1
    hx = None
    if c["hx"]:
        hx = (torch.randn(c["layers"] * D, B, c["proj"] or c["hidden"], dtype=dt, generator=gen).requires_grad_(),
              torch.randn(c["layers"] * D, B, c["hidden"], dtype=dt, generator=gen).requires_grad_())
    lengths = None if c["lengths"] == "none" else draw_lengths(c["lengths"], T, B, gen)

    def run(module, fused: bool):
        if lengths is None:
            return module(x, hx)
        if fused and c["lengths"] == "lengths_kw":
            return module(x, hx, lengths=lengths)
        packed = pack_padded_sequence(x, lengths, batch_first=c["batch_first"],
                                      enforce_sorted=c["lengths"] == "packed_sorted")
        y, state = module(packed, hx)
        assert isinstance(y, PackedSequence)
        if c["lengths"] == "lengths_kw":  # nn.LSTM's answer to a padded batch with lengths
            return pad_packed_sequence(y, batch_first=c["batch_first"], total_length=T)[0], state
        return y.data, state

    (y_ref, (h_ref, c_ref)), (y, (h, cn)) = run(ref, False), run(ours, True)
    for name, a, e in (("output", y, y_ref), ("h_n", h, h_ref), ("c_n", cn, c_ref)):
        assert_close(a, e, name)
    ups = [torch.randn(t.shape, dtype=dt, generator=gen) for t in (y_ref, h_ref, c_ref)]
    wrt = [x] + (list(hx) if hx else [])
    names = ["x"] + (["h0", "c0"] if hx else []) + [n for n, _ in ref.named_parameters()]

    def grads(module, outs):
        loss = sum((o * u).sum() for o, u in zip(outs, ups))
        return torch.autograd.grad(loss, wrt + list(module.parameters()))

    for name, a, e in zip(names, grads(ours, (y, h, cn)), grads(ref, (y_ref, h_ref, c_ref))):
        assert_close(a, e, f"grad {name}")


@st.composite
def attention_cases(draw):
    kind = draw(st.sampled_from(KINDS))
    memory_size = draw(st.integers(1, 12))
    query_size = memory_size if kind in ("dot", "scaled_dot") else draw(st.integers(1, 12))
    return dict(kind=kind, batch=draw(st.integers(1, 5)), steps=draw(st.integers(0, 5)),
                source=draw(st.integers(1, 9)), query_size=query_size, memory_size=memory_size,
                score_size=draw(st.integers(1, 8)), masked=draw(st.booleans()),
                dtype=draw(st.sampled_from([torch.float32, torch.float64])), seed=draw(st.integers(0, 2**31 - 1)))


@given(attention_cases())
def test_attention_op_matches_reference(c):
    gen = torch.Generator().manual_seed(c["seed"])
    dt = c["dtype"]
    r = lambda *shape: torch.randn(*shape, dtype=dt, generator=gen).requires_grad_()  # noqa: E731
    B, S, Dq, M, A = c["batch"], c["source"], c["query_size"], c["memory_size"], c["score_size"]
    query = r(B, c["steps"], Dq) if c["steps"] else r(B, Dq)  # steps 0: the single-step 2-D form
    memory = r(B, S, M)
    params = {"general": lambda: {"w": r(M, Dq)},
              "additive": lambda: {"w_query": r(A, Dq), "b_query": r(A), "w_memory": r(A, M), "v": r(A)}}.get(
        c["kind"], dict)()
    lengths = torch.randint(1, S + 1, (B,), generator=gen) if c["masked"] else None
    ctx, w = attention(query, memory, lengths, c["kind"], params, return_weights=True, backend="cpu")
    ctx_r, w_r = reference_attention(query, memory, lengths, c["kind"], params, return_weights=True)
    assert_close(ctx, ctx_r, "context")
    assert_close(w, w_r, "weights")
    inputs = [query, memory] + list(params.values())
    g = torch.randn(ctx_r.shape, dtype=dt, generator=gen)
    for k, (a, e) in enumerate(zip(torch.autograd.grad(ctx, inputs, g), torch.autograd.grad(ctx_r, inputs, g))):
        assert_close(a, e, f"grad of input {k}")
