"""fused_s2s: fused LSTM kernels for sequence-to-sequence models, behind nn.LSTM's interface.

    from fused_s2s import FusedLSTM, replace_lstm
    lstm = FusedLSTM(256, 512, num_layers=2, bidirectional=True, batch_first=True)  # as nn.LSTM
    model = replace_lstm(model)                    # or swap every nn.LSTM of an existing model in place

Subpackages: fused_s2s.ops (the one-layer op and backend dispatch), fused_s2s.reference (the plain
PyTorch oracle), fused_s2s.nn (the modules).
"""
from fused_s2s import ops, reference
from fused_s2s.nn import FusedLSTM, FusedLSTMEncoder, replace_lstm
from fused_s2s.nn.decoder import DecoderState, FusedDecoder
from fused_s2s.nn.seq2seq import Seq2Seq
from fused_s2s.decoding import beam_search, greedy_decode

__all__ = ["FusedLSTM", "FusedLSTMEncoder", "replace_lstm", "FusedDecoder", "DecoderState", "Seq2Seq",
           "greedy_decode", "beam_search", "ops", "reference"]
