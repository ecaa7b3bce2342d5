"""The edges users hit, each against nn.LSTM on the CPU: sequences longer than 65,535 steps (where cuDNN
fails), empty sequences and batches, strided inputs and states, thread counts, concurrent Python threads,
run-to-run determinism, NaN/Inf, and resident memory over many calls."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from fused_s2s import FusedLSTM
from fused_s2s.ops import lstm as ops_lstm
from tests.utils import assert_close

pytestmark = pytest.mark.skipif(ops_lstm._C_ERROR is not None, reason=f"C++ backend: {ops_lstm._C_ERROR}")


def pair(input_size: int, hidden: int, **kw) -> tuple[nn.LSTM, FusedLSTM]:
    ref = nn.LSTM(input_size, hidden, **kw)
    ours = FusedLSTM(input_size, hidden, **kw, backend="cpu")
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def outputs_and_grads(module, x, hx=None, upstream=None):
    """(y, h_n, c_n) and the gradients of x, hx and every parameter under fixed random upstream grads."""
    y, (h, c) = module(x, hx)
    outs = (y, h, c)
    upstream = upstream or [torch.randn_like(t) for t in outs]
    wrt = [x] + (list(hx) if hx is not None else []) + list(module.parameters())
    grads = torch.autograd.grad(sum((o * u).sum() for o, u in zip(outs, upstream)), wrt)
    return outs, grads, upstream


def assert_same_as_nn_lstm(ref, ours, x, hx=None):
    expected, e_grads, ups = outputs_and_grads(ref, x, hx)
    actual, a_grads, _ = outputs_and_grads(ours, x, hx, ups)
    for name, a, e in zip(("output", "h_n", "c_n"), actual, expected):
        assert_close(a, e, name)
    for k, (a, e) in enumerate(zip(a_grads, e_grads)):
        assert_close(a, e, f"grad {k}")


def test_longer_than_65535_steps():
    """cuDNN refuses T > 65,535; the CPU kernel takes it (indices in 64 bits), forward and backward."""
    ref, ours = pair(2, 3, dtype=torch.float64)
    x = torch.randn(70_000, 2, 2, dtype=torch.float64, requires_grad=True)
    assert_same_as_nn_lstm(ref, ours, x)


def test_empty_sequence_is_nn_lstms_error_and_empty_batch_works():
    ref, ours = pair(3, 4)
    for module in (ref, ours):
        with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0 in RNN"):
            module(torch.randn(0, 2, 3))
    y_ref, (h_ref, _) = ref(torch.randn(4, 0, 3))
    y, (h, _) = ours(torch.randn(4, 0, 3))
    assert y.shape == y_ref.shape == (4, 0, 4) and h.shape == h_ref.shape == (1, 0, 4)


@pytest.mark.parametrize("layout", ["sliced_features", "permuted", "strided_batch"])
def test_non_contiguous_inputs_and_states(layout):
    T, B, I, H = 6, 3, 5, 4
    ref, ours = pair(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    g = dict(dtype=torch.float64)
    if layout == "sliced_features":  # every other feature of a wider tensor
        x = torch.randn(T, B, 2 * I, **g)[..., ::2]
    elif layout == "permuted":  # stored [T, I, B], viewed as [T, B, I]: features strided by B
        x = torch.randn(T, I, B, **g).permute(0, 2, 1)
    else:  # every other sequence of a larger batch
        x = torch.randn(T, 2 * B, I, **g)[:, ::2]
    assert not x.is_contiguous()
    x.requires_grad_()
    h0 = torch.randn(B, 4, H, **g).transpose(0, 1).requires_grad_()  # [4, B, H], not contiguous
    c0 = torch.randn(4, B, 2 * H, **g)[..., ::2].requires_grad_()
    assert not h0.is_contiguous() and not c0.is_contiguous()
    assert_same_as_nn_lstm(ref, ours, x, (h0, c0))


def test_one_and_two_threads_agree():
    ref, ours = pair(16, 24, num_layers=2, bidirectional=True)
    x = torch.randn(20, 8, 16, requires_grad=True)
    before = torch.get_num_threads()
    results = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results[n] = outputs_and_grads(ours, x, upstream=results[1][2] if 1 in results else None)
    finally:
        torch.set_num_threads(before)
    (o1, g1, _), (o2, g2, _) = results[1], results[2]
    for k, (a, b) in enumerate(zip(o1 + g1, o2 + g2)):
        assert_close(a, b, f"tensor {k}, 1 vs 2 threads")


def test_repeated_runs_are_bitwise_deterministic():
    ref, ours = pair(16, 24, num_layers=2, bidirectional=True)
    x = torch.randn(30, 8, 16, requires_grad=True)
    first, g_first, ups = outputs_and_grads(ours, x)
    for _ in range(3):
        again, g_again, _ = outputs_and_grads(ours, x, upstream=ups)
        assert all(torch.equal(a, b) for a, b in zip(first + g_first, again + g_again))


def test_two_python_threads_at_once():
    """Two threads running forward+backward on one module at the same time get what each gets alone."""
    _, ours = pair(12, 16, num_layers=2)
    xs = [torch.randn(25, 4, 12, requires_grad=True) for _ in range(2)]
    alone = [outputs_and_grads(ours, x) for x in xs]
    together: list = [None, None]
    errors: list = []

    def work(k: int) -> None:
        try:
            for _ in range(5):
                together[k] = outputs_and_grads(ours, xs[k], upstream=alone[k][2])
        except Exception as e:  # noqa: BLE001 (re-raised below, in the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(2):
        (o, g, _), (o2, g2, _) = alone[k], together[k]
        for i, (a, b) in enumerate(zip(o + g, o2 + g2)):
            assert_close(b, a, f"thread {k}, tensor {i}")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_propagate_like_nn_lstm(value):
    ref, ours = pair(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(6, 2, 3)
    x[2, 1, 0] = value
    with torch.no_grad():
        y_ref, (h_ref, c_ref) = ref(x)
        y, (h, c) = ours(x)
    for name, a, e in (("output", y, y_ref), ("h_n", h, h_ref), ("c_n", c, c_ref)):
        assert_close(a, e, name)  # NaN exactly where nn.LSTM has NaN
    assert y[:, 0].isfinite().all(), "the other sequence is untouched"


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc/self/statm (Linux)")
def test_resident_memory_does_not_grow_over_1000_calls():
    """1,000 forward+backward calls after warm-up grow resident memory by less than 16 MB (bound stated here:
    about 20x one call's activations and gradients, far below what a per-call leak of them would add)."""
    _, ours = pair(32, 48, num_layers=2, bidirectional=True)
    x = torch.randn(20, 8, 32, requires_grad=True)

    def call():
        y, _ = ours(x)
        y.sum().backward()
        x.grad = None
        ours.zero_grad(set_to_none=True)

    for _ in range(100):
        call()
    before = _rss_bytes()
    for _ in range(1000):
        call()
    grown = _rss_bytes() - before
    assert grown < 16 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MB over 1000 calls"
