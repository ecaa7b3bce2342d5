"""The packed-weight cache (csrc/cpu/weight_cache.h): a layer called again on unchanged weights reuses their
packed form, and any change to the weights' bytes — an optimizer step, load_state_dict, a write through .data
(which the version counter does not see), a new tensor at the same address — repacks. Each case compares with
nn.LSTM / nn.GRU / nn.RNN holding the same weights, so a stale packing fails."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import fused_s2s
from fused_s2s.ops import lstm as ops_lstm
from tests.utils import assert_close

pytestmark = pytest.mark.skipif(ops_lstm._C_ERROR is not None, reason=str(ops_lstm._C_ERROR))

# B 3 takes the small-GEMM step path where one is used, B 70 oneDNN's packed layout; both with and without
# grad (the backward packs W_hhᵀ too). H 96 is large enough for the fused recurrence's two threads.
CELLS = {"lstm": (fused_s2s.FusedLSTM, nn.LSTM), "gru": (fused_s2s.FusedGRU, nn.GRU),
         "rnn": (fused_s2s.FusedRNN, nn.RNN)}


def pair(cell: str, H: int = 96, I: int = 5, **kw):
    fused_cls, torch_cls = CELLS[cell]
    ref = torch_cls(I, H, **kw)
    ours = fused_cls(I, H, **kw)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def check_same(ours, ref, x, grad: bool) -> None:
    if grad:
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, _ = ours(xa)
        yb, _ = ref(xb)
        up = torch.randn_like(ya)
        ga = torch.autograd.grad(ya, [xa, *ours.parameters()], up)
        gb = torch.autograd.grad(yb, [xb, *ref.parameters()], up)
        assert_close(ya, yb, "y")
        for i, (a, b) in enumerate(zip(ga, gb)):
            assert_close(a, b, f"grad {i}")
    else:
        with torch.no_grad():
            assert_close(ours(x)[0], ref(x)[0], "y")


@pytest.mark.parametrize("grad", [False, True], ids=["infer", "train"])
@pytest.mark.parametrize("B", [3, 70])
@pytest.mark.parametrize("cell", list(CELLS))
def test_every_change_to_the_weights_is_seen(cell, B, grad):
    ours, ref = pair(cell)
    x = torch.randn(6, B, 5)
    check_same(ours, ref, x, grad)
    check_same(ours, ref, x, grad)  # the second call reuses the packing

    with torch.no_grad():  # an optimizer-like in-place step
        for p, q in zip(ours.parameters(), ref.parameters()):
            p.mul_(0.9).add_(0.01)
            q.mul_(0.9).add_(0.01)
    check_same(ours, ref, x, grad)

    w = torch.randn_like(ref.weight_hh_l0) * 0.1  # through .data: a new version counter, the same bytes' address
    ours.weight_hh_l0.data.copy_(w)
    ref.weight_hh_l0.data.copy_(w)
    check_same(ours, ref, x, grad)

    ref.weight_hh_l0.data[0, 0] += 1.0  # one element
    ours.weight_hh_l0.data[0, 0] += 1.0
    check_same(ours, ref, x, grad)

    state = {k: torch.randn_like(v) * 0.1 for k, v in ref.state_dict().items()}
    ref.load_state_dict(state)
    ours.load_state_dict(state)
    check_same(ours, ref, x, grad)


def test_two_modules_share_nothing_stale():
    """Modules with different weights called in turn, each twice: every call matches its own torch twin."""
    mods = [pair("lstm") for _ in range(3)]
    x = torch.randn(4, 3, 5)
    for _ in range(2):
        for ours, ref in mods:
            check_same(ours, ref, x, grad=False)


def test_cache_off_gives_the_same_results():
    """FUSED_S2S_WEIGHT_CACHE=0 packs every call: this file's tests pass that way too."""
    env = dict(os.environ, FUSED_S2S_WEIGHT_CACHE="0")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          "every_change and infer"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "failed" not in res.stdout
