"""The Triton GRU and Elman RNN kernels (backend="triton") against the reference and nn.GRU / nn.RNN: outputs and
all gradients, fp32 vs the fp64 reference, fp16/bf16 vs the fp32 reference, fp64 gradcheck, lengths, reverse,
bias on/off, opcheck, FusedGRU/FusedRNN (stacks, directions, PackedSequence).

Runs under TRITON_INTERPRET=1 on CPU tensors (scripts/test.sh gives it its own process), or natively on CUDA
tensors when a GPU is present. Outputs are NaN-filled before each launch (conftest sets
FUSED_S2S_POISON_BUFFERS=1), so an element a kernel never writes fails a comparison.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from fused_s2s import FusedGRU, FusedRNN
from fused_s2s.ops import cells as ops_cells
from fused_s2s.ops import lstm as ops_lstm
from tests.test_cells import layer_args, run_layer, run_reference
from tests.utils import assert_close, case_id, tolerance

pytestmark = pytest.mark.triton_interpret

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
KINDS = ("gru", "rnn_tanh", "rnn_relu")
GRAD_NAMES = ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")


def make_args(kind: str, T: int, B: int, I: int, H: int, dtype=torch.float32, bias: bool = True):
    """x, h0, w_ih, w_hh, b_ih, b_hh on DEVICE, requires_grad leaves (tests/test_cells.py's draw)."""
    return [None if a is None else a.detach().to(DEVICE).requires_grad_()
            for a in layer_args(kind, T, B, I, H, dtype=dtype, bias=bias)]


def make_lengths(T: int, B: int) -> torch.Tensor:
    """On the CPU, as the modules pass them; the longest and the shortest sequence are always there."""
    lens = torch.randint(1, T + 1, (B,))
    lens[0] = T
    lens[-1] = 1
    return lens


def outputs_and_grads(fn, args, upstream):
    """fn(*args)'s (y, h_n) and the gradients of sum(out · upstream) w.r.t. every argument that requires grad."""
    out = fn(*args)
    leaves = [a for a in args if a is not None and a.requires_grad]
    grads = torch.autograd.grad(sum((o * u.to(o)).sum() for o, u in zip(out, upstream)), leaves)
    return list(out), list(grads)


def assert_matches(kind, args, lengths, reverse, ref_dtype=torch.float64, scale_atol=False):
    """The Triton layer on args vs the reference on args cast to ref_dtype (on the CPU): y, h_n and every gradient,
    within the tolerances of args' dtype (tests/utils.py); scale_atol multiplies atol by max(1, max |expected|)."""
    dtype = args[0].dtype
    rtol, atol = tolerance(dtype)
    ref_args = [None if a is None else a.detach().cpu().to(ref_dtype).requires_grad_(a.requires_grad) for a in args]
    T, B, H = args[0].shape[0], args[0].shape[1], args[3].shape[1]
    upstream = [torch.randn(T, B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)]
    out, grads = outputs_and_grads(lambda *a: run_layer(kind, a, lengths, reverse, "triton"), args, upstream)
    ref_out, ref_grads = outputs_and_grads(lambda *a: run_reference(kind, a, lengths, reverse), ref_args, upstream)
    names = ["y", "h_n"] + [n for n, a in zip(GRAD_NAMES, args) if a is not None and a.requires_grad]
    assert len(out + grads) == len(names)
    for name, a, e in zip(names, out + grads, ref_out + ref_grads):
        assert a.dtype == dtype and a.device.type == torch.device(DEVICE).type, name
        scale = max(1.0, e.abs().max().item()) if scale_atol else 1.0
        assert_close(a.cpu().to(ref_dtype), e, name, rtol=rtol, atol=atol * scale)


# B 20 spans two batch tiles of 16; H 37 leaves a partial unit block; T 1 is a single step.
SHAPES = [dict(T=6, B=3, I=5, H=6, bias=False), dict(T=5, B=20, I=7, H=37, bias=True),
          dict(T=1, B=2, I=3, H=5, bias=True)]


@pytest.mark.parametrize("lengths,reverse", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["dense-fwd", "dense-rev", "lengths-fwd", "lengths-rev"])
@pytest.mark.parametrize("shape", SHAPES, ids=[case_id(**s) for s in SHAPES])
@pytest.mark.parametrize("kind", KINDS)
def test_triton_fp32_matches_fp64_reference(kind, shape, lengths, reverse):
    args = make_args(kind, shape["T"], shape["B"], shape["I"], shape["H"], bias=shape["bias"])
    assert_matches(kind, args, make_lengths(shape["T"], shape["B"]) if lengths else None, reverse)


@pytest.mark.parametrize("which", ["b_ih", "b_hh"])
@pytest.mark.parametrize("kind", ["gru", "rnn_tanh"])
def test_triton_one_bias_only(kind, which):
    """The GRU splits b_hh (r, z rows into the input projection, n rows inside the reset product): each bias
    alone must still land in the right place."""
    args = make_args(kind, 4, 3, 5, 7)
    args[5 if which == "b_ih" else 4] = None
    assert_matches(kind, args, make_lengths(4, 3), True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("kind", ["gru", "rnn_tanh"])
def test_triton_16bit_matches_fp32_reference(kind, dtype):
    """Native 16-bit kernels (fp32 accumulation and state) vs the fp32 reference on the same rounded inputs.
    Gradients sum over T·B products of 16-bit operands, hence the absolute part scaled by their magnitude."""
    args = make_args(kind, 6, 18, 5, 19, dtype=dtype)
    assert_matches(kind, args, make_lengths(6, 18), True, ref_dtype=torch.float32, scale_atol=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_triton_16bit_relu_matches_fp32(dtype):
    """relu's derivative jumps at 0: where a pre-activation lies within 16-bit rounding of 0, the kernel and an
    fp32 computation can take different sides (torch's own bf16 nn.RNN does too) and a gradient then differs by
    a whole term. So the outputs are compared with the fp32 reference, and the gradients with the fp32 C++
    backward op fed the kernel's own y, which fixes the same relu mask for both. As for the other cells the
    absolute tolerance scales with the magnitude: relu does not bound h, and under the interpreter bf16
    conversions truncate (fused_s2s/triton/cells.py), a bias the unsquashed recurrence accumulates."""
    if ops_lstm._C_ERROR is not None:
        pytest.skip(ops_lstm._C_ERROR)
    T, B, H = 6, 18, 19
    args = [a.detach() for a in make_args("rnn_relu", T, B, 5, H, dtype=dtype)]
    lens = make_lengths(T, B)
    rtol, atol = tolerance(dtype)
    y, h_n = torch.ops.fused_s2s.triton_rnn_layer_fwd(*args, lens, True, "relu")
    expected = run_reference("rnn_relu", [t.cpu().float() for t in args], lens, True)
    for name, a, e in zip(("y", "h_n"), (y, h_n), expected):
        assert a.dtype == dtype, name
        assert_close(a.cpu().float(), e, name, rtol=rtol, atol=atol * max(1.0, e.abs().max().item()))
    x, h0, w_ih, w_hh, _, _ = args
    grads = (torch.randn_like(y), torch.randn_like(h_n))
    got = torch.ops.fused_s2s.triton_rnn_layer_bwd(*grads, x, h0, w_ih, w_hh, lens, True, y, "relu", True, True)
    want = torch.ops.fused_s2s.rnn_layer_bwd(*(t.cpu().float() for t in (*grads, x, h0, w_ih, w_hh)), lens, True,
                                             y.cpu().float(), "relu", True, True)
    for name, a, e in zip(("dx", "dh0", "dw_ih", "dw_hh", "db"), got, want):
        assert a.dtype == dtype, name
        assert_close(a.cpu().float(), e, name, rtol=rtol, atol=atol * max(1.0, e.abs().max().item()))


@pytest.mark.parametrize("kind,lengths,reverse", [("gru", True, True), ("gru", False, False),
                                                  ("rnn_tanh", True, False), ("rnn_relu", True, True)],
                         ids=lambda v: str(v))
def test_triton_gradcheck_float64(kind, lengths, reverse):
    args = make_args(kind, 3, 3, 2, 4, dtype=torch.float64)
    lens = torch.tensor([3, 1, 2]) if lengths else None
    assert torch.autograd.gradcheck(lambda *a: run_layer(kind, a, lens, reverse, "triton"), tuple(args),
                                    eps=1e-6, atol=1e-7, fast_mode=True)


def test_triton_frozen_weights_skip_dw_and_keep_dx():
    for kind in KINDS:
        args = make_args(kind, 5, 4, 3, 6)
        for w in args[2:]:
            w.requires_grad_(False)
        assert_matches(kind, args, torch.tensor([5, 1, 3, 4]), True)


def test_triton_bwd_ops_without_weight_gradients():
    """need_dw=False returns empty weight gradients and the same dx, dh0 as need_dw=True."""
    lens = torch.tensor([4, 2, 3])
    for kind in KINDS:
        x, h0, w_ih, w_hh, b_ih, b_hh = (a.detach() for a in make_args(kind, 4, 3, 5, 6))
        if kind == "gru":
            y, h_n, saved = torch.ops.fused_s2s.triton_gru_layer_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lens, False, True)
            bwd, last = torch.ops.fused_s2s.triton_gru_layer_bwd, saved
        else:
            y, h_n = torch.ops.fused_s2s.triton_rnn_layer_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lens, False,
                                                              kind.removeprefix("rnn_"))
            bwd, last = torch.ops.fused_s2s.triton_rnn_layer_bwd, kind.removeprefix("rnn_")
        common = (torch.randn_like(y), torch.randn_like(h_n), x, h0, w_ih, w_hh, lens, False, y, last, True)
        full, no_dw = bwd(*common, True), bwd(*common, False)
        for name, a, e in zip(("dx", "dh0"), no_dw[:2], full[:2]):
            assert_close(a, e, f"{kind} {name}")
        assert all(t.numel() == 0 for t in no_dw[2:]), kind


def test_triton_gru_without_grad_saves_nothing():
    x, h0, w_ih, w_hh, b_ih, b_hh = (a.detach() for a in make_args("gru", 3, 2, 4, 5))
    y, h_n, saved = torch.ops.fused_s2s.triton_gru_layer_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, None, False, False)
    assert saved.numel() == 0
    _, _, saved = torch.ops.fused_s2s.triton_gru_layer_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, None, False, True)
    assert saved.shape == (3, 2, 20) and saved.dtype == torch.float32


