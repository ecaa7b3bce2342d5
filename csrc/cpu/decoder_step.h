// CPU fused attention-decoder step (inference). Shapes: L layers, B batch, H hidden, S source, M memory.
//   x [B, E], feed [B, H] or none, h/c [L, B, H],
//   w_cat[l] [4H, in_l + H] = [w_ih | w_hh] of layer l (in_0 = E (+ H with feed), in_l = H), b_cat[l] [4H] or none
//   score "dot": scores = scale * keys · q, q = h_top with keys [B, S, H] (memory, or memory·w for Luong
//         general); or q = w_query·h_top with w_query [K, H] and keys [B, S, K] (general: w and memory itself)
//   score "additive": scores = v · tanh(keys + w_query·h_top + b_query), keys [B, S, A] = memory·w_memoryᵀ,
//         w_query [A, H], b_query [A] or none, v [A]
//   memory [B, S, M], lengths [B] int64 in 1..S or none, w_out [H, M + H], b_out [H] or none
// -> out h̃ [B, H], h_new [L, B, H], c_new [L, B, H], attn [B, S]
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string_view>
#include <tuple>

namespace fused_s2s::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decoder_step(
    const at::Tensor& x, const std::optional<at::Tensor>& feed, const at::Tensor& h, const at::Tensor& c,
    at::TensorList w_cat, const c10::List<std::optional<at::Tensor>>& b_cat, c10::string_view score,
    const at::Tensor& keys, double scale, const std::optional<at::Tensor>& w_query,
    const std::optional<at::Tensor>& b_query, const std::optional<at::Tensor>& v, const at::Tensor& memory,
    const std::optional<at::Tensor>& lengths, const at::Tensor& w_out, const std::optional<at::Tensor>& b_out);

}  // namespace fused_s2s::cpu
