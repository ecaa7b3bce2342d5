"""FusedDecoder(backend="triton") as a module: teacher-forced forward (Triton LSTM and Triton attention) and
its gradients against the reference loop, and step() (the Triton fused decoder step) against forward().

Runs under TRITON_INTERPRET=1 on CPU tensors in its own process (scripts/test.sh), or on CUDA tensors with a
GPU. fp32: the Triton decoder step is fp32 only."""
from __future__ import annotations

import pytest
import torch

from fused_s2s.nn.decoder import ATTENTION_KINDS
from tests.test_decoder import E, H, S, T, assert_forward_and_grads_match, make, random_state
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
    out, attn, final = assert_forward_and_grads_match(dec, x, memory, lengths, state)
    with torch.no_grad():  # step(): the Triton fused decoder step, one launch chain per step
        keys = dec.precompute_keys(memory)
        s, outs = state, []
        for t in range(T):
            o, s, a = dec.step(x[:, t], s, memory, lengths, keys=keys)
            outs.append(o)
        assert_close(torch.stack(outs, 1), out.detach(), "step outputs")
        assert_close(a, attn[:, -1].detach(), "step attention")
        assert_close(s.c, final.c.detach(), "step c")
