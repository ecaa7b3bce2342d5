"""The native bf16 CPU LSTM (csrc/cpu/lstm_bf16_*): error against fp64 no worse than nn.LSTM's own bf16 error,
proof that the native kernel (not the fp32 fallback) ran, and the fallback that FUSED_S2S_NATIVE_BF16=0 forces.

Every comparison is against nn.LSTM in fp64 on the same bf16-rounded weights, inputs, initial state and
upstream gradients; the bound is 1.5x nn.LSTM-in-bf16's error on the same inputs plus one bf16 ulp of the
tensor's largest value (a floor for the tensors nn.LSTM happens to get almost exactly).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fused_s2s.nn import FusedLSTM
from fused_s2s.ops.lstm import lstm_layer

from tests.utils import assert_close, case_id

NATIVE = torch.ops.fused_s2s.lstm_bf16_native()
needs_native = pytest.mark.skipif(not NATIVE, reason="no native bf16 kernel here (needs AVX512-BF16 and a "
                                  "compiler with -mavx512bf16)")
BF16_ULP = 2.0 ** -8

CASES = [  # T, B, I, H, layers, bidirectional, lengths
    (1, 1, 5, 8, 1, False, False),
    (7, 5, 3, 33, 1, True, False),
    (7, 17, 16, 31, 2, False, True),
    (5, 5, 12, 80, 1, True, True),
    (7, 1, 8, 17, 2, True, False),
    (6, 17, 20, 64, 1, False, False),
    (4, 40, 24, 40, 1, True, True),  # AMX: three row tiles, the last one padded (48 rows)
]


def _run(module, x, h0, c0, lengths, dy, dh, dc):
    """Output, final state and every gradient (x, h0, c0, each parameter) of one module."""
    x, h0, c0 = (t.detach().clone().requires_grad_() for t in (x, h0, c0))
    if lengths is not None:
        packed, (h, c) = module(pack_padded_sequence(x, lengths, enforce_sorted=False), (h0, c0))
        y, _ = pad_packed_sequence(packed, total_length=x.shape[0])
    else:
        y, (h, c) = module(x, (h0, c0))
    loss = (y.double() * dy).sum() + (h.double() * dh).sum() + (c.double() * dc).sum()
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, [x, h0, c0] + params)
    names = ["dx", "dh0", "dc0"] + [f"d{n}" for n, _ in module.named_parameters()]
    return dict(zip(["y", "h_n", "c_n"] + names, [y, h, c] + list(grads)))


@pytest.fixture(params=["amx", "avx512bf16"])
def product(request, monkeypatch):
    """Both product kernels: AMX tiles where the CPU has them (else this case runs vdpbf16ps as well), and
    vdpbf16ps forced with FUSED_S2S_BF16_AMX=0."""
    if request.param == "avx512bf16":
        monkeypatch.setenv("FUSED_S2S_BF16_AMX", "0")
    return request.param


@needs_native
@pytest.mark.parametrize("T,B,I,H,layers,bidir,with_lengths", CASES,
                         ids=[case_id(T=c[0], B=c[1], I=c[2], H=c[3], L=c[4], bidir=c[5], lengths=c[6])
                              for c in CASES])
def test_error_within_nn_lstm_bf16_error(T, B, I, H, layers, bidir, with_lengths, product):
    ref = nn.LSTM(I, H, num_layers=layers, bidirectional=bidir).bfloat16()
    fused = FusedLSTM.from_lstm(ref)
    ref64 = nn.LSTM(I, H, num_layers=layers, bidirectional=bidir).double()
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    D = 2 if bidir else 1
    x = torch.randn(T, B, I).bfloat16()
    h0 = (0.5 * torch.randn(layers * D, B, H)).bfloat16()
    c0 = (0.5 * torch.randn(layers * D, B, H)).bfloat16()
    lengths = torch.randint(1, T + 1, (B,)) if with_lengths else None
    if lengths is not None:
        lengths[0] = T  # pad_packed_sequence's output keeps T steps
    dy = torch.randn(T, B, D * H, dtype=torch.float64)
    dh = torch.randn(layers * D, B, H, dtype=torch.float64)
    dc = torch.randn(layers * D, B, H, dtype=torch.float64)
    want = _run(ref64, x.double(), h0.double(), c0.double(), lengths, dy, dh, dc)
    got_nn = _run(ref, x, h0, c0, lengths, dy, dh, dc)
    got = _run(fused, x, h0, c0, lengths, dy, dh, dc)
    for name, e in want.items():
        a, n = got[name], got_nn[name]
        assert a.dtype == n.dtype == torch.bfloat16, f"{name}: {a.dtype}, nn.LSTM {n.dtype}"
        assert torch.isfinite(a).all(), f"{name} is not finite"
        err = (a.double() - e).abs().max().item()
        err_nn = (n.double() - e).abs().max().item()
        # Two bf16 steps of the largest value on top of 1.5x nn.LSTM's error: the native kernel saves its gate
        # activations in bf16 (oneDNN keeps an fp32 workspace), one more rounding that tensors of a few
        # elements (T1 B1) cannot average out. With one step, 1 in ~130 fresh draws of T1 B1 H8 failed
        # (worst 1.28x the bound); with two, none of 800 (worst 0.92x). A wrong kernel is off by far more.
        bound = 1.5 * err_nn + 2 * BF16_ULP * e.abs().max().item()
        assert err <= bound, f"{name}: error {err:.3e} > {bound:.3e} (nn.LSTM bf16: {err_nn:.3e})"


def _layer_args(T=6, B=5, I=7, H=19, dtype=torch.bfloat16):
    g = lambda *s: (0.3 * torch.randn(*s)).to(dtype).requires_grad_()  # noqa: E731
    return [g(T, B, I), g(B, H), g(B, H), g(4 * H, I), g(4 * H, H), g(4 * H), g(4 * H), None, None, False]


@needs_native
def test_native_kernel_runs_without_upcast():
    """The C++ op takes bf16 itself (bf16 gates and fp32 cells saved) and the public op uses it: no fp32
    copy of the output (an upcast path ends in a ToCopy node)."""
    args = _layer_args()
    y, h_n, c_n, gates, cells = torch.ops.fused_s2s.lstm_layer_fwd(*args)
    assert (y.dtype, h_n.dtype, c_n.dtype, gates.dtype, cells.dtype) == (
        torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.float32)
    out = lstm_layer(*args, backend="cpu")
    assert "ToCopy" not in type(out[0].grad_fn).__name__
    with torch.no_grad():  # the inference op: same kernel, chunked input projection
        inf = lstm_layer(*args, backend="cpu")
    for a, e, name in zip(inf, out, ("y", "h_n", "c_n")):
        assert_close(a, e.detach(), name, rtol=0, atol=0)


def test_fallback_when_switched_off(monkeypatch):
    """FUSED_S2S_NATIVE_BF16=0: the C++ op refuses bf16 and the public op runs the fp32 kernel on upcast
    copies, whose result is the fp32 result rounded to bf16."""
    monkeypatch.setenv("FUSED_S2S_NATIVE_BF16", "0")
    assert not torch.ops.fused_s2s.lstm_bf16_native()
    args = _layer_args()
    with pytest.raises(RuntimeError, match="native bf16 kernel"):
        torch.ops.fused_s2s.lstm_layer_fwd(*args)
    out = lstm_layer(*args, backend="cpu")
    assert "ToCopy" in type(out[0].grad_fn).__name__
    as_fp32 = [a.detach().float() if isinstance(a, torch.Tensor) else a for a in args]
    for a, e, name in zip(out, lstm_layer(*as_fp32, backend="cpu"), ("y", "h_n", "c_n")):
        assert_close(a, e.to(torch.bfloat16), name)


@needs_native
def test_native_and_fallback_agree(monkeypatch):
    """Both bf16 paths within bf16 rounding of each other, outputs and gradients, with lengths and reverse."""
    args = _layer_args(T=9, B=6, I=5, H=37)
    args[8] = torch.tensor([9, 3, 1, 9, 5, 7])
    args[9] = True
    dys = None

    def run():
        nonlocal dys
        out = lstm_layer(*args, backend="cpu")
        if dys is None:
            dys = [torch.randn_like(o) for o in out]
        return list(out) + list(torch.autograd.grad(out, [a for a in args[:7]], dys))

    native = run()
    monkeypatch.setenv("FUSED_S2S_NATIVE_BF16", "0")
    fallback = run()
    for k, (a, e) in enumerate(zip(native, fallback)):
        assert a.dtype == e.dtype == torch.bfloat16
        assert_close(a, e, f"result {k}", rtol=3e-2, atol=3e-2 * max(1.0, e.abs().max().item()))


def test_dtype_mix_is_nn_lstm_error():
    """bf16 input, fp32 weights, no autocast: nn.LSTM's own error, word for word (taken from the installed
    torch: 2.13 words it "RNN input dtype (...) does not match weight dtype (...)")."""
    x = torch.randn(3, 2, 4).bfloat16()
    with pytest.raises(ValueError) as theirs:
        nn.LSTM(4, 6)(x)
    with pytest.raises(ValueError) as ours:
        FusedLSTM(4, 6)(x)
    assert str(ours.value) == str(theirs.value)


@needs_native
def test_saved_for_backward_below_nn_lstm():
    """What the native layer keeps for backward (bf16 gates, fp32 cells, x, y) stays under 0.4x nn.LSTM's."""
    T, B, H = 20, 16, 64

    def saved_bytes(module):
        seen, total = set(), 0

        def pack(t):
            nonlocal total
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if key not in seen and t.untyped_storage().nbytes() > 0:
                seen.add(key)
                total += t.untyped_storage().nbytes()
            return t

        x = torch.randn(T, B, H).bfloat16().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
        return total

    ref = nn.LSTM(H, H).bfloat16()
    params = sum(p.numel() * p.element_size() for p in ref.parameters())
    ours, theirs = saved_bytes(FusedLSTM.from_lstm(ref)) - params, saved_bytes(ref) - params
    assert ours <= 0.4 * theirs, f"saved {ours} bytes, nn.LSTM {theirs}"


@needs_native
def test_opcheck_bf16():
    """Schema, fake kernels (fp32 cells for bf16 inputs), autograd registration and AOT dispatch of the
    bf16 ops."""
    args = _layer_args(T=4, B=3, I=5, H=16)
    args[8] = torch.tensor([4, 2, 3])
    torch.library.opcheck(torch.ops.fused_s2s.lstm_layer_fwd.default, args)
    torch.library.opcheck(torch.ops.fused_s2s.lstm_layer_infer.default, [
        a.detach() if isinstance(a, torch.Tensor) else a for a in args])


@needs_native
def test_cached_panels_follow_weight_changes():
    """The packed bf16 panels are reused across calls (weight_cache.h) only while W_hh holds the same bytes:
    after an in-place update the output is the updated weights' (checked against nn.LSTM on them)."""
    ref = nn.LSTM(6, 16).bfloat16()
    fused = FusedLSTM.from_lstm(ref)
    x = torch.randn(5, 3, 6).bfloat16()
    with torch.no_grad():
        fused(x)  # fills the cache
        for m in (ref, fused):
            m.weight_hh_l0.add_(0.5)
        want, got = ref(x)[0], fused(x)[0]
    assert_close(got, want, "output after the update", rtol=4e-2, atol=4e-2)
