"""FusedLSTM: a drop-in torch.nn.LSTM whose layers run on fused_s2s.ops.lstm_layer.

The composer (fused_s2s/nn/recurrent.py) keeps nn.LSTM's whole contract and adds ``backend=`` and
``lengths=``; this file gives the LSTM cell: four gates, a cell state, proj_size, and the op it runs on.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import init

from fused_s2s.nn.recurrent import FusedRecurrentBase, from_native
from fused_s2s.ops.lstm import lstm_layer
from fused_s2s.ops.peephole import peephole_lstm_layer

__all__ = ["FusedLSTM", "FusedLSTMEncoder"]


class FusedLSTM(FusedRecurrentBase):
    r"""Multi-layer LSTM with nn.LSTM's interface, running on fused_s2s's one-layer kernels.

    Args are those of :class:`torch.nn.LSTM` (input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None), plus the
    keyword ``backend`` ("auto", "cpu", "triton", "cuda", "reference"; see :func:`fused_s2s.ops.lstm_layer`).

    ``forward(input, hx=None, lengths=None)`` returns ``output, (h_n, c_n)`` exactly as nn.LSTM does.
    ``lengths`` (1-D integer tensor, one entry per sequence, each in [1, T]) marks the valid prefix of each
    sequence of a padded (not packed) batch; it cannot be combined with a PackedSequence.

    ``peephole=True`` (keyword, opt-in) adds diagonal peephole weights per layer and direction,
    ``weight_ci_l{k}``, ``weight_cf_l{k}``, ``weight_co_l{k}`` (``_reverse`` suffix; shape [hidden_size]):
    i and f also see c_{t-1}, o sees c_t (fused_s2s.reference.lstm.peephole_lstm_cell). It runs on the C++
    kernels or the reference (no GPU kernels yet) and does not combine with proj_size. Without it the module is
    exactly nn.LSTM.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, backend: str = "auto", peephole: bool = False) -> None:
        if peephole and proj_size > 0:
            raise ValueError("peephole=True does not support proj_size > 0: the peephole weights act on the cell "
                             "state, and no peephole kernel projects h; use one or the other")
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, backend=backend)
        self.peephole = peephole
        # Per (layer, direction): the names of (w_ci, w_cf, w_co); registered after nn.LSTM's own parameters.
        self._peephole_names: list[tuple[str, str, str]] = []
        if peephole:
            stdv = 1.0 / math.sqrt(hidden_size)
            for name in self._op_weight_names:
                suffix = name[0].removeprefix("weight_ih")  # "_l{k}" or "_l{k}_reverse"
                names = tuple(f"weight_{g}{suffix}" for g in ("ci", "cf", "co"))
                for n in names:
                    setattr(self, n, nn.Parameter(init.uniform_(torch.empty(hidden_size, device=device, dtype=dtype),
                                                                -stdv, stdv)))
                self._peephole_names.append(names)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", peephole=True" if self.peephole else "")

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, backend: str = "auto") -> "FusedLSTM":
        """A FusedLSTM with a copy of `lstm`'s configuration, weights, device, dtype and training mode.

        The weights are copied (the two modules are independent afterwards); requires_grad is kept per
        parameter. fused_s2s.replace_lstm instead moves the very Parameter objects into the new module.
        """
        return _from_lstm(cls, lstm, backend, share_parameters=False)

    def _layer(self, k: int, x: Tensor, state: tuple[Tensor, ...], weights: tuple[Optional[Tensor], ...],
               lengths: Optional[Tensor], reverse: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
        w_ih, w_hh, b_ih, b_hh, w_hr = weights
        if self.peephole:
            w_ci, w_cf, w_co = (getattr(self, n).to(x.dtype) for n in self._peephole_names[k])
            y, h, c = peephole_lstm_layer(x, state[0], state[1], w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, lengths,
                                          reverse, backend=self.backend)
            return y, (h, c)
        y, h, c = lstm_layer(x, state[0], state[1], w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                             backend=self.backend)
        return y, (h, c)


class FusedLSTMEncoder(FusedLSTM):
    """The seq2seq encoder: exactly FusedLSTM (same arguments, parameters and outputs).

    A separate name so encoder code reads as such, e.g. OpenNMT-style
    ``FusedLSTMEncoder(emb, hidden, num_layers, bidirectional=True, batch_first=True)`` fed with
    ``pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)``, or with the padded
    batch and ``lengths=`` directly (no packing, same numbers).
    """


def _from_lstm(cls, lstm: nn.LSTM, backend: str, share_parameters: bool) -> FusedLSTM:
    """Build `cls` with `lstm`'s configuration, then give it `lstm`'s parameters (shared or copied)."""
    return from_native(cls, lstm, nn.LSTM, backend, share_parameters,
                       proj_size=lstm.proj_size if isinstance(lstm, nn.LSTM) else 0)
