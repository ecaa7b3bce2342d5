"""Modules: FusedLSTM (drop-in torch.nn.LSTM), FusedLSTMEncoder, replace_lstm, FusedDecoder, Seq2Seq."""
from fused_s2s.nn.lstm import FusedLSTM, FusedLSTMEncoder
from fused_s2s.nn.replace import replace_lstm
from fused_s2s.nn.decoder import DecoderState, FusedDecoder
from fused_s2s.nn.seq2seq import Seq2Seq

__all__ = ["FusedLSTM", "FusedLSTMEncoder", "replace_lstm", "FusedDecoder", "DecoderState", "Seq2Seq"]
