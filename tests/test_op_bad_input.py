"""Each fused_s2s:: C++ op called directly with bad arguments (wrong ranks, mismatched sizes, wrong dtypes,
lengths out of range or of the wrong type): a RuntimeError that names the problem, never a crash or an
out-of-bounds read (scripts/sanitize.sh runs this file under AddressSanitizer too)."""
from __future__ import annotations

import re

import pytest
import torch

from fused_s2s.ops import lstm as ops_lstm

pytestmark = pytest.mark.skipif(ops_lstm._C_ERROR is not None, reason=f"C++ backend: {ops_lstm._C_ERROR}")
ops = torch.ops.fused_s2s
T, B, I, H, S = 5, 3, 4, 6, 7


def lstm_args(**change):
    a = dict(x=torch.randn(T, B, I), h0=torch.zeros(B, H), c0=torch.zeros(B, H), w_ih=torch.randn(4 * H, I),
             w_hh=torch.randn(4 * H, H), b_ih=torch.randn(4 * H), b_hh=torch.randn(4 * H), w_hr=None, lengths=None,
             reverse=False)
    a.update(change)
    return a


LSTM_BAD = {
    "x 2-D": (dict(x=torch.randn(T, I)), "x must be [T, B, I]"),
    "w_ih wrong input size": (dict(w_ih=torch.randn(4 * H, I + 1)), "w_ih must be"),
    "w_ih rows not 4H": (dict(w_ih=torch.randn(4 * H + 1, I)), "w_ih must be"),
    "w_hh wrong size": (dict(w_hh=torch.randn(4 * H, H + 1)), "w_hh must be"),
    "h0 wrong batch": (dict(h0=torch.zeros(B + 1, H)), "h0 must be"),
    "c0 wrong hidden": (dict(c0=torch.zeros(B, H - 1)), "c0 must be"),
    "bias wrong size": (dict(b_ih=torch.randn(4 * H - 1)), "biases must be"),
    "half x": (dict(x=torch.randn(T, B, I).half()), "takes float32, float64 or"),
    "mixed dtypes": (dict(w_hh=torch.randn(4 * H, H, dtype=torch.float64)), "must match x's dtype"),
    "length 0": (dict(lengths=torch.tensor([T, 0, 2])), "every length must be in"),
    "length > T": (dict(lengths=torch.tensor([T, T + 1, 2])), "every length must be in"),
    "negative length": (dict(lengths=torch.tensor([T, -3, 2])), "every length must be in"),
    "float lengths": (dict(lengths=torch.tensor([5.0, 2.0, 1.0])), "integer tensor"),
    "lengths wrong count": (dict(lengths=torch.tensor([T, 2])), "lengths must be"),
    "w_hr wrong hidden": (dict(w_hr=torch.randn(2, H + 1), w_hh=torch.randn(4 * H, 2), h0=torch.zeros(B, 2)),
                          "w_hr must be"),
}


@pytest.mark.parametrize("op", ["lstm_layer_fwd", "lstm_layer_infer"])
@pytest.mark.parametrize("name", list(LSTM_BAD))
def test_lstm_forward_ops(op, name):
    change, message = LSTM_BAD[name]
    with pytest.raises(RuntimeError, match=re.escape(message)):
        getattr(ops, op)(**lstm_args(**change))


def good_backward_args():
    a = lstm_args()
    y, h_n, c_n, gates, cells = ops.lstm_layer_fwd(**a)
    return dict(dy=torch.randn_like(y), dh_n=torch.randn_like(h_n), dc_n=torch.randn_like(c_n), x=a["x"], h0=a["h0"],
                c0=a["c0"], w_ih=a["w_ih"], w_hh=a["w_hh"], w_hr=None, lengths=None, reverse=False, y=y, gates=gates,
                cells=cells, need_dx=True, need_dw=True)


BWD_BAD = {
    "dy wrong size": (lambda a: dict(dy=torch.randn(T, B, H + 1)), "saved tensors do not match"),
    "gates wrong size": (lambda a: dict(gates=a["gates"][:-1]), "saved tensors do not match"),
    "dh_n wrong batch": (lambda a: dict(dh_n=torch.randn(B - 1, H)), "dh_n must be"),
    "dc_n wrong hidden": (lambda a: dict(dc_n=torch.randn(B, H - 2)), "dc_n must be"),
    "dy other dtype": (lambda a: dict(dy=a["dy"].double()), "must match x's dtype"),
    "dh_n other dtype": (lambda a: dict(dh_n=a["dh_n"].double()), "must match x's dtype"),
    "gates other dtype": (lambda a: dict(gates=a["gates"].double()), "must match x's dtype"),
    "length out of range": (lambda a: dict(lengths=torch.tensor([T, 9, 1])), "every length must be in"),
}


@pytest.mark.parametrize("name", list(BWD_BAD))
def test_lstm_backward_op(name):
    args = good_backward_args()
    change, message = BWD_BAD[name]
    args.update(change(args))
    with pytest.raises(RuntimeError, match=re.escape(message)):
        ops.lstm_layer_bwd(**args)