def test_triton_nan_in_means_nan_out():
    for kind in KINDS:
        args = [a.detach() for a in make_args(kind, 4, 2, 3, 5)]
        args[0][1, 0, 1] = float("nan")
        y, h = run_layer(kind, args, None, False, "triton")
        ye, he = run_reference(kind, [a.cpu() for a in args], None, False)
        assert torch.equal(y.isnan().cpu(), ye.isnan()) and y[1:, 0].isnan().all() and not y[:, 1].isnan().any(), kind
        assert torch.equal(h.isnan().cpu(), he.isnan()), kind


def test_triton_opcheck():
    lens = torch.tensor([4, 1, 3])
    for kind in KINDS:
        args = make_args(kind, 4, 3, 5, 6, dtype=torch.float64)
        if kind == "gru":
            op, extra = torch.ops.fused_s2s.triton_gru_layer_fwd.default, (True,)
        else:
            op, extra = torch.ops.fused_s2s.triton_rnn_layer_fwd.default, (kind.removeprefix("rnn_"),)
        torch.library.opcheck(op, (*args, lens, True, *extra))
        if kind != "rnn_relu":  # the dense, forward-direction, no-bias variant once per op
            torch.library.opcheck(op, (*args[:4], None, None, None, False, *extra))


def test_triton_ops_have_the_cpu_ops_schemas():
    if ops_lstm._C_ERROR is not None:
        pytest.skip(ops_lstm._C_ERROR)
    for name in ("gru_layer_fwd", "gru_layer_bwd", "rnn_layer_fwd", "rnn_layer_bwd"):
        cpu = str(getattr(torch.ops.fused_s2s, name).default._schema)
        triton = str(getattr(torch.ops.fused_s2s, f"triton_{name}").default._schema)
        assert triton == cpu.replace(f"fused_s2s::{name}", f"fused_s2s::triton_{name}")


