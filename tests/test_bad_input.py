"""Bad arguments: FusedLSTM raises what nn.LSTM raises (same type, same message), and clear errors of its own
where nn.LSTM has no check (lengths=, devices, hx dtype, hx of a PackedSequence)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from fused_s2s import FusedLSTM
from fused_s2s.ops import lstm as ops_lstm

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

T, B, I, H, P = 7, 3, 5, 6, 4


@pytest.fixture(params=["reference", "cpu"])
def backend(request):
    if request.param == "cpu" and ops_lstm._C_ERROR is not None:
        pytest.skip(f"backend 'cpu' unavailable: {ops_lstm._C_ERROR}")
    return request.param


def raise_alike(expected_fn, actual_fn) -> Exception:
    """Both callables must raise; same exception type and the same message. Returns our exception."""
    with pytest.raises(Exception) as expected:
        expected_fn()
    with pytest.raises(Exception) as actual:
        actual_fn()
    assert type(actual.value) is type(expected.value), (actual.value, expected.value)
    assert str(actual.value) == str(expected.value)
    return actual.value


def pair(backend="reference", **kw):
    ref = nn.LSTM(I, H, **kw)
    fused = FusedLSTM(I, H, **kw, backend=backend)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


# --------------------------------------------------------------------------------------------------------
# constructor

@pytest.mark.parametrize("args, kw", [
    ((I, H), dict(dropout=-0.1)),
    ((I, H), dict(dropout=1.5)),
    ((I, H), dict(dropout=True)),
    ((I, H), dict(dropout="0.1")),
    ((I, 0), {}),
    ((I, -2), {}),
    ((0, H), {}),
    ((I, H), dict(num_layers=0)),
    ((I, H), dict(proj_size=-1)),
    ((I, H), dict(proj_size=H)),
    ((I, H), dict(proj_size=H + 3)),
    ((I, H), dict(bias=1)),
    ((I, H), dict(batch_first="yes")),
    ((5.0, H), {}),
    ((I, 6.0), {}),
], ids=lambda v: repr(v))
def test_constructor_errors_like_nn_lstm(args, kw):
    raise_alike(lambda: nn.LSTM(*args, **kw), lambda: FusedLSTM(*args, **kw))


def test_dropout_warning_like_nn_lstm():
    with warnings.catch_warnings(record=True) as expected:
        warnings.simplefilter("always")
        nn.LSTM(I, H, num_layers=1, dropout=0.3)
    with warnings.catch_warnings(record=True) as actual:
        warnings.simplefilter("always")
        FusedLSTM(I, H, num_layers=1, dropout=0.3)
    assert [str(w.message) for w in actual] == [str(w.message) for w in expected]
    assert len(actual) == 1 and actual[0].filename == __file__  # points at the caller, as nn.LSTM's does
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FusedLSTM(I, H, num_layers=2, dropout=0.3)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of .* got 'gpu'"):
        FusedLSTM(I, H, backend="gpu")


# --------------------------------------------------------------------------------------------------------
# forward: the cases nn.LSTM checks itself (same type and message)

def h_c(layers_dirs, batch, h_out=H, hidden=H):
    shape = (layers_dirs,) if batch is None else (layers_dirs, batch)
    return torch.randn(*shape, h_out), torch.randn(*shape, hidden)


FORWARD_CASES = {
    "input-4D": (dict(), lambda: (torch.randn(T, B, I, 1), None)),
    "input-1D": (dict(), lambda: (torch.randn(I), None)),
    "input-0D": (dict(), lambda: (torch.tensor(1.0), None)),
    "input-size": (dict(), lambda: (torch.randn(T, B, I + 1), None)),
    "input-size-unbatched": (dict(), lambda: (torch.randn(T, I - 1), None)),
    "input-size-with-hx": (dict(num_layers=2), lambda: (torch.randn(T, B, I + 2), h_c(2, B))),
    "input-dtype": (dict(), lambda: (torch.randn(T, B, I, dtype=torch.float64), None)),
    "input-dtype-with-hx": (dict(), lambda: (torch.randn(T, B, I, dtype=torch.float16), h_c(1, B))),
    "hx-2D-for-batched": (dict(), lambda: (torch.randn(T, B, I), (torch.randn(B, H), torch.randn(1, B, H)))),
    "cx-2D-for-batched": (dict(), lambda: (torch.randn(T, B, I), (torch.randn(1, B, H), torch.randn(B, H)))),
    "hx-3D-for-unbatched": (dict(), lambda: (torch.randn(T, I), h_c(1, 1))),
    "h0-batch": (dict(num_layers=2), lambda: (torch.randn(T, B, I), (torch.randn(2, B + 1, H), torch.randn(2, B, H)))),
    "h0-layers": (dict(num_layers=2, bidirectional=True), lambda: (torch.randn(T, B, I), h_c(2, B))),
    "h0-width-proj": (dict(proj_size=P), lambda: (torch.randn(T, B, I), h_c(1, B, h_out=H, hidden=H))),
    "c0-width-proj": (dict(proj_size=P), lambda: (torch.randn(T, B, I), h_c(1, B, h_out=P, hidden=P))),
    "c0-batch": (dict(), lambda: (torch.randn(T, B, I), (torch.randn(1, B, H), torch.randn(1, B - 1, H)))),
    # batch_first never applies to the state: a batch-first-shaped h0 is an error
    "h0-batch-first-layout": (dict(batch_first=True, num_layers=2),
                              lambda: (torch.randn(B, T, I), (torch.randn(B, 2, H), torch.randn(B, 2, H)))),
    "h0-unbatched": (dict(), lambda: (torch.randn(T, I), (torch.randn(1, H + 1), torch.randn(1, H)))),
    "c0-unbatched": (dict(num_layers=3), lambda: (torch.randn(T, I), (torch.randn(3, H), torch.randn(2, H)))),
    "empty-sequence": (dict(), lambda: (torch.randn(0, B, I), None)),
}


@pytest.mark.parametrize("name", list(FORWARD_CASES))
def test_forward_errors_like_nn_lstm(name: str, backend: str):
    kw, make = FORWARD_CASES[name]
    ref, fused = pair(backend, **kw)
    x, hx = make()
    raise_alike(lambda: ref(x, hx), lambda: fused(x, hx))


def test_unsorted_packed_sequence_with_enforce_sorted_still_raises():
    ref, fused = pair()
    x = torch.randn(T, B, I)
    with pytest.raises(RuntimeError, match="must be sorted in decreasing order"):
        fused(pack_padded_sequence(x, torch.tensor([3, 7, 5]), enforce_sorted=True))


# --------------------------------------------------------------------------------------------------------
# forward: our own checks (nn.LSTM either has no such argument or fails deep inside with another message)

def test_device_mismatch_names_both_devices(backend: str):
    _, fused = pair(backend)
    with pytest.raises(RuntimeError, match=r"input is on meta and the parameters are on cpu"):
        fused(torch.randn(T, B, I, device="meta"))
    h0, c0 = h_c(1, B)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[1\] on the input's device cpu, but it is on meta"):
        fused(torch.randn(T, B, I), (h0, c0.to("meta")))


def test_hx_dtype_mismatch(backend: str):
    ref, fused = pair(backend)
    h0, c0 = h_c(1, B)
    x = torch.randn(T, B, I)
    with pytest.raises(RuntimeError):  # nn.LSTM: RuntimeError too, from deep inside ("get_mkldnn_dtype ...")
        ref(x, (h0.double(), c0))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] to have the input's dtype torch.float32, "
                                           r"got torch.float64"):
        fused(x, (h0.double(), c0))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("lengths, match", [
    (torch.tensor([T, T + 1, 2]), rf"lengths must be in \[1, {T}\] .* got lengths\[1\] = {T + 1}"),
    (torch.tensor([3, 0, 2]), rf"lengths must be in \[1, {T}\] .* got lengths\[1\] = 0"),
    (torch.tensor([3, 2, -4]), rf"lengths must be in \[1, {T}\] .* got lengths\[2\] = -4"),
    (torch.tensor([3, 2]), rf"one entry per sequence: the batch has {B} sequences, got 2 lengths"),
    (torch.tensor([3, 2, 1, 1]), rf"one entry per sequence: the batch has {B} sequences, got 4 lengths"),
    (torch.tensor([[3, 2, 1]]), r"1-D tensor .* got a 2-D tensor of shape \[1, 3\]"),
    (torch.tensor(3), r"1-D tensor .* got a 0-D tensor of shape \[\]"),
    (torch.tensor([3.0, 2.0, 1.0]), r"lengths must be an integer tensor, got dtype torch.float32"),
], ids=["too-long", "zero", "negative", "too-few", "too-many", "2D", "0D", "float"])
def test_bad_lengths(lengths, match, batch_first: bool, backend: str):
    _, fused = pair(backend, batch_first=batch_first, bidirectional=True)
    x = torch.randn((B, T, I) if batch_first else (T, B, I))
    with pytest.raises(ValueError, match=match):
        fused(x, lengths=lengths)


def test_lengths_with_packed_sequence(backend: str):
    _, fused = pair(backend)
    packed = pack_padded_sequence(torch.randn(T, B, I), torch.tensor([7, 5, 2]))
    with pytest.raises(ValueError, match="lengths= cannot be combined with a PackedSequence"):
        fused(packed, lengths=torch.tensor([7, 5, 2]))


@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_bad_state(enforce_sorted: bool, backend: str):
    """nn.LSTM checks no state shape for a PackedSequence: it fails inside (a size mismatch RuntimeError, or
    an IndexError for 2-D hx) or, for an unsorted one whose hx has extra batch rows, silently uses the rows
    that sorted_indices picks. We refuse, naming the tensor, with nn.LSTM's words for the batched case."""
    ref, fused = pair(backend, num_layers=2)
    lengths = torch.tensor([7, 5, 2]) if enforce_sorted else torch.tensor([5, 7, 2])
    packed = pack_padded_sequence(torch.randn(T, B, I), lengths, enforce_sorted=enforce_sorted)
    bad_batch = (torch.randn(2, B + 1, H), torch.randn(2, B, H))
    if enforce_sorted:
        with pytest.raises(RuntimeError):
            ref(packed, bad_batch)
    else:
        ref(packed, bad_batch)  # accepted by nn.LSTM: index_select with sorted_indices drops the extra row
    with pytest.raises(RuntimeError, match=rf"Expected hidden\[0\] size \(2, {B}, {H}\), got \[2, {B + 1}, {H}\]"):
        fused(packed, bad_batch)
    bad_cell = (torch.randn(2, B, H), torch.randn(1, B, H))
    with pytest.raises(RuntimeError, match=rf"Expected hidden\[1\] size \(2, {B}, {H}\), got \[1, {B}, {H}\]"):
        fused(packed, bad_cell)
    with pytest.raises(RuntimeError, match=r"For PackedSequence input, hx and cx should also be 3-D but got "
                                           r"\(2-D, 2-D\) tensors"):
        fused(packed, (torch.randn(B, H), torch.randn(B, H)))


def test_packed_sequence_bad_features(backend: str):
    _, fused = pair(backend)
    packed = pack_padded_sequence(torch.randn(T, B, I + 1), torch.tensor([7, 5, 2]))
    with pytest.raises(RuntimeError, match=rf"input.size\(-1\) must be equal to input_size. Expected {I}, got {I + 1}"):
        fused(packed)
    packed = pack_padded_sequence(torch.randn(T, B, I, dtype=torch.float64), torch.tensor([7, 5, 2]))
    with pytest.raises(ValueError, match=r"RNN input dtype \(torch.float64\) does not match weight dtype"):
        fused(packed)
