"""greedy_decode and beam_search: beam 1 equals greedy; beam 3 beats greedy on a hand-built model where greedy
is not optimal; length penalties; Seq2Seq.generate through both."""
import math

import pytest
import torch

from fused_s2s import Seq2Seq, beam_search, greedy_decode
from fused_s2s.decoding import length_penalty

PAD, BOS, EOS, A, B_ = 0, 1, 2, 3, 4
V = 5


def table_step_fn(table, default=None):
    """A fake model: the next-token distribution is a hand-set function of the prefix. The state is the
    prefix itself [N, t] (a Tensor, reordered along dim 0 like any state)."""
    default = default or {EOS: 1.0}

    def step(tokens, state):
        prefix = tokens.unsqueeze(1) if state is None else torch.cat([state, tokens.unsqueeze(1)], 1)
        rows = []
        for p in prefix.tolist():
            probs = table.get(tuple(t for t in p if t != BOS), default)
            row = torch.full((V,), 1e-9)
            for tok, pr in probs.items():
                row[tok] = pr
            rows.append((row / row.sum()).log())
        return torch.stack(rows), prefix

    return step


# greedy: A (0.55), then A (0.4), then EOS: p = 0.22. Best: B EOS, p = 0.45 * 0.9 = 0.405.
TABLE = {(): {A: 0.55, B_: 0.45}, (A,): {A: 0.4, B_: 0.3, EOS: 0.3}, (B_,): {EOS: 0.9, A: 0.1}}


def test_beam_finds_better_sequence_than_greedy():
    step = table_step_fn(TABLE)
    g, g_len, g_score = greedy_decode(step, None, 1, BOS, EOS, max_length=5)
    assert g.tolist() == [[A, A, EOS]] and g_len.tolist() == [3]
    assert math.isclose(float(g_score), math.log(0.55 * 0.4), rel_tol=1e-4)
    state = None
    b, b_len, b_score = beam_search(step, state, 1, 3, BOS, EOS, max_length=5)
    assert b.tolist() == [[B_, EOS]] and b_len.tolist() == [2]
    assert math.isclose(float(b_score), math.log(0.45 * 0.9), rel_tol=1e-4)


def test_beam_batched_sources_independent():
    # source 0 uses TABLE; source 1's rows see the same table but the batch must not mix beams across sources
    step = table_step_fn(TABLE)
    b, b_len, _ = beam_search(step, None, 2, 3, BOS, EOS, max_length=5)
    assert b.tolist() == [[B_, EOS], [B_, EOS]] and b_len.tolist() == [2, 2]


def test_length_penalty_changes_choice():
    # Short: EOS at once, p = 0.3. Long: A A A EOS with p = 0.7 * 0.9 * 0.9 * 0.9 = 0.51 -> long wins even
    # without a penalty; make the long one lose raw but win per token.
    table = {(): {EOS: 0.4, A: 0.6}, (A,): {A: 0.6, EOS: 0.4}, (A, A): {EOS: 0.6, A: 0.4}}
    step = table_step_fn(table)
    # raw: EOS 0.4; A EOS 0.24; A A EOS 0.216 -> EOS
    b, _, s = beam_search(step, None, 1, 3, BOS, EOS, max_length=5, length_penalty_kind="none")
    assert b.tolist() == [[EOS]]
    # avg: EOS -0.92; A EOS -0.71; A A EOS log(0.216)/3 = -0.51 -> A A EOS
    b, _, s = beam_search(step, None, 1, 3, BOS, EOS, max_length=5, length_penalty_kind="avg")
    assert b.tolist() == [[A, A, EOS]]
    assert math.isclose(float(s), math.log(0.216) / 3, rel_tol=1e-4)
    assert length_penalty("gnmt", 3, 0.6) == pytest.approx((8 / 6) ** 0.6)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(step, None, 1, 3, BOS, EOS, max_length=5, length_penalty_kind="bogus")


def test_max_length_without_eos():
    step = table_step_fn({}, default={A: 0.9, B_: 0.1})
    g, g_len, _ = greedy_decode(step, None, 2, BOS, EOS, max_length=4)
    assert g.tolist() == [[A] * 4] * 2 and g_len.tolist() == [4, 4]
    b, b_len, s = beam_search(step, None, 2, 2, BOS, EOS, max_length=4)
    assert b.tolist() == [[A] * 4] * 2 and b_len.tolist() == [4, 4]
    assert float(s[0]) == pytest.approx(4 * math.log(0.9), rel=1e-4)


def tiny_model(feeding):
    model = Seq2Seq(9, 11, emb_size=6, hidden_size=8, num_layers=2, input_feeding=feeding)
    for p in model.parameters():
        torch.nn.init.uniform_(p, -1.0, 1.0)  # peaked distributions: no near-ties between greedy and beam 1
    return model.eval()


@pytest.mark.parametrize("feeding", [True, False])
def test_beam_one_equals_greedy_on_seq2seq(feeding):
    model = tiny_model(feeding)
    src = torch.randint(3, 9, (5, 7))
    lengths = torch.tensor([7, 3, 1, 5, 6])
    g, g_len, g_score = model.generate(src, lengths, max_length=9)
    memory, mlen, state = model.encode(src, lengths)
    b, b_len, b_score = beam_search(model.step_fn(memory, mlen), state, 5, 1, model.bos_id, model.eos_id, 9)
    assert torch.equal(g_len, b_len)
    assert torch.equal(g[:, :b.shape[1]], b) and (g[:, b.shape[1]:] == PAD).all()
    torch.testing.assert_close(g_score, b_score, rtol=1e-5, atol=1e-5)


def test_seq2seq_beam_scores_at_least_greedy():
    model = tiny_model(True)
    src = torch.randint(3, 9, (4, 6))
    lengths = torch.tensor([6, 2, 4, 5])
    _, _, g_score = model.generate(src, lengths, max_length=8)
    b, b_len, b_score = model.generate(src, lengths, max_length=8, beam_size=4)
    assert (b_score >= g_score - 1e-5).all()
    # the reported score is the sequence's log-probability under the model (teacher forcing)
    tgt = torch.cat([torch.full((4, 1), model.bos_id), b], 1)
    with torch.no_grad():
        memory, mlen, state = model.encode(src, lengths)
        out, _, _ = model.decoder(model.tgt_embedding(tgt[:, :-1]), memory, mlen, state)
        lp = torch.log_softmax(model.generator(out), -1).gather(2, tgt[:, 1:, None]).squeeze(2)
    mask = torch.arange(b.shape[1]) < b_len[:, None]
    torch.testing.assert_close((lp * mask).sum(1), b_score, rtol=1e-4, atol=1e-4)


def test_decoding_bad_args():
    step = table_step_fn(TABLE)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(step, None, 1, 0, BOS, EOS, 5)
    with pytest.raises(ValueError, match="max_length"):
        greedy_decode(step, None, 1, BOS, EOS, 0)
