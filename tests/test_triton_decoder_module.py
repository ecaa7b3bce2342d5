"""FusedDecoder(backend="triton") as a module: teacher-forced forward (Triton LSTM and Triton attention) and
its gradients against the reference loop, and step() (the Triton fused decoder step) against forward().

Runs under TRITON_INTERPRET=1 on CPU tensors in its own process (scripts/test.sh), or on CUDA tensors with a
GPU. fp32: the Triton decoder step is fp32 only."""
from __future__ import annotations

import pytest
import torch

from fused_s2s.nn.decoder import ATTENTION_KINDS
from tests.test_decoder import E, H, S, T, make, random_state, reference_loop
from tests.utils import assert_close, case_id

pytestmark = pytest.mark.triton_interpret
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [(k, l, f) for k in ATTENTION_KINDS for l in (1, 2) for f in (True, False)]


@pytest.mark.parametrize("kind,layers,feeding", CASES, ids=[case_id(att=k, L=l, feed=f) for k, l, f in CASES])
def test_triton_decoder_forward_grads_and_step(kind, layers, feeding):
    B = 3
    dec = make(kind, layers, feeding, dtype=torch.float32, backend="triton").to(DEVICE)
    x = torch.randn(B, T, E, device=DEVICE, requires_grad=True)
    memory = torch.randn(B, S, H, device=DEVICE, requires_grad=True)
    lengths = torch.tensor([S, 1, 4], device=DEVICE)
    state = random_state(dec, B, torch.float32)
    state = type(state)(*(None if t is None else t.to(DEVICE) for t in (state.h, state.c, state.feed)))
    out, attn, final = dec(x, memory, lengths, state, return_attention=True)
    r_out, r_attn, r_h, r_c = reference_loop(dec, x, memory, lengths, state)
    assert_close(out, r_out, "outputs")
    assert_close(attn, r_attn, "attention")
    assert_close(final.h, r_h, "h_n")
    assert_close(final.c, r_c, "c_n")
    assert (attn[1, :, 1:] == 0).all(), "masked positions must get weight exactly 0"
    grads_in = [x, memory, *dec.parameters()]
    g_out = torch.randn_like(out)
    ours = torch.autograd.grad((out * g_out).sum() + final.c.sum(), grads_in, allow_unused=True)
    theirs = torch.autograd.grad((r_out * g_out).sum() + r_c.sum(), grads_in, allow_unused=True)
    for name, a, b in zip(["x", "memory"] + [n for n, _ in dec.named_parameters()], ours, theirs):
        if b is None:
            assert a is None or (a == 0).all(), name
        else:
            assert_close(a, b, f"grad {name}")
    with torch.no_grad():  # step(): the Triton fused decoder step, one launch chain per step
        keys = dec.precompute_keys(memory)
        s, outs = state, []
        for t in range(T):
            o, s, a = dec.step(x[:, t], s, memory, lengths, keys=keys)
            outs.append(o)
        assert_close(torch.stack(outs, 1), out.detach(), "step outputs")
        assert_close(a, attn[:, -1].detach(), "step attention")
        assert_close(s.c, final.c.detach(), "step c")
