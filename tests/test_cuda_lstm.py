"""The CUDA C++ LSTM kernels (backend="cuda": csrc/cuda/lstm_persistent.cu through csrc/cuda_bindings/lstm_cuda.cu)
against the reference and nn.LSTM (cuDNN): outputs and every gradient, fp32/bf16/fp16, lengths, reverse,
bidirectional stacks, the stated fallback to Triton, and opcheck of the two ops.

Needs a CUDA GPU and fused_s2s._C built against a CUDA torch (scripts/gpu_check.sh does both); elsewhere the
whole module skips, saying which is missing. The CPU-side dispatch and its errors are tested in
tests/test_cuda_lstm_dispatch.py; the kernels themselves also run on the CPU in tests/test_cuda_harness.py.
Written without a GPU (2026-12-05): these tests had not run on one when they were committed.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fused_s2s import FusedLSTM
from fused_s2s.ops import lstm as lstm_ops
from fused_s2s.ops import lstm_layer
from fused_s2s.ops.lstm_cuda import cuda_kernels_built
from fused_s2s.reference.lstm import lstm_layer as reference_layer
from tests.test_ops import (FROZEN, assert_16bit_as_accurate_as_torch, assert_layer_matches_reference, make_layer_args,
                            with_frozen)
from tests.utils import assert_close, case_id

if not torch.cuda.is_available():
    pytestmark = pytest.mark.skip(reason="no CUDA GPU: the CUDA C++ LSTM kernels run only on one")
elif not cuda_kernels_built():
    pytestmark = pytest.mark.skip(reason="fused_s2s._C has no CUDA kernels (built against a CPU torch or without "
                                         "nvcc): rebuild with `pip install --no-build-isolation .` on this machine")

DEVICE = "cuda"


def on_device(args):
    """make_layer_args' tuple on the GPU, keeping requires_grad leaves (lengths stay on the CPU, as the
    modules pass them)."""
    return tuple(a.detach().to(DEVICE).requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) and k != 8
                 else a for k, a in enumerate(args))


@pytest.fixture(autouse=True)
def _fresh_fallback_warnings(monkeypatch):
    """Each test sees the fallback warning afresh (it is stated once per process and kind of reason)."""
    monkeypatch.setattr(lstm_ops, "_FALLBACK_WARNED", set())


# H 37 leaves a short last CTA slice and B 20 pads the mma tile's n to 24; H 200 spreads over more CTAs than
# units per CTA; T 1 is a single step (the backward's last-step product without a loop step before it).
CASES = [
    dict(T=6, B=3, I=5, H=6, P=0),
    dict(T=5, B=20, I=7, H=37, P=0),
    dict(T=7, B=5, I=16, H=200, P=0),
    dict(T=1, B=2, I=3, H=5, P=0),
]


@pytest.mark.parametrize("lengths", [False, True], ids=["dense", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(**c) for c in CASES])
def test_cuda_matches_reference_fp32(case, bias, reverse, lengths):
    assert_layer_matches_reference(on_device(make_layer_args(**case, bias=bias, lengths=lengths, reverse=reverse)),
                                   "cuda")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", [
    dict(T=6, B=3, I=5, H=19, P=0, lengths=True, reverse=False),
    dict(T=5, B=18, I=4, H=40, P=0, lengths=True, reverse=True),
    dict(T=9, B=16, I=32, H=256, P=0, lengths=False, reverse=False),
], ids=lambda c: case_id(**c))
def test_cuda_16bit_as_accurate_as_torch_in_that_dtype(case, dtype):
    """Outputs and gradients within twice torch's own error in that dtype (assert_16bit_as_accurate_as_torch)."""
    assert_16bit_as_accurate_as_torch(case, dtype, "cuda", on_device)


