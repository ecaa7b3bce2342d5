"""Convergence test: a small Seq2Seq learns to reverse digit sequences (length 5-10) on the CPU.

Seeded (it is a convergence test, not a random-input test) so that it is deterministic; about a minute on the
2-core CI VM. The time is printed (pytest -s) rather than asserted.
"""
import time

import torch

from fused_s2s import Seq2Seq

PAD, BOS, EOS, DIGIT0 = 0, 1, 2, 3
VOCAB = DIGIT0 + 10


def reversal_batch(gen: torch.Generator, batch: int, min_len: int = 5, max_len: int = 10):
    """-> src [B, S] (padded digits), src_lengths [B], tgt [B, T] = BOS + reversed digits + EOS (padded)."""
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=gen)
    digits = torch.randint(DIGIT0, VOCAB, (batch, max_len), generator=gen)
    pos = torch.arange(max_len)
    valid = pos < lengths.unsqueeze(1)
    src = digits.masked_fill(~valid, PAD)
    # reversed: position i holds digit lengths-1-i
    rev_idx = (lengths.unsqueeze(1) - 1 - pos).clamp(min=0)
    rev = torch.gather(digits, 1, rev_idx).masked_fill(~valid, PAD)
    tgt = torch.full((batch, max_len + 2), PAD)
    tgt[:, 0] = BOS
    tgt[:, 1:max_len + 1] = rev
    tgt[torch.arange(batch), lengths + 1] = EOS
    return src, lengths, tgt


def test_reversal_batch_is_right():
    src, lengths, tgt = reversal_batch(torch.Generator().manual_seed(0), 4)
    for b in range(4):
        n = int(lengths[b])
        assert tgt[b, 1:n + 1].tolist() == src[b, :n].flip(0).tolist()
        assert tgt[b, n + 1] == EOS and (tgt[b, n + 2:] == PAD).all() and (src[b, n:] == PAD).all()


def test_seq2seq_learns_reversal():
    torch.manual_seed(1234)
    gen = torch.Generator().manual_seed(1234)
    model = Seq2Seq(VOCAB, VOCAB, emb_size=32, hidden_size=64, attention="general", input_feeding=False,
                    pad_id=PAD, bos_id=BOS, eos_id=EOS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = time.perf_counter()
    model.train()
    for step in range(STEPS):
        src, lengths, tgt = reversal_batch(gen, 64)
        loss = model(src, lengths, tgt)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    train_time = time.perf_counter() - start
    model.eval()
    src, lengths, tgt = reversal_batch(torch.Generator().manual_seed(99), 500)
    tokens, out_lengths, _ = model.generate(src, lengths, max_length=12)
    T = tgt.shape[1] - 1
    pred = torch.full((500, T), PAD)
    n = min(T, tokens.shape[1])
    pred[:, :n] = tokens[:, :n]
    exact = (pred == tgt[:, 1:]).all(dim=1).float().mean().item()
    print(f"\nreversal: {STEPS} steps in {train_time:.1f} s, final loss {loss.item():.4f}, "
          f"greedy exact match {exact:.3f}, total {time.perf_counter() - start:.1f} s")
    assert exact >= MIN_EXACT, f"exact match {exact:.3f} < {MIN_EXACT} after {STEPS} steps (loss {loss.item():.4f})"


# 400 steps without input feeding (the fused LSTM runs the decoder stack at once): 0.976 at 64 s under load
# here; with input feeding (a Python step loop) 300 steps reached 0.962 in 86 s.
STEPS = 400
# Where one seed lands depends on rounding (the order of a GEMM's sums, the last bit of an activation): over
# seeds 10-25 two builds that differ only there reached 0.952-0.986 and 0.918-0.988 (means 0.969 and 0.966,
# 2026-12-05), so the bar sits below that spread; a model that has not learned the task scores near 0.
MIN_EXACT = 0.9


def test_loss_ignores_padding_and_matches_manual():
    model = Seq2Seq(VOCAB, VOCAB, emb_size=6, hidden_size=8, num_layers=2, pad_id=PAD, bos_id=BOS, eos_id=EOS)
    src, lengths, tgt = reversal_batch(torch.Generator().manual_seed(3), 4)
    loss = model(src, lengths, tgt)
    memory, mlen, state = model.encode(src, lengths)
    out, _, _ = model.decoder(model.tgt_embedding(tgt[:, :-1]), memory, mlen, state)
    logp = torch.log_softmax(model.generator(out), -1)
    nll = -logp.gather(2, tgt[:, 1:, None]).squeeze(2)
    mask = tgt[:, 1:] != PAD
    torch.testing.assert_close(loss, nll[mask].mean())
    # the padding embedding stays zero and gets no gradient
    assert model.tgt_embedding.weight[PAD].abs().sum() == 0
    loss.backward()
    assert model.tgt_embedding.weight.grad[PAD].abs().sum() == 0
