"""The Triton peephole LSTM (the LSTM kernels' PEEPHOLE flag; FusedLSTM(peephole=True, backend="triton")) against
the plain-PyTorch reference: outputs, final states and every gradient (dx, dh0, dc0, dW_ih, dW_hh, both biases,
dw_ci, dw_cf, dw_co) in fp32 (vs the fp64 oracle) and fp64, lengths, reverse, bias on/off, odd sizes, both forward
kernels; fp64 gradcheck; fp16/bf16 within 2x torch's own error in that dtype; the module against the C++ backend
(stacks, directions, PackedSequence); opcheck of both ops; dispatch and input checks.

Runs under TRITON_INTERPRET=1 on CPU tensors in its own process, or natively on CUDA tensors when a GPU is present.
Outputs start NaN-filled (conftest sets FUSED_S2S_POISON_BUFFERS=1), so an element a kernel never writes fails.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from fused_s2s import FusedLSTM
from fused_s2s.ops import lstm as ops_lstm
from fused_s2s.ops import peephole as ops_peephole
from fused_s2s.ops.peephole import peephole_lstm_layer
from fused_s2s.reference import lstm as reference
from tests.utils import assert_close, case_id, tolerance

pytestmark = pytest.mark.triton_interpret

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
NAMES = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_ci", "w_cf", "w_co")


def make_args(T: int, B: int, I: int, H: int, dtype=torch.float64, bias: bool = True) -> list:
    """x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co: nn.LSTM's init U(−1/√H, 1/√H) for the LSTM weights,
    peephole weights of O(1) (so their paths weigh as much as the others), drawn in fp64 and then cast."""
    k = H ** -0.5
    u = lambda *s: (torch.rand(*s, dtype=torch.float64) * 2 - 1) * k  # noqa: E731
    args = [torch.randn(T, B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64) * 0.5,
            torch.randn(B, H, dtype=torch.float64), u(4 * H, I), u(4 * H, H), u(4 * H) if bias else None,
            u(4 * H) if bias else None, *(torch.randn(H, dtype=torch.float64) * 0.7 for _ in range(3))]
    return [None if a is None else a.to(dtype) for a in args]


def make_lengths(T: int, B: int) -> torch.Tensor:
    """On the CPU, as the modules pass them; the longest and the shortest sequence are always there."""
    lens = torch.randint(1, T + 1, (B,))
    lens[0] = T
    lens[-1] = 1
    return lens


def leaves(args, device=DEVICE, dtype=None):
    return [None if a is None else a.detach().to(device=device, dtype=dtype or a.dtype).requires_grad_()
            for a in args]


def outputs_and_grads(fn, args, upstream):
    """fn(*args)'s (y, h_n, c_n) and the gradients of Σ out·upstream w.r.t. every non-None argument."""
    out = fn(*args)
    wrt = [a for a in args if a is not None]
    grads = torch.autograd.grad(out, wrt, [u.to(o) for o, u in zip(out, upstream)])
    return list(out) + list(grads)


def names_of(args):
    return ["y", "h_n", "c_n"] + [f"d{n}" for n, a in zip(NAMES, args) if a is not None]


def upstream_for(args):
    """Random gradients of y, h_n and c_n (fp64; cast to each output's dtype)."""
    T, B, H = args[0].shape[0], args[0].shape[1], args[4].shape[1]
    return [torch.randn(T, B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64),
            torch.randn(B, H, dtype=torch.float64)]


def run_both(args, lengths, reverse, ref_dtype=torch.float64, upstream=None):
    """The Triton layer on args and the reference on args cast to ref_dtype (CPU), same upstream gradients."""
    upstream = upstream_for(args) if upstream is None else upstream
    got = outputs_and_grads(lambda *a: peephole_lstm_layer(*a, lengths, reverse, backend="triton"),
                            leaves(args), upstream)
    want = outputs_and_grads(lambda *a: reference.peephole_lstm_layer(*a, lengths, reverse),
                             leaves(args, "cpu", ref_dtype), upstream)
    return got, want


# H 33 leaves a partial unit block (and two blocks of 32); B 17 spans two batch tiles of 16; B 1 one row. The
# per-step forward kernel (the same body on a batch × unit-block grid, one launch a step) runs where H spans two
# unit blocks, the only place its grid differs from the persistent one's.
SHAPES = [dict(T=5, B=3, I=4, H=5, bias=True, kernel="persistent"),
          dict(T=4, B=17, I=3, H=33, bias=False, kernel="persistent"),
          dict(T=4, B=17, I=3, H=33, bias=True, kernel="per_step"),
          dict(T=3, B=1, I=2, H=5, bias=True, kernel="persistent")]