def attention_args(**change):
    a = dict(query=torch.randn(B, 2, H), keys=torch.randn(B, S, H), values=torch.randn(B, S, 5), lengths=None, v=None,
             scale=1.0, return_weights=True)
    a.update(change)
    return a


ATTENTION_BAD = {
    "query 2-D": (dict(query=torch.randn(B, H)), "attention"),
    "keys other batch": (dict(keys=torch.randn(B + 1, S, H)), "batch sizes disagree"),
    "keys other features": (dict(keys=torch.randn(B, S, H + 1)), "feature size"),
    "values other source": (dict(values=torch.randn(B, S - 1, 5)), "source positions"),
    "empty source": (dict(keys=torch.randn(B, 0, H), values=torch.randn(B, 0, 5)), "at least one position"),
    "half": (dict(query=torch.randn(B, 2, H).half()), "attention"),
    "mixed dtypes": (dict(values=torch.randn(B, S, 5, dtype=torch.float64)), "attention"),
    "length 0": (dict(lengths=torch.tensor([S, 0, 1])), "every memory length must be in"),
    "length > S": (dict(lengths=torch.tensor([S, S + 1, 1])), "every memory length must be in"),
    "float lengths": (dict(lengths=torch.tensor([1.0, 2.0, 3.0])), "attention"),
    "lengths wrong count": (dict(lengths=torch.tensor([1, 2])), "memory_lengths must be"),
    "v wrong size": (dict(v=torch.randn(H + 1)), "attention"),
}


@pytest.mark.parametrize("name", list(ATTENTION_BAD))
def test_attention_forward_op(name):
    change, message = ATTENTION_BAD[name]
    with pytest.raises(RuntimeError, match=re.escape(message)):
        ops.attention_fwd(**attention_args(**change))


@pytest.mark.parametrize("name,message", [("d_context wrong size", "d_context and context must be"),
                                          ("context wrong size", "d_context and context must be"),
                                          ("lse wrong size", "lse must be"),
                                          ("d_context other dtype", "must match query's dtype")])
def test_attention_backward_op(name, message):
    a = attention_args()
    context, lse, _ = ops.attention_fwd(**a)
    args = dict(d_context=torch.randn_like(context), query=a["query"], keys=a["keys"], values=a["values"], lengths=None,
                v=None, scale=1.0, context=context, lse=lse)
    key = name.split()[0]
    if "dtype" in name:
        args[key] = args[key].double()
    else:
        args[key] = torch.randn(*[n + 1 for n in args[key].shape])
    with pytest.raises(RuntimeError, match=re.escape(message)):
        ops.attention_bwd(**args)


def step_args(**change):
    E, L = 4, 2
    a = dict(x=torch.randn(B, E), feed=None, h=torch.zeros(L, B, H), c=torch.zeros(L, B, H),
             w_cat=[torch.randn(4 * H, E + H), torch.randn(4 * H, 2 * H)], b_cat=[torch.randn(4 * H), None],
             score="dot", keys=torch.randn(B, S, H), scale=1.0, w_query=None, b_query=None, v=None,
             memory=torch.randn(B, S, H), lengths=None, w_out=torch.randn(H, 2 * H), b_out=None)
    a.update(change)
    return a


STEP_BAD = {
    "x other batch": (dict(x=torch.randn(B + 1, 4)), "expected x of size"),
    "h and c differ": (dict(c=torch.zeros(2, B, H + 1)), "h and c"),
    "one weight for two layers": (dict(w_cat=[torch.randn(4 * H, 4 + H)], b_cat=[None]), "decoder_step"),
    "layer weight wrong size": (dict(w_cat=[torch.randn(4 * H, 4 + H), torch.randn(4 * H, 2 * H + 1)]),
                                "expected layer 1"),
    "keys other source": (dict(keys=torch.randn(B, S - 1, H)), "expected keys of size"),
    "keys other features": (dict(keys=torch.randn(B, S, H + 1)), "dot scores need keys"),
    "unknown score": (dict(score="cosine"), "score must be 'dot' or 'additive'"),
    "additive without v": (dict(score="additive", w_query=torch.randn(3, H)), "additive scores need"),
    "half": (dict(x=torch.randn(B, 4).half()), "supports float32 and float64"),
    "length 0": (dict(lengths=torch.tensor([S, 0, 1])), "decoder_step"),
    "length > S": (dict(lengths=torch.tensor([S, S + 1, 1])), "decoder_step"),
    "float lengths": (dict(lengths=torch.tensor([1.0, 2.0, 3.0])), "decoder_step"),
    "w_out wrong size": (dict(w_out=torch.randn(H, 2 * H + 1)), "decoder_step"),
    "memory empty source": (dict(memory=torch.randn(B, 0, H), keys=torch.randn(B, 0, H)), "at least one source"),
}


@pytest.mark.parametrize("name", list(STEP_BAD))
def test_decoder_step_op(name):
    change, message = STEP_BAD[name]
    with pytest.raises(RuntimeError, match=re.escape(message)):
        ops.decoder_step(**step_args(**change))


