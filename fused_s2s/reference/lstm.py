"""Plain-PyTorch reference LSTM (the oracle): one cell step, one layer-direction, and the full stack.

Math and layout follow torch.nn.LSTM exactly:

    gates = x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh          # [B, 4H], rows in gate order i, f, g, o
    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of the four H-wide chunks
    c_t = f * c + i * g
    h_t = o * tanh(c_t)
    h_t = h_t @ w_hr.T                                        # only with a projection (proj_size > 0)

Shapes (time-major): H = hidden_size, P = proj_size if proj_size > 0 else H, D = 2 if bidirectional else 1.

Variable lengths: sequence b is *active* at step t iff t < lengths[b]. An inactive step leaves b's (h, c)
unchanged and writes zero to y[t, b]. Forward direction: h_n[b] is the state after t = len_b - 1. Reverse
direction: steps t >= len_b are skipped (the state stays h0, c0), then t = len_b - 1 .. 0 run, so each
sequence is read backwards from its own last element. This is what nn.LSTM computes on a PackedSequence,
with pad_packed_sequence's zero padding.

Everything is computed in the dtype of the inputs (float64, float32, and also bfloat16/float16, which then
round at every operation like any plain PyTorch code would). Nothing here is fused or in-place, so gradients
with respect to x, h0, c0 and every weight come from ordinary autograd.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# One layer-direction's parameters in nn.LSTM's order: (w_ih, w_hh, b_ih, b_hh, w_hr).
# Biases are None when bias=False; w_hr is None when proj_size == 0.
LayerWeights = tuple[Tensor, Tensor, "Tensor | None", "Tensor | None", "Tensor | None"]

__all__ = ["lstm_cell", "lstm_layer", "lstm", "LayerWeights", "peephole_lstm_cell", "peephole_lstm_layer"]


def lstm_cell(
    x_t: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step with nn.LSTM's math.

    Args:
        x_t: [B, I] input at this step.
        h: [B, P] previous hidden state (projected if w_hr is given).
        c: [B, H] previous cell state.
        w_ih: [4H, I]; w_hh: [4H, P]; b_ih, b_hh: [4H] or None; w_hr: [P, H] or None.

    Returns:
        (h_new [B, P], c_new [B, H]).
    """
    gates = F.linear(x_t, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # [B, 4H]
    i, f, g, o = gates.chunk(4, dim=1)  # gate order i, f, g, o, as in nn.LSTM
    i = torch.sigmoid(i)
    f = torch.sigmoid(f)
    g = torch.tanh(g)
    o = torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)  # [B, H]
    if w_hr is not None:
        h_new = F.linear(h_new, w_hr)  # [B, P]
    return h_new, c_new


