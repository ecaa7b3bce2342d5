"""Modules: FusedLSTM (drop-in torch.nn.LSTM), FusedLSTMEncoder, FusedGRU, FusedRNN, replace_lstm, replace_rnns,
FusedDecoder, Seq2Seq."""
from fused_s2s.nn.lstm import FusedLSTM, FusedLSTMEncoder
from fused_s2s.nn.cells import FusedGRU, FusedRNN
from fused_s2s.nn.replace import replace_lstm, replace_rnns
from fused_s2s.nn.decoder import DecoderState, FusedDecoder
from fused_s2s.nn.seq2seq import Seq2Seq

__all__ = ["FusedLSTM", "FusedLSTMEncoder", "FusedGRU", "FusedRNN", "replace_lstm", "replace_rnns", "FusedDecoder",
           "DecoderState", "Seq2Seq"]
