"""FusedDecoder against a step-by-step loop of fused_s2s.reference.decoder.decoder_step: outputs, attention,
final state and gradients (parameters and memory); step() against forward(); init_state from an encoder."""
import pytest
import torch

from fused_s2s import FusedDecoder, FusedLSTMEncoder
from fused_s2s.nn.decoder import ATTENTION_KINDS, DecoderState
from fused_s2s.reference.decoder import decoder as ref_decoder
from tests.utils import assert_close, case_id

E, H, S, T = 5, 7, 6, 4


def make(kind, layers, feeding, memory_size=H, dtype=torch.float64, **kw):
    dec = FusedDecoder(E, H, memory_size, num_layers=layers, attention=kind, input_feeding=feeding, dtype=dtype, **kw)
    for p in dec.parameters():  # nonzero biases everywhere
        torch.nn.init.uniform_(p, -0.5, 0.5)
    return dec


def reference_loop(dec, x, memory, lengths, state):
    return ref_decoder(x, state.feed, state.h, state.c, dec._lstm_weights(), dec.attention, dec.attn.params(),
                       dec.linear_out.weight, dec.linear_out.bias, memory, lengths, input_feeding=dec.input_feeding)


def random_state(dec, B, dtype):
    return DecoderState(torch.randn(dec.num_layers, B, H, dtype=dtype), torch.randn(dec.num_layers, B, H, dtype=dtype),
                        torch.randn(B, H, dtype=dtype) if dec.input_feeding else None)


CASES = [(k, l, f, ml) for k in ATTENTION_KINDS for l in (1, 2) for f in (True, False) for ml in (True, False)]


@pytest.mark.parametrize("kind,layers,feeding,use_lengths", CASES,
                         ids=[case_id(att=k, L=l, feed=f, lens=m) for k, l, f, m in CASES])
def test_forward_and_grads_match_reference_loop(kind, layers, feeding, use_lengths):
    dtype = torch.float64
    B = 3
    dec = make(kind, layers, feeding)
    x = torch.randn(B, T, E, dtype=dtype, requires_grad=True)
    memory = torch.randn(B, S, H, dtype=dtype, requires_grad=True)
    lengths = torch.tensor([S, 1, 4]) if use_lengths else None
    state = random_state(dec, B, dtype)
    assert_forward_and_grads_match(dec, x, memory, lengths, state)


def assert_forward_and_grads_match(dec, x, memory, lengths, state):
    """dec(...) vs the reference loop: outputs, attention (padding exactly 0), final state, and the gradients
    of x, memory and every parameter under random output weights. Returns dec's (out, attn, final)."""
    out, attn, final = dec(x, memory, lengths, state, return_attention=True)
    r_out, r_attn, r_h, r_c = reference_loop(dec, x, memory, lengths, state)
    assert_close(out, r_out, "outputs")
    assert_close(attn, r_attn, "attention")
    assert_close(final.h, r_h, "h_n")
    assert_close(final.c, r_c, "c_n")
    if lengths is not None:
        pad = torch.arange(memory.shape[1], device=memory.device) >= lengths[:, None]
        assert (attn.masked_select(pad[:, None, :].expand_as(attn)) == 0).all(), "padding must get weight 0"
    grads_in = [x, memory, *dec.parameters()]
    g_out, g_h, g_c = torch.randn_like(out), torch.randn_like(final.h), torch.randn_like(final.c)
    ours = torch.autograd.grad((out * g_out).sum() + (final.h * g_h).sum() + (final.c * g_c).sum(), grads_in,
                               allow_unused=True)
    theirs = torch.autograd.grad((r_out * g_out).sum() + (r_h * g_h).sum() + (r_c * g_c).sum(), grads_in,
                                 allow_unused=True)
    names = ["x", "memory"] + [n for n, _ in dec.named_parameters()]
    for name, a, b in zip(names, ours, theirs):
        if b is None:
            assert a is None or (a == 0).all(), name
            continue
        assert_close(a, b, f"grad {name}")
    return out, attn, final


@pytest.mark.parametrize("kind,layers,feeding,use_lengths", CASES,
                         ids=[case_id(att=k, L=l, feed=f, lens=m) for k, l, f, m in CASES])
