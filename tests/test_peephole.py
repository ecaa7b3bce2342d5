"""FusedLSTM(peephole=True): the C++ kernels against the plain-PyTorch reference (outputs, final states and every
gradient over the layouts FusedLSTM takes; float64 gradcheck; opcheck), the reference against nn.LSTM when the
peephole weights are zero, the parameters it adds, and its errors."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from fused_s2s import FusedLSTM
from fused_s2s.ops import lstm as ops_lstm
from fused_s2s.ops.peephole import peephole_lstm_layer
from fused_s2s.reference import lstm as reference
from tests.utils import assert_close, case_id

pytestmark = pytest.mark.skipif(ops_lstm._C_ERROR is not None, reason=f"C++ backend: {ops_lstm._C_ERROR}")
T, B, I, H = 7, 3, 5, 6

CASES = [dict(layout="batched"), dict(layout="batched", layers=2, bidirectional=True, hx=True),
         dict(layout="unbatched", hx=True), dict(layout="packed_unsorted", layers=2, bidirectional=True),
         dict(layout="lengths", layers=2, bidirectional=True, batch_first=True, hx=True),
         dict(layout="batched", bias=False, batch_first=True)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: case_id(**c))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cpu_kernels_match_the_reference(case, dtype):
    layers, bidir = case.get("layers", 1), case.get("bidirectional", False)
    kw = dict(num_layers=layers, bidirectional=bidir, batch_first=case.get("batch_first", False),
              bias=case.get("bias", True), peephole=True, dtype=dtype)
    ours, ref = FusedLSTM(I, H, **kw, backend="cpu"), FusedLSTM(I, H, **kw, backend="reference")
    ref.load_state_dict(ours.state_dict())
    D = 2 if bidir else 1
    if case["layout"] == "unbatched":
        x = torch.randn(T, I, dtype=dtype, requires_grad=True)
        state = (layers * D, H)
    else:
        x = torch.randn((B, T, I) if kw["batch_first"] else (T, B, I), dtype=dtype, requires_grad=True)
        state = (layers * D, B, H)
    hx = tuple(torch.randn(state, dtype=dtype, requires_grad=True) for _ in range(2)) if case.get("hx") else None
    lengths = torch.tensor([T, 2, 5])

    def run(m):
        if case["layout"] == "packed_unsorted":
            out, (h, c) = m(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
            assert isinstance(out, PackedSequence)
            out = out.data
        elif case["layout"] == "lengths":
            out, (h, c) = m(x, hx, lengths=lengths)
        else:
            out, (h, c) = m(x, hx)
        return out, h, c

    actual, expected = run(ours), run(ref)
    for name, a, e in zip(("output", "h_n", "c_n"), actual, expected):
        assert_close(a, e, name)
    ups = [torch.randn_like(e) for e in expected]
    wrt = [x] + (list(hx) if hx else [])
    ga = torch.autograd.grad(sum((o * u).sum() for o, u in zip(actual, ups)), wrt + list(ours.parameters()))
    ge = torch.autograd.grad(sum((o * u).sum() for o, u in zip(expected, ups)), wrt + list(ref.parameters()))
    names = ["dx"] + (["dh0", "dc0"] if hx else []) + [f"d_{n}" for n, _ in ours.named_parameters()]
    for name, a, e in zip(names, ga, ge):
        assert_close(a, e, name)


def test_zero_peephole_weights_are_nn_lstm():
    """The reference (and so every backend checked against it) reduces to nn.LSTM when w_c* = 0."""
    lstm = nn.LSTM(I, H, num_layers=2, bidirectional=True)
    ours = FusedLSTM(I, H, num_layers=2, bidirectional=True, peephole=True, backend="cpu")
    ours.load_state_dict(lstm.state_dict(), strict=False)
    with torch.no_grad():
        for names in ours._peephole_names:
            for n in names:
                getattr(ours, n).zero_()
    x = torch.randn(T, B, I)
    for a, e in zip(ours(x)[1] + (ours(x)[0],), lstm(x)[1] + (lstm(x)[0],)):
        assert_close(a, e, "vs nn.LSTM")


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradcheck_float64(reverse):
    d = dict(dtype=torch.float64)
    args = [torch.randn(4, 3, 3, **d), torch.randn(3, 4, **d), torch.randn(3, 4, **d), torch.randn(16, 3, **d) * 0.5,
            torch.randn(16, 4, **d) * 0.5, torch.randn(16, **d), torch.randn(16, **d), torch.randn(4, **d),
            torch.randn(4, **d), torch.randn(4, **d)]
    args = [a.requires_grad_() for a in args]
    lens = torch.tensor([4, 1, 3])
    assert torch.autograd.gradcheck(lambda *a: peephole_lstm_layer(*a, lens, reverse, backend="cpu"), tuple(args))


def test_opcheck_and_nan():
    args = [torch.randn(4, 3, 5), torch.randn(3, 6), torch.randn(3, 6), torch.randn(24, 5), torch.randn(24, 6),
            torch.randn(24), None, torch.randn(18)]
    args = [a if a is None else a.requires_grad_() for a in args]
    op = torch.ops.fused_s2s.peephole_lstm_layer_fwd.default
    torch.library.opcheck(op, (*args, torch.tensor([4, 1, 3]), True, True))
    torch.library.opcheck(op, (*args, None, False, True))
    x = torch.randn(4, 2, 5)
    x[1, 0, 2] = float("nan")
    w = [torch.randn(24, 5), torch.randn(24, 6), None, None, *torch.randn(3, 6)]
    y, h, c = peephole_lstm_layer(x, torch.zeros(2, 6), torch.zeros(2, 6), *w, None, False, backend="cpu")
    ye, he, ce = reference.peephole_lstm_layer(x, torch.zeros(2, 6), torch.zeros(2, 6), *w)
    assert torch.equal(y.isnan(), ye.isnan()) and y[1:, 0].isnan().all() and not y[:, 1].isnan().any()


def test_parameters_repr_and_errors():
    plain = FusedLSTM(I, H, num_layers=2, bidirectional=True)
    torch_names = [n for n, _ in nn.LSTM(I, H, num_layers=2, bidirectional=True).named_parameters()]
    assert [n for n, _ in plain.named_parameters()] == torch_names
    m = FusedLSTM(I, H, num_layers=2, bidirectional=True, peephole=True)
    assert [n for n, _ in m.named_parameters()][:len(torch_names)] == torch_names
    extra = [n for n, _ in m.named_parameters() if n not in dict(plain.named_parameters())]
    assert {n for n in extra if "reverse" not in n} >= {"weight_ci_l0", "weight_cf_l0", "weight_co_l0", "weight_co_l1"}
    assert len(extra) == 12 and all(getattr(m, n).shape == (H,) for n in extra)
    assert repr(m).endswith("bidirectional=True, peephole=True)")
    with pytest.raises(ValueError, match="peephole=True does not support proj_size"):
        FusedLSTM(I, H, proj_size=2, peephole=True)
    with pytest.raises(RuntimeError, match="'cuda' has no peephole-LSTM kernels"):
        FusedLSTM(I, H, peephole=True, backend="cuda")(torch.randn(T, B, I))
    good = dict(x=torch.randn(T, B, I), h0=torch.zeros(B, H), c0=torch.zeros(B, H), w_ih=torch.randn(4 * H, I),
                w_hh=torch.randn(4 * H, H), b_ih=None, b_hh=None, w_c=torch.randn(3 * H), lengths=None, reverse=False,
                save=False)
    torch.ops.fused_s2s.peephole_lstm_layer_fwd(**good)
    for change, message in ((dict(w_c=torch.randn(H)), "w_c must be"), (dict(c0=torch.zeros(B, H + 1)), "c0 must be"),
                            (dict(w_c=torch.randn(3 * H, dtype=torch.float64)), "must match x's dtype"),
                            (dict(lengths=torch.tensor([T, 0, 1])), "every length must be in")):
        with pytest.raises(RuntimeError, match=re.escape(message)):
            torch.ops.fused_s2s.peephole_lstm_layer_fwd(**{**good, **change})
