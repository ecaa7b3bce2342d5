"""FusedGRU and FusedRNN: drop-in torch.nn.GRU and torch.nn.RNN whose layers run on fused_s2s.ops.gru_layer /
rnn_layer. The composer (fused_s2s/nn/recurrent.py) keeps the torch modules' whole contract and adds
``backend=`` and ``lengths=``; this file gives each cell and the op it runs on.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from fused_s2s.nn.recurrent import FusedRecurrentBase, from_native
from fused_s2s.ops.cells import NO_CUDA_CELLS, gru_layer, rnn_layer

__all__ = ["FusedGRU", "FusedRNN"]

_NO_PROJ = "proj_size argument is only supported for LSTM, not RNN or GRU"  # nn.GRU's / nn.RNN's words


class FusedGRU(FusedRecurrentBase):
    r"""Multi-layer GRU with nn.GRU's interface (gates r, z, n; b_hn inside the reset product), running on
    fused_s2s's one-layer kernels.

    Args are those of :class:`torch.nn.GRU` (input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None), plus the keyword
    ``backend`` ("auto", "cpu", "reference"). ``forward(input, hx=None, lengths=None)`` returns
    ``output, h_n`` exactly as nn.GRU does; ``lengths`` as in FusedLSTM.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, backend: str = "auto", proj_size: Optional[int] = None) -> None:
        if proj_size is not None:
            raise ValueError(_NO_PROJ)
        if backend == "cuda":
            raise ValueError(NO_CUDA_CELLS)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, backend=backend)

    @classmethod
    def from_gru(cls, gru: nn.GRU, backend: str = "auto") -> "FusedGRU":
        """A FusedGRU with a copy of `gru`'s configuration, weights, device, dtype and training mode."""
        return from_native(cls, gru, nn.GRU, backend, share_parameters=False)

    def _layer(self, k: int, x: Tensor, state: tuple[Tensor, ...], weights: tuple[Optional[Tensor], ...],
               lengths: Optional[Tensor], reverse: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
        w_ih, w_hh, b_ih, b_hh, _ = weights
        y, h = gru_layer(x, state[0], w_ih, w_hh, b_ih, b_hh, lengths, reverse, backend=self.backend)
        return y, (h,)


class FusedRNN(FusedRecurrentBase):
    r"""Multi-layer Elman RNN with nn.RNN's interface (nonlinearity "tanh" or "relu"), running on fused_s2s's
    one-layer kernels.

    Args are those of :class:`torch.nn.RNN` (input_size, hidden_size, num_layers=1, nonlinearity="tanh",
    bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None), plus the
    keyword ``backend``. ``forward(input, hx=None, lengths=None)`` returns ``output, h_n`` as nn.RNN does.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, backend: str = "auto", proj_size: Optional[int] = None) -> None:
        if proj_size is not None:
            raise ValueError(_NO_PROJ)
        if backend == "cuda":
            raise ValueError(NO_CUDA_CELLS)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype, backend=backend)

    @classmethod
    def from_rnn(cls, rnn: nn.RNN, backend: str = "auto") -> "FusedRNN":
        """A FusedRNN with a copy of `rnn`'s configuration, weights, device, dtype and training mode."""
        return from_native(cls, rnn, nn.RNN, backend, share_parameters=False,
                           nonlinearity=getattr(rnn, "nonlinearity", "tanh"))

    def _layer(self, k: int, x: Tensor, state: tuple[Tensor, ...], weights: tuple[Optional[Tensor], ...],
               lengths: Optional[Tensor], reverse: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
        w_ih, w_hh, b_ih, b_hh, _ = weights
        y, h = rnn_layer(x, state[0], w_ih, w_hh, b_ih, b_hh, lengths, reverse, self.nonlinearity,
                         backend=self.backend)
        return y, (h,)
