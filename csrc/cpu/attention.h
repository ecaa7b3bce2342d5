// Fused attention over a padded source, one pass per query with an online softmax (CPU).
//
//   query  [B, T, D]   keys [B, S, D]   values [B, S, M]   lengths [B] (int, 1..S) or none   v [D] (additive)
//   score(b, t, s) = scale · q·k_s                  (additive = false: dot, general after projecting q, scaled)
//                  = Σ_d v_d tanh(q_d + k_{s,d})    (additive = true: Bahdanau / OpenNMT "mlp")
//   positions s ≥ lengths[b] are masked out; context = softmax(score) · values; lse = log Σ exp(score).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace fused_s2s::cpu {

// -> context [B, T, M], lse [B, T], weights [B, T, S] (empty unless return_weights)
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_fwd(const at::Tensor& query, const at::Tensor& keys,
                                                             const at::Tensor& values,
                                                             const std::optional<at::Tensor>& lengths,
                                                             const std::optional<at::Tensor>& v, double scale,
                                                             bool return_weights);

// -> d_query [B, T, D], d_keys [B, S, D], d_values [B, S, M], d_v [D] (empty without v)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_bwd(
    const at::Tensor& d_context, const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
    const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& v, double scale,
    const at::Tensor& context, const at::Tensor& lse);

}  // namespace fused_s2s::cpu
