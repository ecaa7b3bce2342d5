"""FusedGRU and FusedRNN against torch.nn.GRU / torch.nn.RNN with the same weights (outputs, final state and
every gradient, over the layouts and configurations the torch modules accept), the one-layer ops against the
reference (float64 gradcheck, opcheck, frozen weights, NaN), nn.GRU's / nn.RNN's errors word for word,
replace_rnns, and torch.compile."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fused_s2s
from fused_s2s import FusedGRU, FusedLSTM, FusedRNN, replace_rnns
from fused_s2s.ops import cells as ops_cells
from fused_s2s.ops import lstm as ops_lstm
from fused_s2s.reference import cells as reference
from tests.utils import assert_close, case_id

T, B, I, H = 7, 3, 5, 6
KINDS = ("gru", "rnn_tanh", "rnn_relu")


@pytest.fixture(params=["reference", "cpu"])
def backend(request):
    if request.param == "cpu" and ops_lstm._C_ERROR is not None:
        pytest.skip(f"backend 'cpu' unavailable: {ops_lstm._C_ERROR}")
    return request.param


def make_pair(kind: str, backend: str, **kw) -> tuple[nn.Module, nn.Module]:
    """A torch module and ours with the same weights."""
    if kind == "gru":
        ref, ours = nn.GRU(I, H, **kw), FusedGRU(I, H, **kw, backend=backend)
    else:
        act = kind.removeprefix("rnn_")
        ref, ours = nn.RNN(I, H, nonlinearity=act, **kw), FusedRNN(I, H, nonlinearity=act, **kw, backend=backend)
    ours.load_state_dict(ref.state_dict(), strict=True)
    if kw.get("dropout", 0) > 0:
        ref.eval(), ours.eval()
    return ref, ours


@dataclass(frozen=True)
class Case:
    layout: str = "batched"  # batched | unbatched | packed | packed_unsorted | lengths
    layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    hx: bool = False
    dropout: float = 0.0
    steps: int = T

    @property
    def id(self) -> str:
        return case_id(**{self.layout: True, "L": self.layers, "bidir": self.bidirectional, "bf": self.batch_first,
                          "bias": self.bias, "hx": self.hx, "drop": self.dropout, "T": self.steps})


CASES = [
    Case(),
    Case(bias=False, hx=True),
    Case(layers=2, bidirectional=True, hx=True),
    Case(layers=3, batch_first=True, hx=True, dropout=0.3),
    Case(layers=2, bidirectional=True, steps=1, hx=True),
    Case("unbatched", layers=2, bidirectional=True, hx=True),
    Case("packed", layers=2, bidirectional=True, hx=True),
    Case("packed_unsorted", layers=2, bidirectional=True, batch_first=True),  # OpenNMT-py's encoder path
    Case("packed_unsorted", layers=3, bias=False, hx=True),
    Case("lengths", layers=2, bidirectional=True, batch_first=True, hx=True),
]


def random_lengths(steps: int, sort: bool) -> torch.Tensor:
    lengths = torch.randint(1, steps + 1, (B,))
    lengths[torch.randint(0, B, ())] = steps
    return lengths.sort(descending=True).values if sort else lengths


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_torch_module(kind: str, case: Case, backend: str):
    ref, ours = make_pair(kind, backend, num_layers=case.layers, bias=case.bias, batch_first=case.batch_first,
                          dropout=case.dropout, bidirectional=case.bidirectional)
    D = 2 if case.bidirectional else 1
    batched = case.layout != "unbatched"
    if batched:
        x = torch.randn((B, case.steps, I) if case.batch_first else (case.steps, B, I), requires_grad=True)
        hx = torch.randn(case.layers * D, B, H, requires_grad=True) if case.hx else None
    else:
        x = torch.randn(case.steps, I, requires_grad=True)
        hx = torch.randn(case.layers * D, H, requires_grad=True) if case.hx else None
    lengths = random_lengths(case.steps, sort=case.layout == "packed") \
        if case.layout in ("packed", "packed_unsorted", "lengths") else None

    def run(module, use_lengths_kw: bool):
        if case.layout in ("packed", "packed_unsorted") or (case.layout == "lengths" and not use_lengths_kw):
            packed = pack_padded_sequence(x, lengths, batch_first=case.batch_first,
                                          enforce_sorted=case.layout == "packed")
            out, h_n = module(packed, hx)
            assert isinstance(out, PackedSequence)
            if case.layout == "lengths":  # the torch module's packed result, padded back: what lengths= must equal
                out, _ = pad_packed_sequence(out, batch_first=case.batch_first, total_length=case.steps)
            else:
                assert torch.equal(out.batch_sizes, packed.batch_sizes)
                out = out.data
        elif case.layout == "lengths":
            out, h_n = module(x, hx, lengths=lengths)
        else:
            out, h_n = module(x, hx)
        return out, h_n

    expected, actual = run(ref, False), run(ours, True)
    for name, a, e in zip(("output", "h_n"), actual, expected):
        assert_close(a, e, name)
    upstream = [torch.randn_like(e) for e in expected]
    wrt = [x] + ([hx] if hx is not None else [])

    def grads(module, outs):
        loss = sum((o * g).sum() for o, g in zip(outs, upstream))
        return torch.autograd.grad(loss, wrt + list(module.parameters()))

    names = ["d_input"] + (["d_h0"] if hx is not None else []) + [f"d_{n}" for n, _ in ref.named_parameters()]
    for name, a, e in zip(names, grads(ours, actual), grads(ref, expected)):
        assert_close(a, e, name)


# ---- the one-layer ops against the reference ----

def layer_args(kind: str, T_: int, B_: int, I_: int, H_: int, dtype=torch.float64, bias: bool = True):
    G = 3 if kind == "gru" else 1
    s = 1 / H_ ** 0.5
    t = [torch.randn(T_, B_, I_, dtype=dtype), torch.randn(B_, H_, dtype=dtype),
         torch.randn(G * H_, I_, dtype=dtype) * s, torch.randn(G * H_, H_, dtype=dtype) * s]
    t += [torch.randn(G * H_, dtype=dtype) * s, torch.randn(G * H_, dtype=dtype) * s] if bias else [None, None]
    return [a if a is None else a.requires_grad_() for a in t]


def run_layer(kind: str, args, lengths, reverse, backend):
    if kind == "gru":
        return ops_cells.gru_layer(*args, lengths, reverse, backend=backend)
    return ops_cells.rnn_layer(*args, lengths, reverse, kind.removeprefix("rnn_"), backend=backend)


def run_reference(kind: str, args, lengths, reverse):
    if kind == "gru":
        return reference.gru_layer(*args, lengths, reverse)
    return reference.rnn_layer(*args, lengths, reverse, kind.removeprefix("rnn_"))


# The forward runs the fused recurrence (cell_recurrence.cpp), except a dense GRU batch above 32 rows (B 70),
# which takes the step path: B 70 is above the cells' small-batch limit (64), so the oneDNN step GEMM; with
# FUSED_S2S_FUSED_RECURRENCE=0 (the step-by-step test below) the other shapes take the small GEMM. H 37 leaves vector tails; H 131 is large enough for the fused recurrence to split
# its panels over two threads (a barrier per step), with a tail panel.
SHAPES = [dict(T_=6, B_=3, I_=5, H_=6), dict(T_=5, B_=12, I_=7, H_=37), dict(T_=1, B_=2, I_=3, H_=4),
          dict(T_=3, B_=70, I_=4, H_=9), dict(T_=4, B_=5, I_=3, H_=131)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: case_id(**s))
@pytest.mark.parametrize("lengths", [False, True], ids=["dense", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kind", KINDS)
def test_layer_op_matches_reference(kind, dtype, bias, reverse, lengths, shape):
    if ops_lstm._C_ERROR is not None:
        pytest.skip(ops_lstm._C_ERROR)
    args = layer_args(kind, **shape, dtype=dtype, bias=bias)
    ref_args = [a if a is None else a.detach().double().requires_grad_() for a in args]  # fp64 oracle
    lens = torch.randint(1, shape["T_"] + 1, (shape["B_"],)) if lengths else None
    actual = run_layer(kind, args, lens, reverse, "cpu")
    expected = run_reference(kind, ref_args, lens, reverse)
    for name, a, e in zip(("y", "h_n"), actual, expected):
        assert_close(a, e.to(dtype), name)
    ups = [torch.randn_like(e) for e in expected]
    ga = torch.autograd.grad(sum((o * u.to(dtype)).sum() for o, u in zip(actual, ups)),
                             [a for a in args if a is not None])
    ge = torch.autograd.grad(sum((o * u).sum() for o, u in zip(expected, ups)), [a for a in ref_args if a is not None])
    for name, a, e in zip(("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"), ga, ge):
        assert_close(a, e.to(dtype), name)


def test_step_by_step_forward_matches_reference():
    """The step-by-step forward (per-step GEMM + pointwise pass), which FUSED_S2S_FUSED_RECURRENCE=0 selects
    instead of the fused recurrence: the fp32 op tests above, in a process with that setting."""
    if ops_lstm._C_ERROR is not None:
        pytest.skip(ops_lstm._C_ERROR)
    env = dict(os.environ, FUSED_S2S_FUSED_RECURRENCE="0")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "test_layer_op_matches_reference and fp32"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and " failed" not in res.stdout, res.stdout[-2000:]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradcheck_float64(kind, reverse):
    if ops_lstm._C_ERROR is not None:
        pytest.skip(ops_lstm._C_ERROR)
    args = layer_args(kind, 4, 3, 3, 4)
    lens = torch.tensor([4, 2, 3])

    def fn(*a):
        return run_layer(kind, a, lens, reverse, "cpu")

    assert torch.autograd.gradcheck(fn, tuple(args), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_weights_skip_dw_and_keep_dx(kind):
    if ops_lstm._C_ERROR is not None:
        pytest.skip(ops_lstm._C_ERROR)
    args = layer_args(kind, 5, 4, 3, 6)
    for w in args[2:]:
        w.requires_grad_(False)
    lens = torch.tensor([5, 1, 3, 4])
    y, h = run_layer(kind, args, lens, True, "cpu")
    ups = torch.randn_like(y), torch.randn_like(h)
    ga = torch.autograd.grad((y * ups[0]).sum() + (h * ups[1]).sum(), args[:2])
    ye, he = run_reference(kind, args, lens, True)
    ge = torch.autograd.grad((ye * ups[0]).sum() + (he * ups[1]).sum(), args[:2])
    for name, a, e in zip(("dx", "dh0"), ga, ge):
        assert_close(a, e, name)


@pytest.mark.parametrize("kind", KINDS)
def test_opcheck(kind):
    if ops_lstm._C_ERROR is not None:
        pytest.skip(ops_lstm._C_ERROR)
    args = layer_args(kind, 4, 3, 5, 6)
    lens = torch.tensor([4, 1, 3])
    if kind == "gru":
        op, extra = torch.ops.fused_s2s.gru_layer_fwd.default, (True,)
    else:
        op, extra = torch.ops.fused_s2s.rnn_layer_fwd.default, (kind.removeprefix("rnn_"),)
    torch.library.opcheck(op, (*args, lens, True, *extra))
    torch.library.opcheck(op, (*args, None, False, *extra))


def test_nan_in_nan_out_like_the_reference():
    if ops_lstm._C_ERROR is not None:
        pytest.skip(ops_lstm._C_ERROR)
    for kind in KINDS:
        args = [a.detach() for a in layer_args(kind, 4, 2, 3, 5)]
        args[0][1, 0, 1] = float("nan")
        y, h = run_layer(kind, args, None, False, "cpu")
        ye, he = run_reference(kind, args, None, False)
        assert torch.equal(y.isnan(), ye.isnan()) and y[1:, 0].isnan().all() and not y[:, 1].isnan().any(), kind
        assert torch.equal(h.isnan(), he.isnan()), kind


# ---- the module contract ----

@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_parameters_init_and_repr_like_torch(kind):
    ref, ours = make_pair(kind, "cpu", num_layers=2, bidirectional=True, bias=False)
    assert [(n, p.shape) for n, p in ref.named_parameters()] == [(n, p.shape) for n, p in ours.named_parameters()]
    torch.manual_seed(3)
    a = make_pair(kind, "cpu", num_layers=2)[0]
    torch.manual_seed(3)
    b = (FusedGRU(I, H, num_layers=2) if kind == "gru"
         else FusedRNN(I, H, num_layers=2, nonlinearity=kind.removeprefix("rnn_")))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), f"init of {n}"
    ref, ours = make_pair(kind, "auto", num_layers=2, bidirectional=True, bias=False, batch_first=True)
    assert repr(ref).replace(type(ref).__name__, "") == repr(ours).replace(type(ours).__name__, "")


@pytest.mark.parametrize("kind", KINDS)
def test_autocast_bf16_gives_nn_modules_dtypes(kind):
    ref, ours = make_pair(kind, "cpu")
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e, a = ref(x), ours(x)
    for name, ta, te in zip(("output", "h_n"), a, e):
        assert ta.dtype == te.dtype, name
        assert_close(ta.float(), te.float(), name, rtol=3e-2, atol=3e-2)


def test_dropout_between_layers_in_training_only():
    _, ours = make_pair("gru", "cpu", num_layers=2, dropout=0.5)
    x = torch.randn(T, B, I)
    eval_out = ours(x)[0]
    ours.train()
    assert not torch.allclose(ours(x)[0], eval_out)
    ours.eval()
    assert torch.equal(ours(x)[0], eval_out)


BAD_INPUTS = [
    ("4-D input", lambda m: m(torch.randn(2, 3, 4, I))),
    ("wrong feature size", lambda m: m(torch.randn(T, B, I + 1))),
    ("wrong dtype", lambda m: m(torch.randn(T, B, I, dtype=torch.float64))),
    ("2-D hx with 3-D input", lambda m: m(torch.randn(T, B, I), torch.randn(B, H))),
    ("3-D hx with 2-D input", lambda m: m(torch.randn(T, I), torch.randn(1, 1, H))),
    ("wrong hx size", lambda m: m(torch.randn(T, B, I), torch.randn(1, B + 1, H))),
]


@pytest.mark.parametrize("what,call", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_is_the_torch_modules_error(kind, what, call):
    ref, ours = make_pair(kind, "cpu")
    with pytest.raises(Exception) as expected:
        call(ref)
    with pytest.raises(type(expected.value)) as actual:
        call(ours)
    assert str(actual.value) == str(expected.value), what


def test_constructor_errors_like_torch():
    for make in (lambda m: m(I, H, proj_size=2), lambda m: m(I, 0), lambda m: m(I, H, dropout=2)):
        for ref_cls, ours_cls in ((nn.GRU, FusedGRU), (nn.RNN, FusedRNN)):
            with pytest.raises(Exception) as expected:
                make(ref_cls)
            with pytest.raises(type(expected.value), match=str(expected.value)[:30].replace("(", ".").replace(")", ".")):
                make(ours_cls)
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'. Select from 'tanh' or 'relu'."):
        FusedRNN(I, H, nonlinearity="gelu")
    if os.environ.get("TRITON_INTERPRET") != "1":  # Triton on CPU tensors runs only under its interpreter
        with pytest.raises(RuntimeError, match="backend 'triton' is unavailable: on CPU tensors"):
            FusedGRU(I, H, backend="triton")(torch.randn(T, B, I))


def test_replace_rnns_swaps_exact_types_and_keeps_parameters():
    class MyGRU(nn.GRU):
        pass

    model = nn.ModuleDict(dict(lstm=nn.LSTM(I, H), gru=nn.GRU(I, H, num_layers=2), rnn=nn.RNN(I, H, nonlinearity="relu"),
                               sub=MyGRU(I, H), head=nn.Linear(H, 2)))
    model.alias = model["gru"]
    params = {n: p for n, p in model.named_parameters()}
    x = torch.randn(T, B, I)
    before = {k: model[k](x)[0] for k in ("lstm", "gru", "rnn")}
    replace_rnns(model, backend="cpu")
    assert type(model["lstm"]) is FusedLSTM and type(model["gru"]) is FusedGRU and type(model["rnn"]) is FusedRNN
    assert type(model["sub"]) is MyGRU and model.alias is model["gru"] and model["rnn"].nonlinearity == "relu"
    assert all(p is params[n] for n, p in model.named_parameters())
    for k, e in before.items():
        assert_close(model[k](x)[0], e, k)
    assert type(replace_rnns(nn.GRU(I, H))) is FusedGRU
    gru = nn.GRU(I, H)
    copy = FusedGRU.from_gru(gru)
    assert all(p is not q and torch.equal(p, q) for p, q in zip(gru.parameters(), copy.parameters()))
    rnn = nn.RNN(I, H, nonlinearity="relu")
    assert FusedRNN.from_rnn(rnn).nonlinearity == "relu"
    with pytest.raises(TypeError, match="expected a torch.nn.GRU"):
        FusedGRU.from_gru(rnn)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
@pytest.mark.parametrize("kind", KINDS)
def test_torch_compile_fullgraph_matches_eager(kind):
    torch._dynamo.reset()
    _, ours = make_pair(kind, "cpu", num_layers=2, bidirectional=True, batch_first=True)
    x, lengths = torch.randn(3, 4, I), torch.tensor([2, 4, 1])

    def loss(x):
        y, h = ours(x, lengths=lengths)
        return y.square().sum() + h.sum()

    eager = loss(x)
    eager_grads = torch.autograd.grad(eager, list(ours.parameters()))
    compiled = torch.compile(loss, fullgraph=True)
    out = compiled(x)
    grads = torch.autograd.grad(out, list(ours.parameters()))
    assert_close(out, eager, "loss")
    for (name, _), a, e in zip(ours.named_parameters(), grads, eager_grads):
        assert_close(a, e, f"d_{name}")


def test_public_names():
    assert fused_s2s.FusedGRU is FusedGRU and fused_s2s.FusedRNN is FusedRNN
    assert callable(fused_s2s.replace_rnns) and callable(fused_s2s.ops.gru_layer) and callable(fused_s2s.ops.rnn_layer)
