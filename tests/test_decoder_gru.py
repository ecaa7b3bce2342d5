"""FusedDecoder(cell="gru") and Seq2Seq(cell="gru"): forward (teacher forcing) and step against a step-by-step
loop of fused_s2s.reference.decoder with cell="gru" (outputs, attention, final state, gradients), init_state
from a GRU encoder, greedy and beam search, and the errors for a wrong cell or state."""
import pytest
import torch

from fused_s2s import FusedDecoder, FusedGRU, Seq2Seq
from fused_s2s.nn.decoder import ATTENTION_KINDS, DecoderState
from fused_s2s.reference.decoder import decoder as ref_decoder
from tests.utils import assert_close, case_id

E, H, S, T, B = 5, 7, 6, 4, 3
CASES = [(k, l, f) for k in ATTENTION_KINDS for l in (1, 2) for f in (True, False)]


def make(kind, layers, feeding, dtype=torch.float64, **kw):
    dec = FusedDecoder(E, H, H, num_layers=layers, attention=kind, input_feeding=feeding, dtype=dtype, cell="gru",
                       **kw)
    for p in dec.parameters():  # nonzero biases everywhere
        torch.nn.init.uniform_(p, -0.5, 0.5)
    return dec


def reference_loop(dec, x, memory, lengths, state):
    return ref_decoder(x, state.feed, state.h, None, dec._lstm_weights(), dec.attention, dec.attn.params(),
                       dec.linear_out.weight, dec.linear_out.bias, memory, lengths, input_feeding=dec.input_feeding,
                       cell="gru")


@pytest.mark.parametrize("kind,layers,feeding", CASES, ids=[case_id(att=k, L=l, feed=f) for k, l, f in CASES])
def test_forward_and_grads_match_reference_loop(kind, layers, feeding):
    dtype = torch.float64
    dec = make(kind, layers, feeding, backend="cpu")
    assert isinstance(dec.gru, FusedGRU) and not hasattr(dec, "lstm")
    x = torch.randn(B, T, E, dtype=dtype, requires_grad=True)
    memory = torch.randn(B, S, H, dtype=dtype, requires_grad=True)
    lengths = torch.tensor([S, 1, 4])
    state = DecoderState(torch.randn(layers, B, H, dtype=dtype), None,
                         torch.randn(B, H, dtype=dtype) if feeding else None)
    out, attn, final = dec(x, memory, lengths, state, return_attention=True)
    r_out, r_attn, r_h, r_c = reference_loop(dec, x, memory, lengths, state)
    assert final.c is None and r_c is None
    for name, a, e in (("outputs", out, r_out), ("attention", attn, r_attn), ("h_n", final.h, r_h)):
        assert_close(a, e, name)
    g_out, g_h = torch.randn_like(out), torch.randn_like(final.h)
    wrt = [x, memory, *dec.parameters()]
    wrt = [w for w in wrt if w.requires_grad]
    ga = torch.autograd.grad((out * g_out).sum() + (final.h * g_h).sum(), wrt, allow_unused=True)
    ge = torch.autograd.grad((r_out * g_out).sum() + (r_h * g_h).sum(), wrt, allow_unused=True)
    for k, (a, e) in enumerate(zip(ga, ge)):
        assert (a is None) == (e is None), k
        if a is not None:
            assert_close(a, e, f"grad {k}")


@pytest.mark.parametrize("feeding", [True, False])
def test_step_reproduces_forward_under_no_grad(feeding):
    dec = make("general", 2, feeding, dtype=torch.float32, backend="cpu")
    x, memory, lengths = torch.randn(B, T, E), torch.randn(B, S, H), torch.tensor([S, 2, 5])
    with torch.no_grad():
        out, attn, final = dec(x, memory, lengths, None, return_attention=True)
        state = None
        for t in range(T):
            o, state, a = dec.step(x[:, t], state, memory, lengths)
            assert_close(o, out[:, t], f"step {t} output")
            assert_close(a, attn[:, t], f"step {t} attention")
    assert state.c is None
    assert_close(state.h, final.h, "final h")


def test_init_state_from_a_gru_encoder_and_errors():
    enc = FusedGRU(E, H // 1, num_layers=2, bidirectional=False, batch_first=True)
    memory, h_n = enc(torch.randn(B, T, E))
    dec = make("dot", 2, True, dtype=torch.float32)
    state = dec.init_state(h_n)
    assert state.c is None and torch.equal(state.h, h_n)
    assert dec.init_state((h_n, torch.randn_like(h_n))).c is None  # an LSTM encoder's (h_n, c_n): h_n is used
    with pytest.raises(ValueError, match=r"unknown cell 'lstmx'; expected one of \('lstm', 'gru'\)"):
        FusedDecoder(E, H, H, cell="lstmx")
    with pytest.raises(RuntimeError, match="a GRU decoder's state has no c"):
        dec.step(torch.randn(B, E), DecoderState(h_n, torch.zeros_like(h_n), None), memory)
    lstm_dec = FusedDecoder(E, H, H)
    with pytest.raises(RuntimeError, match="an LSTM decoder's state needs c"):
        lstm_dec.step(torch.randn(B, E), DecoderState(torch.zeros(1, B, H), None, None), memory)
    assert "cell='gru'" in repr(dec)


def test_seq2seq_gru_trains_and_decodes():
    torch.manual_seed(0)
    model = Seq2Seq(11, 11, emb_size=8, hidden_size=12, num_layers=1, cell="gru", backend="cpu")
    assert isinstance(model.encoder, FusedGRU) and model.decoder.cell == "gru"
    src = torch.randint(3, 11, (4, 6))
    lengths = torch.tensor([6, 4, 5, 2])
    tgt = torch.cat([torch.ones(4, 1, dtype=torch.long), src.flip(1)], 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        loss = model(src, lengths, tgt)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    model.eval()
    greedy = model.generate(src, lengths, max_length=7)
    beam1 = model.generate(src, lengths, max_length=7, beam_size=1)
    beam3 = model.generate(src, lengths, max_length=7, beam_size=3)
    assert torch.equal(greedy[0], beam1[0]) and beam3[0].shape[0] == 4 and beam3[2].shape == (4,)
    with pytest.raises(ValueError, match="unknown cell"):
        Seq2Seq(11, 11, 8, 12, cell="rnn")
