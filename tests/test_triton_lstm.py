"""The Triton LSTM kernels (backend="triton") against the reference and nn.LSTM: every kernel (persistent and
per-step forward, backward), outputs and all gradients, fp32/fp16/bf16 (and fp64 for gradcheck), lengths,
proj_size, bidirectional stacks through FusedLSTM.

Runs under TRITON_INTERPRET=1 on CPU tensors (scripts/test.sh gives it its own process), or natively on CUDA
tensors when a GPU is present. Outputs are NaN-filled before each launch (conftest sets
FUSED_S2S_POISON_BUFFERS=1), so an element a kernel never writes fails a comparison.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from fused_s2s import FusedLSTM
from fused_s2s.ops import lstm_layer
from fused_s2s.reference.lstm import lstm_layer as reference_layer
from tests.test_ops import (FROZEN, assert_16bit_as_accurate_as_torch, assert_bwd_without_weights_matches,
                            assert_layer_matches_reference, differentiable, make_layer_args, with_frozen)
from tests.utils import assert_close, case_id

pytestmark = pytest.mark.triton_interpret

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
KERNELS = ("persistent", "per_step")


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    """Forces one forward kernel (the selection rule is tested separately)."""
    monkeypatch.setenv("FUSED_S2S_TRITON_LSTM_KERNEL", request.param)
    return request.param


def on_device(args):
    """make_layer_args' tuple moved to DEVICE, keeping requires_grad leaves (lengths stay on the CPU)."""
    out = []
    for k, a in enumerate(args):
        if isinstance(a, torch.Tensor) and k != 8:
            a = a.detach().to(DEVICE).requires_grad_(a.requires_grad)
        out.append(a)
    return tuple(out)


# H 37 and P 7 leave partial blocks; B 20 spans two batch tiles of 16; T 1 is a single step.
CASES = [
    dict(T=6, B=3, I=5, H=6, P=0),
    dict(T=5, B=20, I=7, H=37, P=0),
    dict(T=5, B=3, I=5, H=6, P=4),
    dict(T=4, B=20, I=4, H=37, P=7),
    dict(T=1, B=2, I=3, H=5, P=0),
]


@pytest.mark.parametrize("lengths", [False, True], ids=["dense", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(**c) for c in CASES])
def test_triton_matches_reference_fp32(case, bias, reverse, lengths, kernel):
    assert_layer_matches_reference(on_device(make_layer_args(**case, bias=bias, lengths=lengths, reverse=reverse)),
                                   "triton")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", [
    dict(T=6, B=3, I=5, H=19, P=0, lengths=True, reverse=False),
    dict(T=5, B=18, I=4, H=9, P=5, lengths=True, reverse=True),
], ids=lambda c: case_id(**c))
def test_triton_16bit_as_accurate_as_torch_in_that_dtype(case, dtype):
    """Outputs and gradients within twice torch's own error in that dtype (assert_16bit_as_accurate_as_torch)."""
    assert_16bit_as_accurate_as_torch(case, dtype, "triton", on_device)


@pytest.mark.parametrize("case", [
    dict(T=4, B=3, I=3, H=4, P=0, lengths=False, reverse=False),
    dict(T=4, B=3, I=3, H=4, P=0, lengths=True, reverse=True),
    dict(T=3, B=3, I=2, H=4, P=2, lengths=True, reverse=False),
], ids=lambda c: case_id(**c))
def test_triton_gradcheck_float64(case, kernel):
    args = on_device(make_layer_args(**case, dtype=torch.float64))

    def fn(*diff):
        it = iter(diff)
        full = [next(it) if isinstance(a, torch.Tensor) and a.requires_grad else a for a in args]
        return lstm_layer(*full, backend="triton")

    assert torch.autograd.gradcheck(fn, differentiable(args), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("P,lengths", [(0, False), (3, True)], ids=["plain", "proj-lengths"])
def test_triton_opcheck(P, lengths):
    args = on_device(make_layer_args(T=4, B=3, I=5, H=6, P=P, lengths=lengths, reverse=True, dtype=torch.float64))
    torch.library.opcheck(torch.ops.fused_s2s.triton_lstm_layer_fwd.default, (*args, True))
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lens, reverse = plain
    y, h_n, c_n, gates, cells = torch.ops.fused_s2s.triton_lstm_layer_fwd(*plain, True)
    bwd_args = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), x, h0, c0, w_ih, w_hh, w_hr,
                lens, reverse, y, gates, cells, True, True)
    torch.library.opcheck(torch.ops.fused_s2s.triton_lstm_layer_bwd.default, bwd_args)
    torch.library.opcheck(torch.ops.fused_s2s.triton_lstm_layer_bwd.default, (*bwd_args[:-2], False, False))


@pytest.mark.parametrize("frozen", FROZEN.values(), ids=FROZEN.keys())
@pytest.mark.parametrize("P", [0, 3], ids=["plain", "proj"])
def test_triton_frozen_weights_match_reference(P, frozen):
    args = with_frozen(on_device(make_layer_args(T=6, B=4, I=5, H=7, P=P, lengths=True, reverse=True)), frozen)
    assert_layer_matches_reference(args, "triton")


def test_triton_bwd_op_skips_weight_gradients():
    assert_bwd_without_weights_matches(torch.ops.fused_s2s.triton_lstm_layer_bwd,
                                       torch.ops.fused_s2s.triton_lstm_layer_fwd, fwd_extra=(True,), place=on_device)