def test_step_reproduces_forward(kind, layers, feeding, use_lengths):
    B = 4
    dec = make(kind, layers, feeding, dtype=torch.float32)
    x = torch.randn(B, T, E)
    memory = torch.randn(B, S, H)
    lengths = torch.tensor([S, 2, 1, 5]) if use_lengths else None
    state = random_state(dec, B, torch.float32)
    out, attn, final = dec(x, memory, lengths, state, return_attention=True)
    with torch.no_grad():  # the fused op path
        keys = dec.precompute_keys(memory)
        s, outs, attns = state, [], []
        for t in range(T):
            o, s, a = dec.step(x[:, t], s, memory, lengths, keys=keys)
            outs.append(o)
            attns.append(a)
    assert_close(torch.stack(outs, 1), out.detach(), "step outputs")
    assert_close(torch.stack(attns, 1), attn.detach(), "step attention")
    assert_close(s.h, final.h.detach(), "step h")
    assert_close(s.c, final.c.detach(), "step c")
    # with grad: the differentiable composition gives the same numbers
    s = state
    for t in range(T):
        o, s, _ = dec.step(x[:, t], s, memory, lengths)
    assert o.requires_grad
    assert_close(o, out[:, -1], "composed step output")


@pytest.mark.parametrize("layers,feeding", [(1, True), (2, False)])
def test_step_without_state_starts_from_zeros(layers, feeding):
    """step(x, None, memory) is step from the zero state (h, c and the input feed), as nn.LSTMCell without hx;
    checked against the reference loop started from explicit zeros, on the fused op and the composed path."""
    B = 3
    dec = make("general", layers, feeding, dtype=torch.float64)
    x, memory = torch.randn(B, 1, E, dtype=torch.float64), torch.randn(B, S, H, dtype=torch.float64)
    lengths = torch.tensor([S, 2, 4])
    zeros = DecoderState(torch.zeros(layers, B, H, dtype=torch.float64), torch.zeros(layers, B, H, dtype=torch.float64),
                         torch.zeros(B, H, dtype=torch.float64) if feeding else None)
    r_out, r_attn, r_h, r_c = reference_loop(dec, x, memory, lengths, zeros)
    with torch.no_grad():
        out, state, attn = dec.step(x[:, 0], None, memory, lengths)
    assert_close(out, r_out[:, 0], "step output from None")
    assert_close(attn, r_attn[:, 0], "step attention from None")
    assert_close(state.h, r_h, "h")
    assert_close(state.c, r_c, "c")
    out_g, _, _ = dec.step(x[:, 0], None, memory, lengths)  # with grad: the composed path
    assert out_g.requires_grad
    assert_close(out_g.detach(), r_out[:, 0], "composed step output from None")


def test_memory_size_differs_from_hidden():
    dec = make("general", 2, True, memory_size=9)
    x, memory = torch.randn(2, 3, E, dtype=torch.float64), torch.randn(2, 5, 9, dtype=torch.float64)
    state = random_state(dec, 2, torch.float64)
    out, attn, final = dec(x, memory, None, state, return_attention=True)
    r_out, r_attn, r_h, _ = reference_loop(dec, x, memory, None, state)
    assert_close(out, r_out, "outputs")
    assert_close(final.h, r_h, "h_n")


def test_zero_state_default_and_reorder():
    dec = make("dot", 2, True, dtype=torch.float32)
    x, memory = torch.randn(3, 2, E), torch.randn(3, S, H)
    out, _, final = dec(x, memory)
    out2, _, _ = dec(x, memory, state=dec.zero_state(3, x))
    assert_close(out, out2, "default state")
    idx = torch.tensor([2, 0, 0])
    r = final.reorder(idx)
    assert_close(r.h, final.h[:, idx], "reordered h")
    assert_close(r.feed, final.feed[idx], "reordered feed")
    rep = final.repeat_interleave(2)
    assert rep.h.shape == (2, 6, H) and torch.equal(rep.c[:, 3], final.c[:, 1])


def test_dropout_between_layers_only_in_training():
    dec = make("general", 2, True, dtype=torch.float32, dropout=0.5)
    x, memory = torch.randn(2, 3, E), torch.randn(2, S, H)
    dec.eval()
    a, _, _ = dec(x, memory)
    b, _, _ = dec(x, memory)
    assert torch.equal(a, b)
    dec.train()
    c, _, _ = dec(x, memory)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("bridge", ["concat", "linear"])