def test_backend_resolution():
    device = torch.device(DEVICE)
    assert ops_cells.resolve_cell_backend("triton", device) == "triton"
    assert ops_cells.resolve_cell_backend("auto", device) == ("triton" if DEVICE == "cuda" else "cpu")


def test_triton_rejects_bad_input_like_the_cpu_op():
    args = [a.detach() for a in make_args("gru", 4, 2, 3, 5)]
    for bad in (torch.tensor([5, 1]), torch.tensor([0, 2]), torch.tensor([2])):
        with pytest.raises(RuntimeError, match="length"):
            run_layer("gru", args, bad, False, "triton")
    args[1] = args[1][:, :4]
    with pytest.raises(RuntimeError, match=r"gru_layer: h0 must be \[2, 5\]"):
        run_layer("gru", args, None, False, "triton")
    with pytest.raises(RuntimeError, match="Unknown nonlinearity 'gelu'"):
        torch.ops.fused_s2s.triton_rnn_layer_fwd(*[a.detach() for a in make_args("rnn_tanh", 2, 2, 3, 4)], None,
                                                 False, "gelu")


MODULE_CASES = [("gru", dict(num_layers=2, bidirectional=True)), ("rnn_tanh", dict(num_layers=1, bidirectional=True)),
                ("rnn_relu", dict(num_layers=2, bidirectional=False, bias=False))]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind,kw", MODULE_CASES, ids=[f"{k}-{case_id(**kw)}" for k, kw in MODULE_CASES])
