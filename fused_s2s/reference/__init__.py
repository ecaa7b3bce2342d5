"""Plain-PyTorch reference LSTM, GRU and RNN: the test oracle every backend of fused_s2s is compared against.

Readable per-step loops differentiated by ordinary autograd; no kernels, no fused_s2s imports.
The stack function is `fused_s2s.reference.lstm.lstm`; the name `lstm` in this package stays the
submodule (so `from fused_s2s.reference import lstm` gives the module, as ops/ expects).
"""
from fused_s2s.reference import attention, cells, lstm
from fused_s2s.reference.lstm import lstm_cell, lstm_layer
from fused_s2s.reference.decoder import decoder_step
from fused_s2s.reference.cells import gru_layer, rnn_layer

__all__ = ["attention", "cells", "lstm", "lstm_cell", "lstm_layer", "decoder_step", "gru_layer", "rnn_layer"]
