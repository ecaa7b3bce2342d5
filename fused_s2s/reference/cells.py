"""Plain-PyTorch reference GRU and Elman RNN layers (the oracle of fused_s2s.ops.gru_layer / rnn_layer).

Math and layout follow torch.nn.GRU and torch.nn.RNN exactly:

    GRU (gate order r, z, n; b_hn stays inside the reset product):
        r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
        z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
        n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
        h' = (1 - z) * n + z * h
    RNN:
        h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh),  act = tanh or relu

Lengths and reverse follow fused_s2s.reference.lstm.lstm_layer: sequence b is active at step t iff
t < lengths[b]; an inactive step keeps b's state and writes zero to y[t, b]; reverse reads each sequence
backwards from its own last element. Nothing is fused or in-place: gradients come from ordinary autograd.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fused_s2s.reference.lstm import _check_lengths

__all__ = ["gru_cell", "rnn_cell", "gru_layer", "rnn_layer", "NONLINEARITIES"]

NONLINEARITIES = ("tanh", "relu")


def gru_cell(x_t: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
             b_hh: Optional[Tensor]) -> Tensor:
    """One GRU step with nn.GRU's math: x_t [B, I], h [B, H], w_ih [3H, I], w_hh [3H, H] -> h' [B, H]."""
    gi_r, gi_z, gi_n = F.linear(x_t, w_ih, b_ih).chunk(3, dim=1)
    gh_r, gh_z, gh_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(gi_r + gh_r)
    z = torch.sigmoid(gi_z + gh_z)
    n = torch.tanh(gi_n + r * gh_n)
    return (1 - z) * n + z * h


def rnn_cell(x_t: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
             nonlinearity: str = "tanh") -> Tensor:
    """One Elman RNN step with nn.RNN's math: w_ih [H, I], w_hh [H, H] -> h' [B, H]."""
    pre = F.linear(x_t, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def _layer(step: Callable[[Tensor, Tensor], Tensor], x: Tensor, h0: Tensor, lengths: Optional[Tensor],
           reverse: bool) -> tuple[Tensor, Tensor]:
    """The per-step loop of a one-state cell, with the lengths and reverse rules of the module docstring."""
    T, B = x.shape[0], x.shape[1]
    if lengths is not None:
        _check_lengths(lengths, T, B)
        lengths = lengths.to(x.device)
    h = h0
    ys: list[Optional[Tensor]] = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        if lengths is None:
            h = step(x[t], h)
            ys[t] = h
        else:
            # torch.where, not a multiply: an inactive step contributes nothing (not even 0 * inf = NaN)
            active = (lengths > t).unsqueeze(1)
            h_new = step(torch.where(active, x[t], torch.zeros_like(x[t])), h)
            h = torch.where(active, h_new, h)
            ys[t] = torch.where(active, h_new, torch.zeros_like(h_new))
    y = torch.stack(ys, dim=0) if T > 0 else x.new_empty(0, B, h0.shape[-1])  # type: ignore[arg-type]
    return y, h


def gru_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
              lengths: Optional[Tensor] = None, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """One GRU layer, one direction: x [T, B, I], h0 [B, H] -> (y [T, B, H], h_n [B, H])."""
    return _layer(lambda x_t, h: gru_cell(x_t, h, w_ih, w_hh, b_ih, b_hh), x, h0, lengths, reverse)


def rnn_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
              lengths: Optional[Tensor] = None, reverse: bool = False,
              nonlinearity: str = "tanh") -> tuple[Tensor, Tensor]:
    """One Elman RNN layer, one direction: x [T, B, I], h0 [B, H] -> (y [T, B, H], h_n [B, H])."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return _layer(lambda x_t, h: rnn_cell(x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity), x, h0, lengths, reverse)