def cell_args(op: str, **change):
    G = 3 if op.startswith("gru") else 1
    a = dict(x=torch.randn(T, B, I), h0=torch.zeros(B, H), w_ih=torch.randn(G * H, I), w_hh=torch.randn(G * H, H),
             b_ih=torch.randn(G * H), b_hh=torch.randn(G * H), lengths=None, reverse=False)
    a.update({"save": True} if op.startswith("gru") else {"nonlinearity": "tanh"})
    a.update(change)
    return a


CELL_BAD = {
    "x 2-D": (lambda G: dict(x=torch.randn(T, I)), "x must be [T, B, I]"),
    "w_ih wrong input size": (lambda G: dict(w_ih=torch.randn(G * H, I + 1)), "w_ih must be"),
    "w_hh wrong size": (lambda G: dict(w_hh=torch.randn(G * H, H + 1)), "w_hh must be"),
    "h0 wrong batch": (lambda G: dict(h0=torch.zeros(B + 1, H)), "h0 must be"),
    "bias wrong size": (lambda G: dict(b_hh=torch.randn(G * H - 1)), "biases must be"),
    "half x": (lambda G: dict(x=torch.randn(T, B, I).half()), "float32 or float64"),
    "mixed dtypes": (lambda G: dict(w_hh=torch.randn(G * H, H, dtype=torch.float64)), "must match x's dtype"),
    "length 0": (lambda G: dict(lengths=torch.tensor([T, 0, 2])), "every length must be in"),
    "length > T": (lambda G: dict(lengths=torch.tensor([T, T + 1, 2])), "every length must be in"),
    "float lengths": (lambda G: dict(lengths=torch.tensor([5.0, 2.0, 1.0])), "integer tensor"),
    "lengths wrong count": (lambda G: dict(lengths=torch.tensor([T, 2])), "lengths must be"),
}


@pytest.mark.parametrize("op", ["gru_layer_fwd", "rnn_layer_fwd"])
@pytest.mark.parametrize("name", list(CELL_BAD))
def test_cell_forward_ops(op, name):
    change, message = CELL_BAD[name]
    with pytest.raises(RuntimeError, match=re.escape(message)):
        getattr(ops, op)(**cell_args(op, **change(3 if op.startswith("gru") else 1)))
    if op == "rnn_layer_fwd" and name == "x 2-D":
        with pytest.raises(RuntimeError, match="Unknown nonlinearity 'gelu'"):
            ops.rnn_layer_fwd(**cell_args(op, nonlinearity="gelu"))


def good_cell_backward_args(op: str):
    a = cell_args(op)
    out = getattr(ops, op)(**a)
    y, h_n = out[0], out[1]
    args = dict(dy=torch.randn_like(y), dh_n=torch.randn_like(h_n), x=a["x"], h0=a["h0"], w_ih=a["w_ih"],
                w_hh=a["w_hh"], lengths=None, reverse=False, y=y, need_dx=True, need_dw=True)
    args.update({"saved": out[2]} if op.startswith("gru") else {"nonlinearity": "tanh"})
    return args


CELL_BWD_BAD = {
    "dy wrong size": (lambda a: dict(dy=torch.randn(T, B, H + 1)), "dy and y must be"),
    "y wrong steps": (lambda a: dict(y=a["y"][:-1]), "dy and y must be"),
    "dh_n wrong batch": (lambda a: dict(dh_n=torch.randn(B - 1, H)), "dh_n must be"),
    "dy other dtype": (lambda a: dict(dy=a["dy"].double()), "must match x's dtype"),
    "length out of range": (lambda a: dict(lengths=torch.tensor([T, 9, 1])), "every length must be in"),
}


# The RNN saves nothing but y; the GRU's saved [T, B, 4H] is checked too.
CELL_BWD_CASES = [(op, name) for op in ("gru_layer_fwd", "rnn_layer_fwd") for name in CELL_BWD_BAD]
CELL_BWD_CASES.append(("gru_layer_fwd", "saved wrong size"))


@pytest.mark.parametrize("op,name", CELL_BWD_CASES)
def test_cell_backward_ops(op, name):
    args = good_cell_backward_args(op)
    if name == "saved wrong size":
        change, message = dict(saved=args["saved"][:, :, 1:]), "saved must be"
    else:
        change, message = CELL_BWD_BAD[name][0](args), CELL_BWD_BAD[name][1]
    args.update(change)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        getattr(ops, op.replace("_fwd", "_bwd"))(**args)


def test_the_good_calls_run():
    """The baselines the bad calls above change one thing of: they run (so each error is about that thing)."""
    ops.lstm_layer_fwd(**lstm_args())
    ops.lstm_layer_infer(**lstm_args(lengths=torch.tensor([T, 1, 3])))
    ops.lstm_layer_bwd(**good_backward_args())
    ops.attention_fwd(**attention_args(lengths=torch.tensor([S, 1, 3])))
    ops.decoder_step(**step_args(lengths=torch.tensor([S, 1, 3])))
    for op in ("gru_layer_fwd", "rnn_layer_fwd"):
        getattr(ops, op)(**cell_args(op, lengths=torch.tensor([T, 1, 3]), reverse=True))
        getattr(ops, op.replace("_fwd", "_bwd"))(**good_cell_backward_args(op))
