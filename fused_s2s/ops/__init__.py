"""Ops layer: torch.library ops with fake kernels and autograd, dispatched by device and `backend=`."""
from fused_s2s.ops.attention import attention
from fused_s2s.ops.lstm import lstm_layer
from fused_s2s.ops.cells import gru_layer, rnn_layer
from fused_s2s.ops.peephole import peephole_lstm_layer
from fused_s2s.ops.decoder_step import decoder_step

__all__ = ["attention", "lstm_layer", "gru_layer", "rnn_layer", "peephole_lstm_layer", "decoder_step"]