@pytest.mark.parametrize("lengths,reverse", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["dense-fwd", "dense-rev", "lengths-fwd", "lengths-rev"])
@pytest.mark.parametrize("shape", SHAPES, ids=[case_id(**s) for s in SHAPES])
def test_fp32_matches_fp64_reference(shape, lengths, reverse, monkeypatch):
    monkeypatch.setenv("FUSED_S2S_TRITON_LSTM_KERNEL", shape["kernel"])
    args = make_args(shape["T"], shape["B"], shape["I"], shape["H"], torch.float32, shape["bias"])
    lens = make_lengths(shape["T"], shape["B"]) if lengths else None
    got, want = run_both(args, lens, reverse)
    for name, a, e in zip(names_of(args), got, want):
        assert a.dtype == torch.float32 and a.device.type == torch.device(DEVICE).type, name
        assert_close(a.cpu().double(), e, name, *tolerance(torch.float32))


@pytest.mark.parametrize("lengths,reverse", [(True, True), (False, False)], ids=["lengths-rev", "dense-fwd"])
def test_fp64_matches_fp64_reference(lengths, reverse):
    args = make_args(4, 17, 3, 33, torch.float64)
    got, want = run_both(args, make_lengths(4, 17) if lengths else None, reverse)
    for name, a, e in zip(names_of(args), got, want):
        assert a.dtype == torch.float64, name
        assert_close(a.cpu(), e, name)


@pytest.mark.parametrize("lengths,reverse", [(True, True), (False, False)], ids=["lengths-rev", "dense-fwd"])
def test_gradcheck_float64(lengths, reverse):
    args = [None if a is None else a.to(DEVICE).requires_grad_() for a in make_args(3, 3, 2, 4, torch.float64)]
    lens = torch.tensor([3, 1, 2]) if lengths else None
    assert torch.autograd.gradcheck(lambda *a: peephole_lstm_layer(*a, lens, reverse, backend="triton"),
                                    tuple(args), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_16bit_as_accurate_as_torch_in_that_dtype(dtype):
    """|triton − ref64| ≤ 2·|reference in the same dtype − ref64| + floor (DESIGN.md §5), outputs and all grads,
    on the same rounded inputs. The floor (2e-3·(1 + max|ref64|)) covers values torch's own 16-bit run gets
    almost exactly right by luck, and the interpreter's truncating fp32→bf16 stores (fused_s2s/triton/cells.py)."""
    T, B, H = 6, 18, 19
    args = [None if a is None else a.to(dtype) for a in make_args(T, B, 5, H)]
    lens = make_lengths(T, B)
    upstream = upstream_for(args)
    got, own = run_both(args, lens, True, ref_dtype=dtype, upstream=upstream)
    want = outputs_and_grads(lambda *a: reference.peephole_lstm_layer(*a, lens, True),
                             leaves(args, "cpu", torch.float64), upstream)
    for name, a, o, e in zip(names_of(args), got, own, want):
        assert a.dtype == dtype, name
        err = (a.double().cpu() - e).abs().max().item()
        own_err = (o.double() - e).abs().max().item()
        floor = 2e-3 * (1 + e.abs().max().item())
        assert err <= 2 * own_err + floor, f"{name}: error {err:.3e} vs torch-{dtype} error {own_err:.3e}"


@pytest.mark.parametrize("kw", [dict(num_layers=2, bidirectional=True), dict(num_layers=1, bias=False)],
                         ids=lambda kw: case_id(**kw))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_module_matches_cpu_backend(kw, packed):
    """FusedLSTM(peephole=True, backend="triton") vs the same weights on backend="cpu" (the C++ kernels), or on the
    reference where the C++ extension is missing: outputs, states and every parameter's gradient."""
    other = "cpu" if ops_lstm._C_ERROR is None else "reference"
    cpu = FusedLSTM(5, 6, batch_first=True, peephole=True, backend=other, **kw)
    tri = FusedLSTM(5, 6, batch_first=True, peephole=True, backend="triton", **kw).to(DEVICE)
    tri.load_state_dict(cpu.state_dict())
    x = torch.randn(4, 7, 5, requires_grad=True)
    hx = tuple(torch.randn(cpu.num_layers * (2 if cpu.bidirectional else 1), 4, 6, requires_grad=True)
               for _ in range(2))
    lengths = torch.tensor([7, 3, 5, 1])

    def run(m, x, hx):
        if packed:
            y, (h, c) = m(nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False), hx)
            return y.data, h, c
        y, (h, c) = m(x, hx)
        return y, h, c

    x_d, hx_d = x.detach().to(DEVICE).requires_grad_(), tuple(t.detach().to(DEVICE).requires_grad_() for t in hx)
    got, want = run(tri, x_d, hx_d), run(cpu, x, hx)
    for name, a, e in zip(("output", "h_n", "c_n"), got, want):
        assert_close(a.cpu(), e, name)
    ups = [torch.randn_like(e) for e in want]
    g_got = torch.autograd.grad(got, [x_d, *hx_d, *tri.parameters()], [u.to(DEVICE) for u in ups])
    g_want = torch.autograd.grad(want, [x, *hx, *cpu.parameters()], ups)
    names = ["dx", "dh0", "dc0"] + [f"d_{n}" for n, _ in cpu.named_parameters()]
    assert len(g_got) == len(names) and any("weight_ci" in n for n in names)
    for name, a, e in zip(names, g_got, g_want):
        assert_close(a.cpu(), e, name)


