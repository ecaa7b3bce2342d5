"""torch.compile(fullgraph=True) over the attention op (forward and backward), FusedDecoder.forward and
FusedDecoder.step (the fused step op): the same numbers as eager, with no graph break (the lengths check is
a queued assert under compile, not a host read)."""
import torch

from fused_s2s import FusedDecoder
from fused_s2s.ops.attention import attention
from tests.test_attention import make_case
from tests.utils import assert_close


def test_attention_op_compiles_forward_and_backward():
    q, m, lens, params = make_case("general", B=3, T=4, S=6, Dq=5, M=7, lengths="random")
    fn = torch.compile(lambda q, m, w: attention(q, m, lens, "general", {"w": w})[0], fullgraph=True)
    got = fn(q, m, params["w"])
    want = attention(q, m, lens, "general", params)[0]
    assert_close(got, want, "context")
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (q, m, params["w"]), g), torch.autograd.grad(want, (q, m, params["w"]), g)):
        assert_close(a, b, "gradient")


def test_decoder_forward_and_step_compile():
    torch.manual_seed(0)
    dec = FusedDecoder(5, 6, 7, attention="additive", input_feeding=False).eval()
    x, memory, lengths = torch.randn(3, 4, 5), torch.randn(3, 9, 7), torch.tensor([9, 2, 5])
    forward = torch.compile(lambda x, m, l: dec(x, m, l)[0], fullgraph=True)
    assert_close(forward(x, memory, lengths), dec(x, memory, lengths)[0], "forward")
    with torch.no_grad():
        state = dec.zero_state(3, x)
        step = torch.compile(lambda x, s, m, l: dec.step(x, s, m, l)[0], fullgraph=True)
        assert_close(step(x[:, 0], state, memory, lengths), dec.step(x[:, 0], state, memory, lengths)[0], "step")