def test_triton_without_grad_saves_nothing_and_matches():
    args = on_device(make_layer_args(T=5, B=4, I=3, H=7, P=0, lengths=True, requires_grad=False))
    out = torch.ops.fused_s2s.triton_lstm_layer_fwd(*args, False)
    assert out[3].numel() == 0 and out[4].numel() == 0
    for name, a, e in zip(("y", "h_n", "c_n"), out[:3], reference_layer(*args)):
        assert_close(a, e, name)


def test_triton_nan_in_means_nan_out():
    args = list(on_device(make_layer_args(T=6, B=3, I=4, H=5, P=0, requires_grad=False)))
    args[0][2, 1, 0] = float("nan")  # step 2 of sequence 1
    y, h_n, c_n = lstm_layer(*args, backend="triton")
    y_ref, h_ref, c_ref = reference_layer(*args)
    assert_close(y, y_ref, "y")
    assert y[2:, 1].isnan().all() and not y[:, [0, 2]].isnan().any()
    assert_close(h_n, h_ref, "h_n")


@pytest.mark.parametrize("kw", [
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, bidirectional=True, proj_size=3),
    dict(num_layers=1, bidirectional=False, bias=False),
], ids=lambda kw: case_id(**kw))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_fused_lstm_triton_matches_nn_lstm(kw, packed, kernel):
    ref = nn.LSTM(5, 6, batch_first=True, **kw).to(DEVICE)
    fused = FusedLSTM.from_lstm(ref, backend="triton")
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
    names = ["x"] + [n for n, _ in ref.named_parameters()]
    for name, a, e in zip(names, got, want):
        assert_close(a, e, f"grad {name}")


def test_triton_rejects_bad_input_like_the_cpu_op():
    args = list(on_device(make_layer_args(T=4, B=2, I=3, H=5, P=0, requires_grad=False)))
    for bad in (torch.tensor([5, 1]), torch.tensor([0, 2]), torch.tensor([2])):
        args[8] = bad
        with pytest.raises(RuntimeError, match="length"):
            lstm_layer(*args, backend="triton")
    args[8] = None
    args[1] = args[1][:, :4]  # h0 [B, H-1]
    with pytest.raises(RuntimeError, match=r"h0 must be \[2, 5\]"):
        lstm_layer(*args, backend="triton")


@pytest.mark.slow
def test_triton_under_torch_compile_fullgraph():
    lstm = FusedLSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True, backend="triton").to(DEVICE)
    x = torch.randn(3, 5, 4, device=DEVICE)
    lengths = torch.tensor([5, 2, 4])
    compiled = torch.compile(lstm, fullgraph=True)
    for a, e in zip(torch.utils._pytree.tree_leaves(compiled(x, lengths=lengths)),
                    torch.utils._pytree.tree_leaves(lstm(x, lengths=lengths))):
        assert_close(a, e, "compiled vs eager")


@pytest.mark.parametrize("case", [
    dict(T=6, B=3, I=5, H=13, P=0, lengths=True, reverse=False),
    dict(T=5, B=20, I=4, H=16, P=0, lengths=True, reverse=True),
    dict(T=4, B=2, I=3, H=7, P=0, lengths=False, reverse=False),
], ids=lambda c: case_id(**c))
def test_grid_persistent_kernel_single_program(case, monkeypatch):
    """The cross-program kernel with one program (H ≤ 16), the only grid the interpreter can run."""
    monkeypatch.setenv("FUSED_S2S_TRITON_LSTM_KERNEL", "grid_persistent")
    assert_layer_matches_reference(on_device(make_layer_args(**case)), "triton")


def test_grid_persistent_kernel_refuses_what_it_cannot_run(monkeypatch):
    monkeypatch.setenv("FUSED_S2S_TRITON_LSTM_KERNEL", "grid_persistent")
    args = on_device(make_layer_args(T=3, B=2, I=3, H=40, P=0, requires_grad=False))
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="deadlock"):
            lstm_layer(*args, backend="triton")
    args = on_device(make_layer_args(T=3, B=2, I=3, H=8, P=4, requires_grad=False))
    with pytest.raises(RuntimeError, match="proj_size"):
        lstm_layer(*args, backend="triton")


def test_selection_rule_and_override(monkeypatch):
    from fused_s2s.triton.lstm import FWD_CONFIGS, select_forward

    monkeypatch.delenv("FUSED_S2S_TRITON_LSTM_KERNEL", raising=False)
    cfg = FWD_CONFIGS[1]
    assert select_forward(B=64, H=128, P=128, config=cfg, sm_count=132) == "persistent"   # small W_hh
    assert select_forward(B=64, H=1024, P=1024, config=cfg, sm_count=132) == "per_step"   # few programs
    assert select_forward(B=2048, H=1024, P=1024, config=cfg, sm_count=132) == "persistent"  # batch fills
    monkeypatch.setenv("FUSED_S2S_TRITON_LSTM_KERNEL", "per_step")
    assert select_forward(B=64, H=128, P=128, config=cfg, sm_count=132) == "per_step"
    monkeypatch.setenv("FUSED_S2S_TRITON_LSTM_KERNEL", "bogus")
    with pytest.raises(ValueError, match="grid_persistent"):
        select_forward(B=64, H=128, P=128, config=cfg, sm_count=132)