def _check_lengths(lengths: Tensor, T: int, B: int) -> None:
    """The oracle refuses lengths outside the op's contract rather than silently doing something."""
    if lengths.dim() != 1 or lengths.numel() != B:
        raise ValueError(f"lengths must have shape [{B}] (one per batch entry), got {list(lengths.shape)}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if B > 0 and (int(lengths.min()) < 1 or int(lengths.max()) > T):
        raise ValueError(f"every length must be in [1, {T}], got {lengths.tolist()}")


def lstm_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One layer, one direction, as a per-step Python loop: the contract of `fused_s2s.ops.lstm_layer`.

    Args:
        x: [T, B, I] time-major input.
        h0: [B, P] initial hidden state; c0: [B, H] initial cell state (always given; zeros if none).
        w_ih [4H, I], w_hh [4H, P], b_ih / b_hh [4H] or None, w_hr [P, H] or None.
        lengths: int64 [B] (any order, each 1 <= len <= T) or None for all sequences of length T.
        reverse: False runs t = 0 .. T-1; True runs t = T-1 .. 0.

    Returns:
        y [T, B, P] (zero where a sequence is inactive), h_n [B, P], c_n [B, H]: the state after each
        sequence's last active step (see the module docstring for the lengths rules).
    """
    T, B = x.shape[0], x.shape[1]
    if lengths is not None:
        _check_lengths(lengths, T, B)
        lengths = lengths.to(x.device)

    h, c = h0, c0
    ys: list[Tensor | None] = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        if lengths is None:
            h, c = lstm_cell(x[t], h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
            ys[t] = h
        else:
            # [B, 1] mask of sequences still running at step t. torch.where (not a multiply) so that an
            # inactive step contributes nothing, not even 0 * inf = NaN, to values or gradients; the padded
            # input itself is masked too, or a NaN there would reach the weight gradients (as 0 * NaN).
            active = (lengths > t).unsqueeze(1)
            x_t = torch.where(active, x[t], torch.zeros_like(x[t]))
            h_new, c_new = lstm_cell(x_t, h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
            h = torch.where(active, h_new, h)
            c = torch.where(active, c_new, c)
            ys[t] = torch.where(active, h_new, torch.zeros_like(h_new))
    if T == 0:
        y = x.new_empty(0, B, h0.shape[-1])
    else:
        y = torch.stack(ys, dim=0)  # type: ignore[arg-type]  # every slot filled by the loop
    return y, h, c


def lstm(
    x: Tensor,
    h0: Tensor | None,
    c0: Tensor | None,
    weights: Sequence[LayerWeights],
    *,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The full nn.LSTM stack (time-major) built from `lstm_layer`.

    Layer-major, direction inner, as nn.LSTM: layer k > 0 reads concat(forward y, reverse y) on the
    feature dim; F.dropout(p=dropout) is applied to each layer's output except the last, and only when
    training; h_n / c_n index = layer * D + direction.

    Args:
        x: [T, B, I] time-major input.
        h0: [L*D, B, P] or None (zeros); c0: [L*D, B, H] or None (zeros).
        weights: L*D tuples (w_ih, w_hh, b_ih, b_hh, w_hr) in nn.LSTM's parameter order.
        bidirectional: D = 2 if True.
        dropout, training: between-layer dropout probability, applied only if training.
        lengths: int64 [B] or None, as in `lstm_layer` (the same lengths for every layer and direction).

    Returns:
        y [T, B, D*P] (padding positions zero when lengths is given), h_n [L*D, B, P], c_n [L*D, B, H].
    """
    D = 2 if bidirectional else 1
    if len(weights) % D != 0 or len(weights) == 0:
        raise ValueError(f"expected a positive multiple of {D} weight tuples, got {len(weights)}")
    L = len(weights) // D
    B = x.shape[1]
    # H from w_hh's rows (4H), P from w_hh's columns (the width of the recurrent input h).
    H = weights[0][1].shape[0] // 4
    P = weights[0][1].shape[1]
    if h0 is None:
        h0 = x.new_zeros(L * D, B, P)
    if c0 is None:
        c0 = x.new_zeros(L * D, B, H)

    layer_input = x
    h_n: list[Tensor] = []
    c_n: list[Tensor] = []
    for layer in range(L):
        outputs = []
        for direction in range(D):
            k = layer * D + direction
            w_ih, w_hh, b_ih, b_hh, w_hr = weights[k]
            y, h, c = lstm_layer(layer_input, h0[k], c0[k], w_ih, w_hh, b_ih, b_hh, w_hr,
                                 lengths, reverse=direction == 1)
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
        layer_input = outputs[0] if D == 1 else torch.cat(outputs, dim=-1)  # [T, B, D*P]
        if dropout > 0 and training and layer < L - 1:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
    return layer_input, torch.stack(h_n, dim=0), torch.stack(c_n, dim=0)


def peephole_lstm_cell(x_t: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                       b_hh: Tensor | None, w_ci: Tensor, w_cf: Tensor, w_co: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the peephole LSTM (Gers & Schmidhuber): the gates also see the cell state,

        i = sigmoid(a_i + w_ci * c),  f = sigmoid(a_f + w_cf * c),  g = tanh(a_g)
        c_t = f * c + i * g,          o = sigmoid(a_o + w_co * c_t),  h_t = o * tanh(c_t)

    with a = x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh in nn.LSTM's gate order and w_c* of shape [H].
    """
    a_i, a_f, a_g, a_o = (F.linear(x_t, w_ih, b_ih) + F.linear(h, w_hh, b_hh)).chunk(4, dim=1)
    i = torch.sigmoid(a_i + w_ci * c)
    f = torch.sigmoid(a_f + w_cf * c)
    g = torch.tanh(a_g)
    c_new = f * c + i * g
    o = torch.sigmoid(a_o + w_co * c_new)
    return o * torch.tanh(c_new), c_new


def peephole_lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                        b_hh: Tensor | None, w_ci: Tensor, w_cf: Tensor, w_co: Tensor, lengths: Tensor | None = None,
                        reverse: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """One peephole-LSTM layer, one direction, with lstm_layer's lengths and reverse rules (no projection)."""
    T, B = x.shape[0], x.shape[1]
    if lengths is not None:
        _check_lengths(lengths, T, B)
        lengths = lengths.to(x.device)
    h, c = h0, c0
    ys: list[Tensor | None] = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        x_t = x[t]
        if lengths is not None:
            active = (lengths > t).unsqueeze(1)
            x_t = torch.where(active, x_t, torch.zeros_like(x_t))
        h_new, c_new = peephole_lstm_cell(x_t, h, c, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co)
        if lengths is None:
            h, c, ys[t] = h_new, c_new, h_new
        else:
            h, c = torch.where(active, h_new, h), torch.where(active, c_new, c)
            ys[t] = torch.where(active, h_new, torch.zeros_like(h_new))
    y = torch.stack(ys, dim=0) if T > 0 else x.new_empty(0, B, h0.shape[-1])  # type: ignore[arg-type]
    return y, h, c
