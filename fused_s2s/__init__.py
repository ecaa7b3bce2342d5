"""fused_s2s: fused LSTM (and GRU, RNN) kernels for sequence-to-sequence models, behind torch.nn's interfaces.

    from fused_s2s import FusedLSTM, replace_lstm
    lstm = FusedLSTM(256, 512, num_layers=2, bidirectional=True, batch_first=True)  # as nn.LSTM
    model = replace_lstm(model)                    # or swap every nn.LSTM of an existing model in place

Subpackages: fused_s2s.ops (the one-layer op and backend dispatch), fused_s2s.reference (the plain
PyTorch oracle), fused_s2s.nn (the modules).
"""
from fused_s2s import ops, reference
from fused_s2s.nn import FusedGRU, FusedLSTM, FusedLSTMEncoder, FusedRNN, replace_lstm, replace_rnns
from fused_s2s.nn.decoder import DecoderState, FusedDecoder
from fused_s2s.nn.seq2seq import Seq2Seq
from fused_s2s.decoding import beam_search, greedy_decode

__all__ = ["FusedLSTM", "FusedLSTMEncoder", "FusedGRU", "FusedRNN", "replace_lstm", "replace_rnns", "FusedDecoder", "DecoderState", "Seq2Seq",
           "greedy_decode", "beam_search", "ops", "reference"]