def test_init_state_from_bidirectional_two_layer_encoder(bridge):
    He = H // 2 if bridge == "linear" else 4  # concat needs 2 * He == decoder hidden
    Hd = 2 * He if bridge == "concat" else H
    enc = FusedLSTMEncoder(E, He, num_layers=2, bidirectional=True, batch_first=True)
    dec = FusedDecoder(E, Hd, 2 * He, num_layers=2, bridge=bridge, encoder_hidden_size=He)
    src = torch.randn(3, 5, E)
    memory, (h_n, c_n) = enc(src, lengths=torch.tensor([5, 3, 1]))
    state = dec.init_state((h_n, c_n))
    assert state.h.shape == (2, 3, Hd) and state.feed.shape == (3, Hd) and (state.feed == 0).all()
    cat_h = torch.stack([torch.cat([h_n[2 * l], h_n[2 * l + 1]], dim=1) for l in range(2)])  # OpenNMT's h[0::2], h[1::2]
    cat_c = torch.cat([c_n[0::2], c_n[1::2]], dim=2)
    if bridge == "concat":
        assert_close(state.h, cat_h, "h")
        assert_close(state.c, cat_c, "c")
    else:
        assert_close(state.h, dec.bridge.h(cat_h), "bridged h")
        assert_close(state.c, dec.bridge.c(cat_c), "bridged c")
        # gradients reach the bridge and the encoder
        out, _, _ = dec(torch.randn(3, 2, E), memory, torch.tensor([5, 3, 1]), state)
        out.sum().backward()
        assert dec.bridge.h.weight.grad is not None and enc.weight_hh_l1_reverse.grad is not None
    out, _, _ = dec(torch.randn(3, 2, E), memory, torch.tensor([5, 3, 1]), dec.init_state((h_n, c_n)))
    assert out.shape == (3, 2, Hd)


def test_init_state_none_is_zeros():
    dec = make("general", 2, True, dtype=torch.float32)
    s = dec.init_state(None, batch_size=3, like=torch.empty(0))
    assert (s.h == 0).all() and (s.c == 0).all() and s.feed.shape == (3, H)


@pytest.mark.parametrize("feeding", [True, False])
def test_reference_backend_step_and_forward(feeding):
    dec = make("additive", 2, feeding, dtype=torch.float32, backend="reference")
    x, memory, lengths = torch.randn(2, 3, E), torch.randn(2, S, H), torch.tensor([2, S])
    out, _, final = dec(x, memory, lengths)
    with torch.no_grad():
        s = dec.zero_state(2, x)
        for t in range(3):
            o, s, _ = dec.step(x[:, t], s, memory, lengths)
    assert_close(o, out[:, -1].detach(), "reference-backend step")
    assert_close(s.c, final.c.detach(), "reference-backend c")


@pytest.mark.parametrize("kind", ["general", "additive"])
def test_fused_step_follows_parameter_changes(kind):
    """The fused step caches its prepared weights (and keys) across steps: an in-place update (an optimizer
    step), a replaced Parameter and a dtype move must each rebuild them, so every step equals the reference
    loop under the parameters of that moment."""
    B = 3
    dec = make(kind, 2, True)
    x, memory = torch.randn(B, E, dtype=torch.float64), torch.randn(B, S, H, dtype=torch.float64)
    state = random_state(dec, B, torch.float64)

    def check(dtype):
        xs, mem = x.to(dtype), memory.to(dtype)
        st = DecoderState(state.h.to(dtype), state.c.to(dtype), state.feed.to(dtype))
        with torch.no_grad():
            out, new, attn = dec.step(xs, st, mem)
            ref_out, ref_attn, ref_h, _ = ref_decoder(
                xs[:, None], st.feed, st.h, st.c, dec._lstm_weights(), dec.attention, dec.attn.params(),
                dec.linear_out.weight, dec.linear_out.bias, mem, None, input_feeding=True)
        assert out.dtype == dtype
        assert_close(out, ref_out[:, 0], "step output")
        assert_close(attn, ref_attn[:, 0], "step attention")
        assert_close(new.h, ref_h, "step h")

    check(torch.float64)
    with torch.no_grad():
        dec.lstm.weight_hh_l1.add_(0.25)  # in place, as an optimizer step
        dec.attn.params()[next(iter(dec.attn.params()))].mul_(-1.5)
    check(torch.float64)
    dec.linear_out.weight = torch.nn.Parameter(torch.randn_like(dec.linear_out.weight))  # replaced
    check(torch.float64)
    dec.float()  # moved to another dtype
    check(torch.float32)