def test_fused_module_triton_matches_torch_module(kind, kw, packed):
    if kind == "gru":
        ref = nn.GRU(5, 6, batch_first=True, **kw).to(DEVICE)
        fused = FusedGRU.from_gru(ref, backend="triton")
    else:
        ref = nn.RNN(5, 6, nonlinearity=kind.removeprefix("rnn_"), batch_first=True, **kw).to(DEVICE)
        fused = FusedRNN.from_rnn(ref, backend="triton")
    x = torch.randn(4, 7, 5, device=DEVICE, requires_grad=True)
    D = 2 if kw["bidirectional"] else 1
    hx = torch.randn(kw["num_layers"] * D, 4, 6, device=DEVICE, requires_grad=True)
    lengths = torch.tensor([7, 3, 5, 1])
    if packed:  # OpenNMT-py's encoder path
        inp = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        (y_f, h_f), (y_r, h_r) = fused(inp, hx), ref(inp, hx)
        y_f, y_r = y_f.data, y_r.data
    else:
        (y_f, h_f), (y_r, h_r) = fused(x, hx), ref(x, hx)
    for name, a, e in (("output", y_f, y_r), ("h_n", h_f, h_r)):
        assert_close(a, e, name)
    grads = [torch.randn_like(t) for t in (y_r, h_r)]
    got = torch.autograd.grad((y_f, h_f), [x, hx] + list(fused.parameters()), grads, retain_graph=True)
    want = torch.autograd.grad((y_r, h_r), [x, hx] + list(ref.parameters()), grads)
    names = ["x", "hx"] + [n for n, _ in ref.named_parameters()]
    for name, a, e in zip(names, got, want):
        assert_close(a, e, f"grad {name}")
