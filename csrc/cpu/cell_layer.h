// CPU GRU, Elman RNN and peephole-LSTM layers (one layer, one direction). Shapes: x [T, B, I], h0 [B, H], w_ih [G·H, I],
// w_hh [G·H, H], b_ih/b_hh [G·H], lengths [B] (int64, 1..T); G = 3 (GRU: r, z, n) or 1 (RNN).
// Lengths and reverse follow lstm_layer.h: padding steps keep the state and output zeros.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>

namespace fused_s2s::cpu {

// -> y [T, B, H], h_n [B, H], saved [T, B, 4H] (r, z, n and W_hn h + b_hn, for backward; empty unless save)
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_fwd(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse, bool save);

// -> dx [T, B, I] (empty unless need_dx), dh0 [B, H], dw_ih, dw_hh, db_ih, db_hh (empty unless need_dw)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_bwd(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& x, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& lengths, bool reverse,
    const at::Tensor& y, const at::Tensor& saved, bool need_dx, bool need_dw);

// nonlinearity: "tanh" or "relu". -> y [T, B, H], h_n [B, H] (backward needs only y)
std::tuple<at::Tensor, at::Tensor> rnn_layer_fwd(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse, c10::string_view nonlinearity);

// -> dx (empty unless need_dx), dh0, dw_ih, dw_hh, db (the gradient of both biases; empty unless need_dw)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer_bwd(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& x, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& lengths, bool reverse,
    const at::Tensor& y, c10::string_view nonlinearity, bool need_dx, bool need_dw);

// Peephole LSTM (gate order i, f, g, o; w_c = [w_ci; w_cf; w_co], [3H]; no projection).
// -> y [T, B, H], h_n, c_n [B, H], gates [T, B, 4H] (activated) and cells [T, B, H] (both empty unless save)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> peephole_lstm_layer_fwd(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, const at::Tensor& w_c,
    const std::optional<at::Tensor>& lengths, bool reverse, bool save);

// -> dx (empty unless need_dx), dh0, dc0, dw_ih, dw_hh, db (both biases' gradient), dw_c [3H] (the last four
// empty unless need_dw)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> peephole_lstm_layer_bwd(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& x, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& w_c,
    const std::optional<at::Tensor>& lengths, bool reverse, const at::Tensor& y, const at::Tensor& gates,
    const at::Tensor& cells, bool need_dx, bool need_dw);

}  // namespace fused_s2s::cpu
