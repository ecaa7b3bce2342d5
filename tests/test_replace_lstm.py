"""replace_lstm and FusedLSTM.from_lstm on a small model: same outputs, modes, devices, dtypes, and the same
training trajectory under SGD and Adam."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fused_s2s import FusedLSTM, FusedLSTMEncoder, replace_lstm
from fused_s2s.ops import lstm as ops_lstm
from tests.utils import assert_close

VOCAB, EMB, HID, CLASSES, B, T = 11, 5, 6, 3, 4, 7


@pytest.fixture(params=["reference", "cpu"])
def backend(request):
    if request.param == "cpu" and ops_lstm._C_ERROR is not None:
        pytest.skip(f"backend 'cpu' unavailable: {ops_lstm._C_ERROR}")
    return request.param


class Tagger(nn.Module):
    """Embedding -> 2-layer batch-first nn.LSTM -> linear head; optionally OpenNMT-style packing."""

    def __init__(self, dropout: float = 0.0, bidirectional: bool = False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, EMB)
        self.lstm = nn.LSTM(EMB, HID, num_layers=2, batch_first=True, dropout=dropout,
                            bidirectional=bidirectional)
        self.head = nn.Linear(HID * (2 if bidirectional else 1), CLASSES)

    def forward(self, tokens, lengths=None):
        x = self.emb(tokens)
        if lengths is None:
            y, (h, c) = self.lstm(x)
        else:
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            y, (h, c) = self.lstm(packed)
            y, _ = pad_packed_sequence(y, batch_first=True, total_length=tokens.shape[1])
        return self.head(y), h, c


def batch():
    tokens = torch.randint(0, VOCAB, (B, T))
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    return tokens, lengths, torch.randint(0, CLASSES, (B, T))


def params(model):
    return dict(model.named_parameters())


def assert_same_outputs(a, b, *args):
    for name, x, y in zip(("logits", "h_n", "c_n"), a(*args), b(*args)):
        assert_close(x, y, name)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
def test_replace_gives_identical_outputs(packed: bool, bidirectional: bool, backend: str):
    model = Tagger(bidirectional=bidirectional)
    fused = replace_lstm(copy.deepcopy(model), backend=backend)
    assert type(fused.lstm) is FusedLSTM and fused.lstm.backend == backend
    assert not any(isinstance(m, nn.LSTM) for m in fused.modules())
    assert list(params(fused)) == list(params(model))
    tokens, lengths, _ = batch()
    assert_same_outputs(model, fused, tokens, lengths if packed else None)


def test_replace_keeps_parameters_mode_device_dtype():
    model = Tagger(dropout=0.25).double()
    model.train()
    model.lstm.eval()  # a mixed-mode model: the LSTM alone is frozen in eval
    model.lstm.weight_hh_l1.requires_grad_(False)
    old = params(model)
    replace_lstm(model, backend="reference")
    assert isinstance(model.lstm, FusedLSTM)
    assert model.training and not model.lstm.training
    assert model.lstm.dropout == 0.25 and model.lstm.num_layers == 2 and model.lstm.batch_first
    new = params(model)
    assert all(new[n] is old[n] for n in old), "replace_lstm must move the very Parameter objects"
    assert all(p.dtype == torch.float64 for p in model.lstm.parameters())
    assert not model.lstm.weight_hh_l1.requires_grad

    on_meta = replace_lstm(Tagger().to("meta"))
    assert all(p.device.type == "meta" for p in on_meta.lstm.parameters())


def test_replace_nested_shared_and_top_level():
    shared = nn.LSTM(EMB, HID)

    class MyLSTM(nn.LSTM):  # a subclass may override forward: left alone
        pass

    model = nn.Sequential(nn.ModuleList([shared, nn.Linear(2, 2)]), nn.ModuleDict({"a": shared, "b": MyLSTM(2, 3)}))
    replace_lstm(model)
    assert isinstance(model[0][0], FusedLSTM) and model[0][0] is model[1]["a"]
    assert type(model[1]["b"]) is MyLSTM
    top = nn.LSTM(EMB, HID, num_layers=2, proj_size=2).eval()
    fused_top = replace_lstm(top)
    assert isinstance(fused_top, FusedLSTM) and not fused_top.training and fused_top.proj_size == 2


# Adam's step m / (sqrt(v) + eps) is scale-free, so with the default eps=1e-8 a parameter whose gradient is
# near zero (an embedding row barely used) turns fp32 rounding differences into lr-sized step differences.
# eps=1e-3 keeps such steps proportional to the gradient, so the default fp32 tolerance applies.
@pytest.mark.parametrize("make_opt", [lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
                                      lambda p: torch.optim.Adam(p, lr=0.05, eps=1e-3)], ids=["SGD", "Adam"])
def test_training_trajectory_matches(make_opt, backend: str):
    model = Tagger()
    fused = replace_lstm(copy.deepcopy(model), backend=backend)
    opt_ref, opt_fused = make_opt(model.parameters()), make_opt(fused.parameters())
    for step in range(4):
        tokens, lengths, target = batch()
        for m, opt in ((model, opt_ref), (fused, opt_fused)):
            opt.zero_grad()
            logits, h, c = m(tokens, lengths if step % 2 else None)
            loss = nn.functional.cross_entropy(logits.reshape(-1, CLASSES), target.reshape(-1)) + h.square().mean()
            loss.backward()
            opt.step()
    for name, p in params(model).items():
        assert_close(params(fused)[name], p, name)


def test_optimizer_built_before_replace_still_trains_the_fused_lstm():
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    replace_lstm(model, backend="reference")
    before = model.lstm.weight_ih_l0.detach().clone()
    tokens, _, target = batch()
    logits, _, _ = model(tokens)
    nn.functional.cross_entropy(logits.reshape(-1, CLASSES), target.reshape(-1)).backward()
    opt.step()
    assert not torch.equal(model.lstm.weight_ih_l0, before)


def test_state_dict_of_replaced_model_loads_into_original(backend: str):
    model = Tagger()
    fused = replace_lstm(Tagger(), backend=backend)
    model.load_state_dict(fused.state_dict(), strict=True)
    tokens, lengths, _ = batch()
    assert_same_outputs(model, fused, tokens, lengths)


def test_from_lstm(backend: str):
    lstm = nn.LSTM(EMB, HID, num_layers=2, bidirectional=True, proj_size=4, dropout=0.1,
                   dtype=torch.float64).eval()
    fused = FusedLSTM.from_lstm(lstm, backend=backend)
    assert type(fused) is FusedLSTM and fused.backend == backend and not fused.training
    assert (fused.proj_size, fused.bidirectional, fused.dropout) == (4, True, 0.1)
    for (n, a), (_, e) in zip(fused.named_parameters(), lstm.named_parameters()):
        assert torch.equal(a, e) and a.dtype == e.dtype == torch.float64 and a.device == e.device, n
        assert a is not e and a.data_ptr() != e.data_ptr(), f"{n}: from_lstm copies"
    x = torch.randn(T, B, EMB, dtype=torch.float64)
    for name, a, e in zip(("output", "h_n", "c_n"), (fused(x)[0], *fused(x)[1]), (lstm(x)[0], *lstm(x)[1])):
        assert_close(a, e, name)
    assert type(FusedLSTMEncoder.from_lstm(nn.LSTM(EMB, HID))) is FusedLSTMEncoder
    with pytest.raises(TypeError, match="expected a torch.nn.LSTM, got GRU"):
        FusedLSTM.from_lstm(nn.GRU(EMB, HID))