def test_opcheck():
    args = leaves(make_args(4, 3, 5, 6, torch.float64), DEVICE)
    lens = torch.tensor([4, 1, 3], device=DEVICE)
    x, h0, c0, w_ih, w_hh, b_ih, _b_hh, w_ci, w_cf, w_co = args
    w_c = torch.cat([w_ci, w_cf, w_co]).detach().requires_grad_()
    fwd = torch.ops.fused_s2s.triton_peephole_lstm_layer_fwd.default
    torch.library.opcheck(fwd, (x, h0, c0, w_ih, w_hh, b_ih, None, w_c, lens, True, True))
    torch.library.opcheck(fwd, (x, h0, c0, w_ih, w_hh, None, None, w_c, None, False, True))
    # save=False is what inference calls (nothing requires grad): no backward to check
    plain = [t.detach() for t in (x, h0, c0, w_ih, w_hh, w_c)]
    torch.library.opcheck(fwd, (*plain[:5], b_ih.detach(), None, plain[5], lens, False, False))
    y, h_n, c_n, gates, cells = fwd(*plain[:5], None, None, plain[5], lens, True, True)
    bwd_args = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), *plain[:5], plain[5], lens, True,
                y, gates, cells, True, True)
    bwd = torch.ops.fused_s2s.triton_peephole_lstm_layer_bwd.default
    torch.library.opcheck(bwd, bwd_args)
    torch.library.opcheck(bwd, (*bwd_args[:-2], False, False))


def test_dispatch_and_input_checks(monkeypatch):
    """auto sends CUDA tensors to the Triton kernels (CPU tensors to the C++ ones); "cuda" says it has none; the
    Triton op checks its inputs with the C++ op's words."""
    monkeypatch.setattr(ops_lstm, "ENV_BACKEND", "auto")
    assert ops_peephole._resolve("auto", torch.device("cuda")) == "triton"
    if ops_lstm._C_ERROR is None:
        assert ops_peephole._resolve("auto", torch.device("cpu")) == "cpu"
    with pytest.raises(RuntimeError, match="'cuda' has no peephole-LSTM kernels"):
        ops_peephole._resolve("cuda", torch.device("cuda"))
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co = [a.to(DEVICE) for a in make_args(3, 2, 4, 5, torch.float32)]
    good = dict(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_c=torch.cat([w_ci, w_cf, w_co]),
                lengths=None, reverse=False, save=False)
    op = torch.ops.fused_s2s.triton_peephole_lstm_layer_fwd
    for change, message in ((dict(w_c=w_ci), r"w_c must be \[15\]"), (dict(c0=c0[:, :4]), r"c0 must be \[2, 5\]"),
                            (dict(w_c=good["w_c"].double()), "must match x's dtype"),
                            (dict(lengths=torch.tensor([3, 0])), "every length must be in")):
        with pytest.raises(RuntimeError, match=message):
            op(**{**good, **change})