@pytest.mark.parametrize("kw", [
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=1, bidirectional=False, bias=False),
], ids=lambda kw: case_id(**kw))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_fused_lstm_cuda_matches_nn_lstm(kw, packed):
    ref = nn.LSTM(5, 6, batch_first=True, **kw).to(DEVICE)
    fused = FusedLSTM.from_lstm(ref, backend="cuda")
    x = torch.randn(4, 7, 5, device=DEVICE, requires_grad=True)
    lengths = torch.tensor([7, 3, 5, 1])
    if packed:
        inp = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        (y_f, (h_f, c_f)), (y_r, (h_r, c_r)) = fused(inp), ref(inp)
        y_f, y_r = y_f.data, y_r.data
    else:
        (y_f, (h_f, c_f)), (y_r, (h_r, c_r)) = fused(x), ref(x)
    for name, a, e in (("output", y_f, y_r), ("h_n", h_f, h_r), ("c_n", c_f, c_r)):
        assert_close(a, e, name)
    grads = [torch.randn_like(t) for t in (y_r, h_r, c_r)]
    params_f, params_r = list(fused.parameters()), list(ref.parameters())
    got = torch.autograd.grad((y_f, h_f, c_f), [x] + params_f, grads, retain_graph=True)  # shared packing
    want = torch.autograd.grad((y_r, h_r, c_r), [x] + params_r, grads)
    for name, a, e in zip(["x"] + [n for n, _ in ref.named_parameters()], got, want):
        assert_close(a, e, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_fused_lstm_cuda_16bit_as_accurate_as_cudnn(dtype):
    """A 2-layer bidirectional FusedLSTM(backend="cuda") in bf16/fp16 is within 2× cuDNN's own error in that
    dtype (both against an fp64 nn.LSTM on the same rounded weights), outputs and input/weight gradients."""
    ref = nn.LSTM(24, 64, num_layers=2, bidirectional=True, batch_first=True).to(DEVICE, dtype)
    fused = FusedLSTM.from_lstm(ref, backend="cuda")
    ref64 = nn.LSTM(24, 64, num_layers=2, bidirectional=True, batch_first=True).to(DEVICE, torch.float64)
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    x = torch.randn(6, 11, 24, device=DEVICE, dtype=dtype)
    g = torch.randn(6, 11, 128, device=DEVICE, dtype=torch.float64)

    def run(module, inp):
        inp = inp.detach().requires_grad_()
        y, _ = module(inp)
        dx, dw = torch.autograd.grad(y, [inp, module.weight_hh_l0], g.to(y.dtype))
        return y, dx, dw

    for name, got, own, want in zip(("output", "dx", "dW_hh_l0"), run(fused, x), run(ref, x), run(ref64, x.double())):
        assert got.dtype == dtype, name
        err, own_err = (got.double() - want).abs().max().item(), (own.double() - want).abs().max().item()
        floor = 2e-3 * (1 + want.abs().max().item())
        assert err <= 2 * own_err + floor, f"{name}: error {err:.3e} vs cuDNN-{dtype} error {own_err:.3e}"


@pytest.mark.parametrize("frozen", FROZEN.values(), ids=FROZEN.keys())
def test_cuda_frozen_weights_match_reference(frozen):
    args = with_frozen(on_device(make_layer_args(T=6, B=4, I=5, H=7, P=0, lengths=True, reverse=True)), frozen)
    assert_layer_matches_reference(args, "cuda")


def test_cuda_without_grad_saves_nothing_and_matches():
    args = on_device(make_layer_args(T=5, B=4, I=3, H=7, P=0, lengths=True, requires_grad=False))
    out = torch.ops.fused_s2s.cuda_lstm_layer_fwd(*args, False)
    assert out[3].numel() == 0 and out[4].numel() == 0
    for name, a, e in zip(("y", "h_n", "c_n"), out[:3], reference_layer(*args)):
        assert_close(a, e, name)


def test_cuda_bwd_op_skips_weight_gradients():
    args = on_device(make_layer_args(T=5, B=3, I=4, H=6, P=0, lengths=True, requires_grad=False))
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lens, reverse = args
    y, h_n, c_n, gates, cells = torch.ops.fused_s2s.cuda_lstm_layer_fwd(*args, True)
    common = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), x, h0, c0, w_ih, w_hh, w_hr, lens,
              reverse, y, gates, cells, True)
    full, no_dw = torch.ops.fused_s2s.cuda_lstm_layer_bwd(*common, True), \
        torch.ops.fused_s2s.cuda_lstm_layer_bwd(*common, False)
    for name, a, e in zip(("dx", "dh0", "dc0"), no_dw[:3], full[:3]):
        assert_close(a, e, name)
    assert all(g.numel() == 0 for g in no_dw[3:]) and all(g.numel() > 0 for g in full[3:6])


