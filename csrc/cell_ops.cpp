// Schemas and CPU bindings of the GRU, Elman RNN and peephole-LSTM layer ops (fake kernels, autograd and dispatch:
// fused_s2s/ops/cells.py).
#include <torch/library.h>

#include "cpu/cell_layer.h"

TORCH_LIBRARY_FRAGMENT(fused_s2s, m) {
  m.def(
      "gru_layer_fwd(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? lengths, "
      "bool reverse, bool save) -> (Tensor y, Tensor h_n, Tensor saved)");
  m.def(
      "gru_layer_bwd(Tensor dy, Tensor dh_n, Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? lengths, "
      "bool reverse, Tensor y, Tensor saved, bool need_dx, bool need_dw) -> (Tensor dx, Tensor dh0, "
      "Tensor dw_ih, Tensor dw_hh, Tensor db_ih, Tensor db_hh)");
  m.def(
      "rnn_layer_fwd(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? lengths, "
      "bool reverse, str nonlinearity) -> (Tensor y, Tensor h_n)");
  m.def(
      "rnn_layer_bwd(Tensor dy, Tensor dh_n, Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? lengths, "
      "bool reverse, Tensor y, str nonlinearity, bool need_dx, bool need_dw) -> (Tensor dx, Tensor dh0, "
      "Tensor dw_ih, Tensor dw_hh, Tensor db)");
  m.def(
      "peephole_lstm_layer_fwd(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor w_c, Tensor? lengths, bool reverse, bool save) -> (Tensor y, Tensor h_n, Tensor c_n, "
      "Tensor gates, Tensor cells)");
  m.def(
      "peephole_lstm_layer_bwd(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor x, Tensor h0, Tensor c0, Tensor w_ih, "
      "Tensor w_hh, Tensor w_c, Tensor? lengths, bool reverse, Tensor y, Tensor gates, Tensor cells, "
      "bool need_dx, bool need_dw) -> (Tensor dx, Tensor dh0, Tensor dc0, Tensor dw_ih, Tensor dw_hh, Tensor db, "
      "Tensor dw_c)");
}

TORCH_LIBRARY_IMPL(fused_s2s, CPU, m) {
  m.impl("gru_layer_fwd", &fused_s2s::cpu::gru_layer_fwd);
  m.impl("gru_layer_bwd", &fused_s2s::cpu::gru_layer_bwd);
  m.impl("rnn_layer_fwd", &fused_s2s::cpu::rnn_layer_fwd);
  m.impl("rnn_layer_bwd", &fused_s2s::cpu::rnn_layer_bwd);
  m.impl("peephole_lstm_layer_fwd", &fused_s2s::cpu::peephole_lstm_layer_fwd);
  m.impl("peephole_lstm_layer_bwd", &fused_s2s::cpu::peephole_lstm_layer_bwd);
}
