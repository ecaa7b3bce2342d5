"""FusedLSTM against torch.nn.LSTM with the same weights: outputs, final states and every gradient.

One table of cases covers the layouts nn.LSTM accepts (batched / unbatched, batch_first, PackedSequence
sorted and unsorted, our lengths=) crossed with the configurations (layers, directions, proj_size, bias,
given or missing h0/c0, dropout in eval mode). Each case runs forward and backward with random upstream
gradients on both modules and compares everything. Sizes are odd on purpose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fused_s2s
from fused_s2s import FusedLSTM, FusedLSTMEncoder
from fused_s2s.ops import lstm as ops_lstm
from fused_s2s.reference import lstm as reference
from tests.utils import assert_close, case_id

# nn.LSTM warns on every projected CPU call that it falls back from oneDNN; that is its business, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

T, B, I, H, P = 7, 3, 5, 6, 4  # P: proj_size when a case uses a projection (< H)


@pytest.fixture(params=["reference", "cpu"])
def backend(request):
    if request.param == "cpu" and ops_lstm._C_ERROR is not None:
        pytest.skip(f"backend 'cpu' unavailable: {ops_lstm._C_ERROR}")
    return request.param


@dataclass(frozen=True)
class Case:
    layout: str = "batched"  # batched | unbatched | packed | packed_unsorted | lengths
    layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    proj: bool = False
    bias: bool = True
    hx: bool = False
    dropout: float = 0.0  # run in eval mode when > 0
    steps: int = T

    @property
    def id(self) -> str:
        return case_id(**{self.layout: True, "L": self.layers, "bidir": self.bidirectional,
                          "bf": self.batch_first, "proj": self.proj, "bias": self.bias, "hx": self.hx,
                          "drop": self.dropout, "T": self.steps})


CASES = [
    Case(),
    Case(bias=False, hx=True),
    Case(layers=2, bidirectional=True, hx=True),
    Case(layers=3, batch_first=True, hx=True),
    Case(layers=2, bidirectional=True, proj=True, hx=True),
    Case(proj=True, bias=False, batch_first=True),
    Case(layers=2, bidirectional=True, steps=1, hx=True),
    Case("unbatched", layers=2, bidirectional=True, hx=True),
    Case("unbatched", proj=True, batch_first=True),
    Case("packed", layers=2, bidirectional=True, hx=True),
    # OpenNMT-py's encoder path: pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
    Case("packed_unsorted", layers=2, bidirectional=True, batch_first=True),
    Case("packed_unsorted", proj=True, batch_first=True, hx=True),
    Case("packed_unsorted", layers=3, bias=False, hx=True),
    Case("lengths", layers=2, bidirectional=True, batch_first=True, hx=True),
    Case("lengths", layers=3, proj=True),
    Case("lengths", layers=2, bidirectional=True, proj=True, dropout=0.4, hx=True),
    Case(layers=3, bidirectional=True, dropout=0.3, hx=True),
]


def make_pair(case: Case, backend: str):
    kw = dict(num_layers=case.layers, bias=case.bias, batch_first=case.batch_first, dropout=case.dropout,
              bidirectional=case.bidirectional, proj_size=P if case.proj else 0)
    ref = nn.LSTM(I, H, **kw)
    fused = FusedLSTM(I, H, **kw, backend=backend)
    fused.load_state_dict(ref.state_dict(), strict=True)
    if case.dropout > 0:
        ref.eval()
        fused.eval()
    return ref, fused


def random_lengths(steps: int, sort: bool) -> torch.Tensor:
    lengths = torch.randint(1, steps + 1, (B,))
    lengths[torch.randint(0, B, ())] = steps  # one full-length sequence; the rest anywhere in [1, T]
    return lengths.sort(descending=True).values if sort else lengths


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_nn_lstm(case: Case, backend: str):
    ref, fused = make_pair(case, backend)
    D = 2 if case.bidirectional else 1
    h_out = P if case.proj else H
    batched = case.layout != "unbatched"
    steps = case.steps
    if batched:
        x = torch.randn((B, steps, I) if case.batch_first else (steps, B, I), requires_grad=True)
        state_shape = (case.layers * D, B)
    else:
        x = torch.randn(steps, I, requires_grad=True)
        state_shape = (case.layers * D,)
    hx = None
    if case.hx:
        hx = (torch.randn(*state_shape, h_out, requires_grad=True), torch.randn(*state_shape, H, requires_grad=True))

    lengths = None
    if case.layout in ("packed", "packed_unsorted", "lengths"):
        lengths = random_lengths(steps, sort=case.layout == "packed")

    def run(module, use_lengths_kw: bool):
        """Forward, then a scalar loss against fixed random upstream grads; returns (outputs, loss)."""
        if case.layout in ("packed", "packed_unsorted") or (case.layout == "lengths" and not use_lengths_kw):
            packed = pack_padded_sequence(x, lengths, batch_first=case.batch_first,
                                          enforce_sorted=case.layout == "packed")
            out, (h_n, c_n) = module(packed, hx)
            assert isinstance(out, PackedSequence)
            if case.layout == "lengths":  # nn.LSTM's packed result, padded back: what lengths= must equal
                out, _ = pad_packed_sequence(out, batch_first=case.batch_first, total_length=steps)
            else:
                assert torch.equal(out.batch_sizes, packed.batch_sizes)
                for name in ("sorted_indices", "unsorted_indices"):
                    a, b = getattr(out, name), getattr(packed, name)
                    assert (a is None and b is None) or torch.equal(a, b), name
                out = out.data
        elif case.layout == "lengths":
            out, (h_n, c_n) = module(x, hx, lengths=lengths)
        else:
            out, (h_n, c_n) = module(x, hx)
        return out, h_n, c_n

    expected = run(ref, use_lengths_kw=False)
    actual = run(fused, use_lengths_kw=True)
    for name, a, e in zip(("output", "h_n", "c_n"), actual, expected):
        assert_close(a, e, name)

    upstream = [torch.randn_like(e) for e in expected]
    wrt = [x] + (list(hx) if hx is not None else [])
    names = ["d_input"] + (["d_h0", "d_c0"] if hx is not None else [])

    def grads(module, outs):
        params = [p for _, p in module.named_parameters()]
        loss = sum((o * g).sum() for o, g in zip(outs, upstream))
        return torch.autograd.grad(loss, wrt + params)

    param_names = [f"d_{n}" for n, _ in ref.named_parameters()]
    for name, a, e in zip(names + param_names, grads(fused, actual), grads(ref, expected)):
        assert_close(a, e, name)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_padding_is_zero_and_full_lengths_equal_no_lengths(bidirectional: bool, backend: str):
    fused = FusedLSTM(I, H, num_layers=2, bidirectional=bidirectional, batch_first=True, backend=backend)
    x = torch.randn(B, T, I)
    lengths = torch.tensor([T, 2, 5])
    y, _ = fused(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(y[b, n:] == 0)
    full, (h_full, c_full) = fused(x, lengths=torch.full((B,), T, dtype=torch.int32))
    plain, (h_plain, c_plain) = fused(x)
    assert_close(full, plain, "output")
    assert_close(h_full, h_plain, "h_n")
    assert_close(c_full, c_plain, "c_n")


def test_empty_batch_like_nn_lstm(backend: str):
    ref = nn.LSTM(I, H, num_layers=2, bidirectional=True)
    fused = FusedLSTM(I, H, num_layers=2, bidirectional=True, backend=backend)
    x = torch.randn(T, 0, I)
    y, (h, c) = fused(x)
    y_ref, (h_ref, c_ref) = ref(x)
    assert y.shape == y_ref.shape and h.shape == h_ref.shape and c.shape == c_ref.shape


# --------------------------------------------------------------------------------------------------------
# parameters, state_dict, initialisation

CONFIGS = [dict(), dict(num_layers=3, bidirectional=True), dict(num_layers=2, proj_size=P, bias=False),
           dict(num_layers=2, bidirectional=True, proj_size=P)]


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: case_id(**kw) or "default")
def test_parameters_and_state_dict_round_trip(kw):
    ref = nn.LSTM(I, H, **kw)
    fused = FusedLSTM(I, H, **kw)
    assert [(n, p.shape) for n, p in fused.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert fused._flat_weights_names == ref._flat_weights_names
    assert [[tuple(p.shape) for p in ws] for ws in fused.all_weights] == \
        [[tuple(p.shape) for p in ws] for ws in ref.all_weights]

    fused.load_state_dict(ref.state_dict(), strict=True)
    for (n, a), (_, e) in zip(fused.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, e), n
    other = nn.LSTM(I, H, **kw)
    fresh = FusedLSTM(I, H, **kw)
    other.load_state_dict(fresh.state_dict(), strict=True)
    for (n, a), (_, e) in zip(other.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, e), n


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: case_id(**kw) or "default")
def test_init_same_as_nn_lstm(kw):
    """Same registration order and init: the same seed gives bit-identical weights; all within 1/sqrt(H)."""
    torch.manual_seed(1234)
    ref = nn.LSTM(I, H, **kw)
    torch.manual_seed(1234)
    fused = FusedLSTM(I, H, **kw)
    bound = 1 / math.sqrt(H)
    for (n, a), (_, e) in zip(fused.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, e), n
        assert a.abs().max() <= bound and a.abs().max() > 0.5 * bound, n


def test_repr_like_nn_lstm():
    kw = dict(num_layers=2, bias=False, batch_first=True, dropout=0.25, bidirectional=True, proj_size=P)
    assert repr(FusedLSTM(I, H, **kw)) == repr(nn.LSTM(I, H, **kw)).replace("LSTM", "FusedLSTM", 1)
    assert repr(FusedLSTM(I, H, backend="reference")) == "FusedLSTM(5, 6, backend='reference')"
    assert isinstance(FusedLSTMEncoder(I, H), FusedLSTM)
    assert not isinstance(FusedLSTM(I, H), nn.LSTM)
    FusedLSTM(I, H).flatten_parameters()  # accepted, does nothing


def test_device_dtype_and_to():
    fused = FusedLSTM(I, H, num_layers=2, dtype=torch.float64, backend="reference")
    assert all(p.dtype == torch.float64 for p in fused.parameters())
    y, (h, c) = fused(torch.randn(T, B, I, dtype=torch.float64))
    assert y.dtype == h.dtype == c.dtype == torch.float64
    fused.float()
    assert all(p.dtype == torch.float32 for p in fused._flat_weights)
    assert fused(torch.randn(T, B, I))[0].dtype == torch.float32


def test_autocast_runs_in_autocast_dtype_like_nn_lstm(backend: str):
    ref = nn.LSTM(I, H, num_layers=2, bidirectional=True)
    fused = FusedLSTM(I, H, num_layers=2, bidirectional=True, backend=backend)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = ref(x)
        actual = fused(x)
    for name, a, e in zip(("output", "h_n", "c_n"), (actual[0], *actual[1]), (expected[0], *expected[1])):
        assert a.dtype == e.dtype == torch.bfloat16, name
        assert_close(a, e, name, rtol=4e-2, atol=4e-2)  # 2x the bf16 floor: two bf16 programs, not one vs fp64


def test_functional_call_uses_the_given_weights(backend: str):
    fused = FusedLSTM(I, H, num_layers=2, backend=backend)
    ref = nn.LSTM(I, H, num_layers=2)
    x = torch.randn(T, B, I)
    params = {n: p.detach().clone() for n, p in ref.named_parameters()}
    y, _ = torch.func.functional_call(fused, params, (x,))
    assert_close(y, ref(x)[0], "output")


# --------------------------------------------------------------------------------------------------------
# dropout

def test_dropout_training_mode(backend: str):
    fused = FusedLSTM(I, H, num_layers=3, dropout=0.5, bidirectional=True, backend=backend)
    x = torch.randn(T, B, I)
    a, (ha, ca) = fused(x)
    b, _ = fused(x)
    assert not torch.allclose(a, b), "two training-mode calls with dropout=0.5 gave the same output"
    fused.eval()
    e1, _ = fused(x)
    e2, _ = fused(x)
    assert torch.equal(e1, e2)
    assert not torch.allclose(a, e1)

    # Dropout sits between layers exactly where the reference stack puts it: same seed, same masks.
    torch.manual_seed(7)
    fused.train()
    y, (h, c) = fused(x)
    torch.manual_seed(7)
    weights = [tuple(None if n is None else getattr(fused, n) for n in names) for names in fused._op_weight_names]
    y_ref, h_ref, c_ref = reference.lstm(x, None, None, weights, bidirectional=True, dropout=0.5, training=True)
    assert_close(y, y_ref, "output")
    assert_close(h, h_ref, "h_n")
    assert_close(c, c_ref, "c_n")


def test_dropout_zero_train_equals_eval(backend: str):
    fused = FusedLSTM(I, H, num_layers=2, dropout=0.0, backend=backend)
    x = torch.randn(T, B, I)
    y_train, _ = fused(x)
    y_eval, _ = fused.eval()(x)
    assert torch.equal(y_train, y_eval)


# --------------------------------------------------------------------------------------------------------
# torch.compile

class _Tiny(nn.Module):
    def __init__(self, backend: str):
        super().__init__()
        self.proj = nn.Linear(3, I)
        self.lstm = FusedLSTM(I, H, num_layers=2, bidirectional=True, batch_first=True, backend=backend)
        self.head = nn.Linear(2 * H, 2)

    def forward(self, x, lengths=None):
        y, (h, c) = self.lstm(torch.tanh(self.proj(x)), lengths=lengths)
        return self.head(y).sum() + h.square().sum() + c.sum()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # raised inside torch.compile
@pytest.mark.parametrize("with_lengths", [False, True], ids=["padded", "lengths"])
def test_torch_compile_fullgraph_matches_eager(with_lengths: bool, backend: str):
    if with_lengths and backend == "reference":
        pytest.skip("the reference oracle reads lengths to validate them (data-dependent), so it does not "
                    "compile with fullgraph=True; FusedLSTM itself validates lengths only in eager mode")
    torch._dynamo.reset()
    model = _Tiny(backend)
    x = torch.randn(3, 4, 3)
    lengths = torch.tensor([2, 4, 1]) if with_lengths else None
    eager = model(x, lengths)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x, lengths)
    grads = torch.autograd.grad(out, list(model.parameters()))
    assert_close(out, eager, "loss")
    for (name, _), a, e in zip(model.named_parameters(), grads, eager_grads):
        assert_close(a, e, f"d_{name}")


def test_public_names():
    assert fused_s2s.FusedLSTM is FusedLSTM
    assert callable(fused_s2s.replace_lstm)
    assert callable(fused_s2s.ops.lstm_layer)
    assert callable(fused_s2s.reference.lstm.lstm)