def test_cuda_nan_in_means_nan_out():
    args = list(on_device(make_layer_args(T=6, B=3, I=4, H=5, P=0, requires_grad=False)))
    args[0][2, 1, 0] = float("nan")  # step 2 of sequence 1
    y, h_n, _ = lstm_layer(*args, backend="cuda")
    assert y[2:, 1].isnan().all() and not y[:, [0, 2]].isnan().any()
    assert h_n[1].isnan().all() and not h_n[[0, 2]].isnan().any()


@pytest.mark.parametrize("lengths", [False, True], ids=["plain", "lengths"])
def test_cuda_opcheck(lengths):
    args = on_device(make_layer_args(T=4, B=3, I=5, H=6, P=0, lengths=lengths, reverse=True))
    torch.library.opcheck(torch.ops.fused_s2s.cuda_lstm_layer_fwd.default, (*args, True))
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lens, reverse = plain
    y, h_n, c_n, gates, cells = torch.ops.fused_s2s.cuda_lstm_layer_fwd(*plain, True)
    bwd_args = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), x, h0, c0, w_ih, w_hh, w_hr,
                lens, reverse, y, gates, cells, True, True)
    torch.library.opcheck(torch.ops.fused_s2s.cuda_lstm_layer_bwd.default, bwd_args)
    torch.library.opcheck(torch.ops.fused_s2s.cuda_lstm_layer_bwd.default, (*bwd_args[:-2], False, False))


def test_cuda_proj_size_falls_back_to_triton_once_with_a_warning():
    ref = nn.LSTM(5, 6, proj_size=3, batch_first=True).to(DEVICE)
    fused = FusedLSTM.from_lstm(ref, backend="cuda")
    x = torch.randn(4, 7, 5, device=DEVICE)
    with pytest.warns(UserWarning, match="runs this LSTM layer on Triton instead: proj_size is not supported"):
        y, (h, c) = fused(x)
    y_r, (h_r, c_r) = ref(x)
    for name, a, e in (("output", y, y_r), ("h_n", h, h_r), ("c_n", c, c_r)):
        assert_close(a, e, name)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*on Triton instead")  # stated once: the second call is silent
        fused(x)


def test_cuda_shape_the_backward_plan_refuses_falls_back_to_triton():
    """B 64 × H 1024 in bf16: the forward's W_hh slice fits in shared memory, the backward's staged dgates
    [B, 4H] do not. Inference stays on CUDA; training says why and runs Triton (the same numbers as 'triton')."""
    H, B = 1024, 64
    args = on_device(make_layer_args(T=3, B=B, I=16, H=H, P=0, dtype=torch.bfloat16, requires_grad=False))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*on Triton instead")
        lstm_layer(*args, backend="cuda")  # no grad: the forward plan alone decides, and it fits
    grad_args = [a.requires_grad_() if isinstance(a, torch.Tensor) and k == 0 else a for k, a in enumerate(args)]
    with pytest.warns(UserWarning, match="persistent LSTM backward: B=64 H=1024 needs"):
        y, _, _ = lstm_layer(*grad_args, backend="cuda")
    y_triton, _, _ = lstm_layer(*grad_args, backend="triton")
    assert torch.equal(y, y_triton)


def test_cuda_op_refuses_proj_size_when_called_directly():
    args = on_device(make_layer_args(T=3, B=2, I=4, H=6, P=3, requires_grad=False))
    with pytest.raises(RuntimeError, match="do not support proj_size"):
        torch.ops.fused_s2s.cuda_lstm_layer_fwd(*args, False)
