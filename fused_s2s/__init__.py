"""fused_s2s: fused LSTM kernels for sequence-to-sequence models, behind nn.LSTM's interface.

    from fused_s2s import FusedLSTM, replace_lstm
    lstm = FusedLSTM(256, 512, num_layers=2, bidirectional=True, batch_first=True)  # as nn.LSTM
    model = replace_lstm(model)                    # or swap every nn.LSTM of an existing model in place

Subpackages: fused_s2s.ops (the one-layer op and backend dispatch), fused_s2s.reference (the plain
PyTorch oracle), fused_s2s.nn (the modules).
"""
from fused_s2s import ops, reference
from fused_s2s.nn import FusedLSTM, FusedLSTMEncoder, replace_lstm

__all__ = ["FusedLSTM", "FusedLSTMEncoder", "replace_lstm", "ops", "reference"]
