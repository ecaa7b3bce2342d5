"""Modules: FusedLSTM (drop-in torch.nn.LSTM), FusedLSTMEncoder, replace_lstm."""
from fused_s2s.nn.lstm import FusedLSTM, FusedLSTMEncoder
from fused_s2s.nn.replace import replace_lstm

__all__ = ["FusedLSTM", "FusedLSTMEncoder", "replace_lstm"]
