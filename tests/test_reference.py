"""The plain-PyTorch reference (fused_s2s.reference) against torch.nn.LSTM with the same weights.

The reference is the oracle for every backend, so it is itself checked against nn.LSTM: outputs, h_n, c_n
and the gradients of input, h0, c0 and every parameter under random upstream gradients, including
variable lengths through nn.LSTM's PackedSequence path (pack_padded_sequence(enforce_sorted=False)).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fused_s2s.reference import lstm as ref
from tests.utils import assert_close, case_id, tolerance

# nn.LSTM warns on every projected CPU call that it falls back from oneDNN; that is its business, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


@dataclass(frozen=True)
class Case:
    L: int = 1  # num_layers
    bidir: bool = False
    P: int = 0  # proj_size
    bias: bool = True
    h0: bool = False  # pass (h0, c0) or let them default to zeros
    lengths: str = "none"  # "none" | "rand" (1..T, max may be < T) | "full" (some == T, incl. 1) | "short" (all < T)
    T: int = 7
    B: int = 3
    I: int = 5
    H: int = 6

    @property
    def id(self) -> str:
        return case_id(L=self.L, bidir=self.bidir, P=self.P, bias=self.bias, h0=self.h0,
                       len=self.lengths, T=self.T, B=self.B, I=self.I, H=self.H)


CASES = [
    Case(),
    Case(bidir=True),
    Case(L=2, h0=True),
    Case(L=3, bidir=True, h0=True),
    Case(P=4),
    Case(L=2, bidir=True, P=4, h0=True),
    Case(bias=False),
    Case(L=2, bidir=True, bias=False, h0=True),
    Case(lengths="rand"),
    Case(bidir=True, h0=True, lengths="full"),
    Case(L=2, bidir=True, P=3, h0=True, lengths="rand"),
    Case(L=3, bidir=True, h0=True, lengths="short"),
    Case(L=3, P=5, bias=False, h0=True, lengths="full"),
    Case(L=2, bidir=True, bias=False, lengths="rand", T=11, B=5, I=3, H=9),
    Case(bidir=True, h0=True, lengths="full", T=1, B=1, I=1, H=1),
    Case(L=2, bidir=True, P=2, h0=True, T=4, B=1, I=2, H=3),
]


def make_lengths(kind: str, T: int, B: int) -> Tensor | None:
    """int64 CPU lengths in [1, T], unsorted, or None."""
    if kind == "none":
        return None
    if kind == "rand":
        return torch.randint(1, T + 1, (B,))
    if kind == "full":  # both extremes present: one full-length sequence and (if B > 1) one of length 1
        lengths = torch.randint(1, T + 1, (B,))
        lengths[torch.randint(B, ())] = T
        if B > 1:
            lengths[(int(lengths.argmax()) + 1) % B] = 1
        return lengths
    if kind == "short":  # every sequence shorter than T: the padded tail is never read
        assert T > 1
        return torch.randint(1, T, (B,))
    raise ValueError(kind)


def layer_weights(m: nn.LSTM) -> list[ref.LayerWeights]:
    """nn.LSTM's parameters as reference weight tuples (w_ih, w_hh, b_ih, b_hh, w_hr), layer-major,
    direction inner; missing biases / projection become None. The tensors are m's own parameters."""
    out = []
    for layer in range(m.num_layers):
        for sfx in ([""] + (["_reverse"] if m.bidirectional else [])):
            out.append(tuple(getattr(m, f"{name}_l{layer}{sfx}", None)
                             for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")))
    # Every parameter of m is used exactly once, in m._flat_weights order.
    flat = [w for tup in out for w in tup if w is not None]
    assert len(flat) == len(m._flat_weights) and all(a is b for a, b in zip(flat, m._flat_weights))
    return out


def run_torch(m: nn.LSTM, x: Tensor, hx: tuple[Tensor, Tensor] | None, lengths: Tensor | None):
    """nn.LSTM on padded time-major x; with lengths through the PackedSequence path (unsorted)."""
    if lengths is None:
        y, (h, c) = m(x, hx)
        return y, h, c
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    y_packed, (h, c) = m(packed, hx)
    y, _ = pad_packed_sequence(y_packed, total_length=x.shape[0])  # zero padding up to T
    return y, h, c


def compare_with_nn_lstm(case: Case, dtype: torch.dtype, dropout: float = 0.0, training: bool = False,
                         check_grads: bool = True) -> None:
    m = nn.LSTM(case.I, case.H, num_layers=case.L, bias=case.bias, bidirectional=case.bidir,
                proj_size=case.P, dropout=dropout).to(dtype)
    m.train(training)
    D = 2 if case.bidir else 1
    P = case.P or case.H
    x = torch.randn(case.T, case.B, case.I, dtype=dtype, requires_grad=True)
    h0 = c0 = None
    if case.h0:
        h0 = torch.randn(case.L * D, case.B, P, dtype=dtype, requires_grad=True)
        c0 = torch.randn(case.L * D, case.B, case.H, dtype=dtype, requires_grad=True)
    lengths = make_lengths(case.lengths, case.T, case.B)

    # Same RNG state for both runs so that dropout masks (if any) are drawn identically.
    rng = torch.get_rng_state()
    y_t, h_t, c_t = run_torch(m, x, (h0, c0) if case.h0 else None, lengths)
    torch.set_rng_state(rng)
    y_r, h_r, c_r = ref.lstm(x, h0, c0, layer_weights(m), bidirectional=case.bidir, dropout=dropout,
                             training=training, lengths=lengths)

    assert_close(y_r, y_t, "y")
    assert_close(h_r, h_t, "h_n")
    assert_close(c_r, c_t, "c_n")
    if lengths is not None:
        pad = torch.arange(case.T).unsqueeze(1) >= lengths.unsqueeze(0)  # [T, B]
        assert (y_r[pad] == 0).all(), "reference y must be exactly zero at padding positions"
    if not check_grads:
        return

    # Random upstream gradients for y, h_n and c_n at once.
    gy, gh, gc = torch.randn_like(y_t), torch.randn_like(h_t), torch.randn_like(c_t)
    names = ["x"] + (["h0", "c0"] if case.h0 else []) + [n for n, _ in m.named_parameters()]
    inputs = [x] + ([h0, c0] if case.h0 else []) + list(m.parameters())
    grads_t = torch.autograd.grad((y_t, h_t, c_t), inputs, (gy, gh, gc))
    grads_r = torch.autograd.grad((y_r, h_r, c_r), inputs, (gy, gh, gc))
    for name, g_r, g_t in zip(names, grads_r, grads_t):
        assert_close(g_r, g_t, f"grad {name}")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reference_matches_nn_lstm_fp32(case: Case):
    compare_with_nn_lstm(case, torch.float32)


FP64_CASES = [
    Case(L=2, bidir=True, P=4, h0=True, lengths="full"),
    Case(L=3, bias=False, lengths="rand", T=9, B=4, I=3, H=5),
]


@pytest.mark.parametrize("case", FP64_CASES, ids=[c.id for c in FP64_CASES])
def test_reference_matches_nn_lstm_fp64(case: Case):
    compare_with_nn_lstm(case, torch.float64)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_dropout_between_layers(training: bool):
    """F.dropout after every layer but the last, only in training: with the same RNG state the masks
    match nn.LSTM's exactly (both draw via at::dropout on a [T, B, D*H] tensor in the same order).
    Padded input only: on a PackedSequence nn.LSTM draws its masks over the packed data, whose shape
    differs, so identical masks are impossible there (see the lengths test below)."""
    compare_with_nn_lstm(Case(L=3, bidir=True, h0=True), torch.float32, dropout=0.5, training=training)


def test_dropout_with_lengths_keeps_padding_zero():
    """Dropout in training with lengths: padding stays exactly zero in every layer's output (y and the
    gradient w.r.t. padded x are zero), and the valid part differs from the eval result (dropout acted)."""
    case = Case(L=3, bidir=True, lengths="full")
    m = nn.LSTM(case.I, case.H, num_layers=case.L, bidirectional=True)
    x = torch.randn(case.T, case.B, case.I, requires_grad=True)
    lengths = make_lengths(case.lengths, case.T, case.B)
    y, h, c = ref.lstm(x, None, None, layer_weights(m), bidirectional=True, dropout=0.5, training=True,
                       lengths=lengths)
    pad = torch.arange(case.T).unsqueeze(1) >= lengths.unsqueeze(0)
    assert (y[pad] == 0).all()
    (gx,) = torch.autograd.grad((y, h, c), x, (torch.randn_like(y), torch.randn_like(h), torch.randn_like(c)))
    assert (gx[pad] == 0).all()
    y_eval, _, _ = ref.lstm(x, None, None, layer_weights(m), bidirectional=True, dropout=0.5,
                            training=False, lengths=lengths)
    assert not torch.allclose(y[~pad], y_eval[~pad])


def test_dropout_off_when_single_layer_or_eval():
    """No dropout after the last layer: a 1-layer stack in training is deterministic."""
    m = nn.LSTM(5, 6)
    x = torch.randn(7, 3, 5)
    a = ref.lstm(x, None, None, layer_weights(m), dropout=0.9, training=True)
    b = ref.lstm(x, None, None, layer_weights(m), dropout=0.9, training=True)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def _layer_params(I: int, H: int, P: int, bias: bool, dtype=torch.float32):
    m = nn.LSTM(I, H, proj_size=P, bias=bias).to(dtype)
    return layer_weights(m)[0]


@pytest.mark.parametrize("P", [0, 4], ids=["noproj", "P4"])
def test_layer_reverse_with_lengths_is_forward_on_flipped_sequences(P: int):
    """lstm_layer(reverse=True, lengths) == forward run on each sequence flipped within its own length."""
    T, B, I, H = 7, 4, 5, 6
    Pw = P or H
    w = _layer_params(I, H, P, bias=True)
    x = torch.randn(T, B, I)
    h0, c0 = torch.randn(B, Pw), torch.randn(B, H)
    lengths = torch.tensor([3, 7, 1, 5])
    y, h_n, c_n = ref.lstm_layer(x, h0, c0, *w, lengths, True)
    assert y.shape == (T, B, Pw) and h_n.shape == (B, Pw) and c_n.shape == (B, H)
    for b in range(B):
        n = int(lengths[b])
        xb = x[:n, b:b + 1].flip(0)  # sequence b alone, reversed within its length
        yb, hb, cb = ref.lstm_layer(xb, h0[b:b + 1], c0[b:b + 1], *w, None, False)
        assert_close(y[:n, b], yb.flip(0)[:, 0], f"y[:{n}, {b}]")
        assert (y[n:, b] == 0).all(), f"y[{n}:, {b}] must be zero padding"
        assert_close(h_n[b], hb[0], f"h_n[{b}]")
        assert_close(c_n[b], cb[0], f"c_n[{b}]")


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_layer_with_lengths_is_per_sequence_truncation(reverse: bool):
    """With lengths, each sequence gives what it gives alone, truncated to its length; the padded tail of x
    (here NaN) never influences anything."""
    T, B, I, H = 6, 3, 4, 5
    w = _layer_params(I, H, 3, bias=False)
    lengths = torch.tensor([2, 6, 4])
    x = torch.randn(T, B, I)
    x[torch.arange(T).unsqueeze(1) >= lengths] = float("nan")
    h0, c0 = torch.randn(B, 3), torch.randn(B, H)
    y, h_n, c_n = ref.lstm_layer(x, h0, c0, *w, lengths, reverse)
    for b in range(B):
        n = int(lengths[b])
        yb, hb, cb = ref.lstm_layer(x[:n, b:b + 1], h0[b:b + 1], c0[b:b + 1], *w, None, reverse)
        assert_close(y[:n, b], yb[:, 0], f"y[:{n}, {b}]")
        assert (y[n:, b] == 0).all()
        assert_close(h_n[b], hb[0], f"h_n[{b}]")
        assert_close(c_n[b], cb[0], f"c_n[{b}]")


def test_layer_full_lengths_equals_no_lengths():
    T, B, I, H = 5, 3, 4, 6
    w = _layer_params(I, H, 0, bias=True)
    x, h0, c0 = torch.randn(T, B, I), torch.randn(B, H), torch.randn(B, H)
    for reverse in (False, True):
        a = ref.lstm_layer(x, h0, c0, *w, torch.full((B,), T), reverse)
        b = ref.lstm_layer(x, h0, c0, *w, None, reverse)
        for u, v, name in zip(a, b, ("y", "h_n", "c_n")):
            assert_close(u, v, name)


def test_cell_matches_nn_lstm_cell():
    cell = nn.LSTMCell(5, 6)
    x, h, c = torch.randn(3, 5), torch.randn(3, 6), torch.randn(3, 6)
    h_t, c_t = cell(x, (h, c))
    h_r, c_r = ref.lstm_cell(x, h, c, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, None)
    assert_close(h_r, h_t, "h")
    assert_close(c_r, c_t, "c")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_computes_in_that_dtype(dtype: torch.dtype):
    """Half-precision inputs give half-precision outputs (and grads), close to the float64 result."""
    case = Case(L=2, bidir=True, P=4, h0=True, lengths="rand")
    m = nn.LSTM(case.I, case.H, num_layers=case.L, bidirectional=True, proj_size=case.P).double()
    x = torch.randn(case.T, case.B, case.I, dtype=torch.float64)
    h0 = torch.randn(4, case.B, case.P, dtype=torch.float64)
    c0 = torch.randn(4, case.B, case.H, dtype=torch.float64)
    lengths = make_lengths(case.lengths, case.T, case.B)
    expected = ref.lstm(x, h0, c0, layer_weights(m), bidirectional=True, lengths=lengths)

    m_lp = nn.LSTM(case.I, case.H, num_layers=case.L, bidirectional=True, proj_size=case.P)
    m_lp.load_state_dict(m.state_dict())
    m_lp.to(dtype)
    x_lp = x.to(dtype).requires_grad_()
    got = ref.lstm(x_lp, h0.to(dtype), c0.to(dtype), layer_weights(m_lp), bidirectional=True,
                   lengths=lengths)
    for g, e, name in zip(got, expected, ("y", "h_n", "c_n")):
        assert g.dtype == dtype, f"{name} computed in {g.dtype}, expected {dtype}"
        # assert_close picks tolerances by the expected dtype (float64 here); judge the half-precision
        # result with its own dtype's floor instead.
        assert_close(g.double(), e, name, *tolerance(dtype))
    (gx,) = torch.autograd.grad(got[0], x_lp, torch.ones_like(got[0]))
    assert gx.dtype == dtype and gx.isfinite().all()

