"""Greedy and beam-search decoding over any decoder with a step API.

The protocol is one function and a state:

    step_fn(tokens [N] int64, state) -> (log_probs [N, V], new_state)

where `state` is None, a Tensor (batch along dim 0), a tuple/list of those, or any object with
`index_select(indices)` (e.g. fused_s2s.nn.DecoderState). Seq2Seq.step_fn builds one (embedding +
FusedDecoder.step + generator + log_softmax). Beam search reorders the state with `reorder_state`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

__all__ = ["greedy_decode", "beam_search", "reorder_state", "length_penalty", "LENGTH_PENALTIES"]

StepFn = Callable[[Tensor, Any], "tuple[Tensor, Any]"]
LENGTH_PENALTIES = ("none", "avg", "gnmt")


def reorder_state(state: Any, indices: Tensor) -> Any:
    """Pick batch rows `indices` of a decoding state (None, Tensor, tuple/list, or has index_select)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.index_select(0, indices.to(state.device))
    if isinstance(state, (tuple, list)):
        return type(state)(reorder_state(s, indices) for s in state)
    return state.index_select(indices)


def length_penalty(kind: str, length: int, alpha: float = 0.6) -> float:
    """Divisor of a hypothesis' summed log-probability: 1 (none), its length (avg), or GNMT's
    ((5 + length) / 6) ** alpha (Wu et al. 2016)."""
    if kind == "none":
        return 1.0
    if kind == "avg":
        return float(max(length, 1))
    if kind == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    raise ValueError(f"unknown length_penalty {kind!r}; expected one of {LENGTH_PENALTIES}")


def _check_args(batch_size: int, max_length: int) -> None:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")


@torch.no_grad()
def greedy_decode(step_fn: StepFn, state: Any, batch_size: int, bos_id: int, eos_id: int, max_length: int,
                  pad_id: int = 0, device: Optional[torch.device] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Pick the most probable token at every step until EOS or max_length.

    Returns (tokens [B, T] without BOS, EOS included, pad_id after it; lengths [B] counting EOS;
    scores [B] summed log-probabilities), T <= max_length.
    """
    _check_args(batch_size, max_length)
    tokens = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
    scores = torch.zeros(batch_size, device=device)
    out = []
    for _ in range(max_length):
        log_probs, state = step_fn(tokens, state)
        best, tokens = log_probs.max(dim=-1)
        tokens = tokens.masked_fill(finished, pad_id)
        scores = scores + best.float().masked_fill(finished, 0.0)
        lengths = lengths + (~finished).long()
        out.append(tokens)
        finished = finished | (tokens == eos_id)
        if bool(finished.all()):
            break
    return torch.stack(out, 1), lengths, scores


@torch.no_grad()
def beam_search(step_fn: StepFn, state: Any, batch_size: int, beam_size: int, bos_id: int, eos_id: int,
                max_length: int, pad_id: int = 0, length_penalty_kind: str = "none", alpha: float = 0.6,
                device: Optional[torch.device] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Batched beam search.

    `state` (and whatever step_fn closes over, e.g. the encoder memory) must already hold batch_size *
    beam_size rows, beam-inner: row b * beam_size + j is beam j of source b (DecoderState.repeat_interleave).
    At each step the beam_size best live continuations of every source are kept; a continuation ending in EOS
    becomes a finished hypothesis, scored by its summed log-probability divided by the length penalty
    ("none", "avg": per token, "gnmt": ((5 + len) / 6) ** alpha). A source stops when its best continuation
    ends in EOS (exact for "none": no live beam can still beat it), or at max_length (live beams then count as
    finished). Returns the best hypothesis per source:
    (tokens [B, T] without BOS, EOS included if emitted, pad_id after; lengths [B]; normalised scores [B]).
    """
    _check_args(batch_size, max_length)
    if beam_size <= 0:
        raise ValueError(f"beam_size must be positive, got {beam_size}")
    length_penalty(length_penalty_kind, 1, alpha)  # validates the name
    B, K = batch_size, beam_size
    tokens = torch.full((B * K,), bos_id, dtype=torch.long, device=device)
    # Only beam 0 is live at the start (all beams equal), so the first top-k does not pick duplicates.
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    history = torch.empty(B * K, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, Tensor]]] = [[] for _ in range(B)]
    done = [False] * B
    for t in range(max_length):
        log_probs, state = step_fn(tokens, state)
        V = log_probs.shape[-1]
        cand = (scores.unsqueeze(-1) + log_probs.float().view(B, K, V)).view(B, K * V)
        # 2K candidates: even if K of them end in EOS, K live ones remain.
        top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=1)
        top_scores, top_idx = top_scores.cpu(), top_idx.cpu()
        new_rows, new_tokens, new_scores = [], [], []
        for b in range(B):
            rows, toks, scs = [], [], []
            for rank, (s, idx) in enumerate(zip(top_scores[b].tolist(), top_idx[b].tolist())):
                if done[b] or len(rows) == K or s == float("-inf"):
                    break
                beam, tok = divmod(idx, V)
                row = b * K + beam
                if tok == eos_id:
                    seq = torch.cat([history[row], history.new_tensor([eos_id])])
                    finished[b].append((s / length_penalty(length_penalty_kind, t + 1, alpha), seq))
                    # The best continuation ends: stop this source (OpenNMT's rule; exact without a length
                    # penalty, since live scores only fall).
                    done[b] = rank == 0
                    continue
                rows.append(row)
                toks.append(tok)
                scs.append(s)
            while len(rows) < K:  # a done source (or too few candidates): pad with dead beams
                rows.append(b * K)
                toks.append(pad_id)
                scs.append(float("-inf"))
            new_rows += rows
            new_tokens += toks
            new_scores += scs
        if all(done):
            break
        rows_t = torch.tensor(new_rows, dtype=torch.long, device=device)
        tokens = torch.tensor(new_tokens, dtype=torch.long, device=device)
        history = torch.cat([history.index_select(0, rows_t), tokens.unsqueeze(1)], dim=1)
        scores = torch.tensor(new_scores, device=device).view(B, K)
        state = reorder_state(state, rows_t)
    else:  # max_length reached: live beams join the finished ones
        for b in range(B):
            if done[b]:
                continue
            for j in range(K):
                s = float(scores[b, j])
                if s != float("-inf"):
                    finished[b].append((s / length_penalty(length_penalty_kind, history.shape[1], alpha),
                                        history[b * K + j]))
    best = [max(f, key=lambda x: x[0]) for f in finished]
    T = max(len(seq) for _, seq in best)
    out = torch.full((B, T), pad_id, dtype=torch.long, device=device)
    for b, (_, seq) in enumerate(best):
        out[b, :len(seq)] = seq
    lengths = torch.tensor([len(seq) for _, seq in best], dtype=torch.long, device=device)
    return out, lengths, torch.tensor([s for s, _ in best], device=device)
