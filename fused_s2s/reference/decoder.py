"""Plain-PyTorch reference of one attention-decoder step (the oracle for fused_s2s::decoder_step).

One step of a Luong-style attention LSTM (or GRU: cell="gru", c is None) decoder with optional input feeding:

    inp_0   = cat(x, feed)              (input feeding: feed is the previous step's h̃), else x
    h_l,c_l = lstm_cell(inp_l, h[l], c[l], *lstm_weights[l]);   inp_{l+1} = h_l
    a       = softmax(score(h_top, memory)) masked by memory_lengths   [B, S]
    context = a · memory                                             [B, M]
    h̃       = tanh(w_out · [context; h_top] + b_out)                 [B, H]   (Luong combine)

Score functions (attn_params; computed by fused_s2s.reference.attention):
    dot        h · m_s                               (M == H)
    scaled_dot h · m_s / sqrt(H)                     (M == H)
    general    (w h) · m_s,  w: [M, H]               (Luong "general")
    additive   v · tanh(w_query h + b_query + w_memory m_s),  w_query [A, H], b_query [A] or None,
               w_memory [A, M], v [A]                (Bahdanau "mlp")
Positions s >= memory_lengths[b] get weight exactly 0.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fused_s2s.reference.attention import attention
from fused_s2s.reference.cells import gru_cell
from fused_s2s.reference.lstm import lstm_cell

__all__ = ["decoder_step", "decoder"]

CellWeights = tuple[Tensor, Tensor, "Tensor | None", "Tensor | None"]


def decoder_step(
    x: Tensor,
    feed: Tensor | None,
    h: Tensor,
    c: Tensor,
    lstm_weights: Sequence[CellWeights],
    attn_kind: str,
    attn_params: dict,
    w_out: Tensor,
    b_out: Tensor | None,
    memory: Tensor,
    memory_lengths: Tensor | None,
    cell: str = "lstm",
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """One decoder step.

    Args:
        x: [B, E] this step's input (embedding).
        feed: [B, H] previous attentional state h̃ (input feeding: layer 0's input is cat(x, feed)) or None.
        h, c: [L, B, H] previous LSTM state.
        lstm_weights: per layer (w_ih [4H, in_l], w_hh [4H, H], b_ih [4H] | None, b_hh [4H] | None), nn.LSTMCell
            layout, gate rows i, f, g, o; in_0 = E (+ H with feed), in_l = H above.
        attn_kind, attn_params: see the module docstring.
        w_out: [H, M + H], b_out: [H] or None: h̃ = tanh(w_out · [context; h_top] + b_out).
        memory: [B, S, M]; memory_lengths: [B] integers in 1..S, or None (all S positions valid).
        cell: "lstm", or "gru" (nn.GRUCell weights [3H, ...] in lstm_weights; c is ignored and returned None).

    Returns:
        (out h̃ [B, H], h_new [L, B, H], c_new [L, B, H] or None, attn_weights [B, S]).
    """
    inp = x if feed is None else torch.cat([x, feed], dim=1)
    hs, cs = [], []
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(lstm_weights):
        if cell == "gru":
            h_l = gru_cell(inp, h[layer], w_ih, w_hh, b_ih, b_hh)
        else:
            h_l, c_l = lstm_cell(inp, h[layer], c[layer], w_ih, w_hh, b_ih, b_hh, None)
            cs.append(c_l)
        hs.append(h_l)
        inp = h_l
    h_top = hs[-1]
    context, weights = attention(h_top, memory, memory_lengths, attn_kind, attn_params, return_weights=True)
    out = torch.tanh(F.linear(torch.cat([context, h_top], dim=1), w_out, b_out))
    return out, torch.stack(hs), torch.stack(cs) if cs else None, weights


def decoder(
    inputs: Tensor,
    feed: Tensor | None,
    h: Tensor,
    c: Tensor,
    lstm_weights: Sequence[CellWeights],
    attn_kind: str,
    attn_params: dict,
    w_out: Tensor,
    b_out: Tensor | None,
    memory: Tensor,
    memory_lengths: Tensor | None,
    input_feeding: bool = True,
    cell: str = "lstm",
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Teacher forcing over inputs [B, T, E]: decoder_step once per step, h̃ fed back when input_feeding
    (feed: the initial h̃ [B, H], zeros when None). The oracle for FusedDecoder.forward.

    Returns (outputs [B, T, H], attention [B, T, S], h_n [L, B, H], c_n [L, B, H]).
    """
    if input_feeding and feed is None:
        feed = inputs.new_zeros(inputs.shape[0], h.shape[-1])
    outs, attns = [], []
    for t in range(inputs.shape[1]):
        out, h, c, weights = decoder_step(inputs[:, t], feed if input_feeding else None, h, c, lstm_weights,
                                          attn_kind, attn_params, w_out, b_out, memory, memory_lengths, cell)
        feed = out
        outs.append(out)
        attns.append(weights)
    return torch.stack(outs, 1), torch.stack(attns, 1), h, c
