// CPU LSTM layer (one layer, one direction). Shapes: x [T, B, I], h0 [B, P], c0 [B, H], w_ih [4H, I],
// w_hh [4H, P], b_ih/b_hh [4H], w_hr [P, H], lengths [B] (int64, 1..T); P = proj_size or H.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace fused_s2s::cpu {

// -> y [T, B, P], h_n [B, P], c_n [B, H], gates [T, B, 4H] (activated, for backward), cells [T, B, H]
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_fwd(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& lengths, bool reverse);

// Forward for inference: -> y, h_n, c_n only; saves nothing, so it never holds a [T, B, 4H] buffer.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer_infer(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& lengths, bool reverse);

// -> dx [T, B, I] (empty unless need_dx), dh0 [B, P], dc0 [B, H], dw_ih, dw_hh, db [4H] (both biases'
//    gradient), dw_hr [P, H] (empty without a projection); the four weight gradients are empty unless need_dw
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_bwd(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& x, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& lengths, bool reverse, const at::Tensor& y, const at::Tensor& gates,
    const at::Tensor& cells, bool need_dx, bool need_dw);

}  // namespace fused_s2s::cpu
