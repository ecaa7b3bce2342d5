// The argument checks of fused_s2s::decoder_step that every kernel shares, in one place: the CPU kernel
// (csrc/cpu/decoder_step.cpp) and the CUDA binding (csrc/cuda_bindings/decoder_step_cuda.cu) call them, so
// their errors stay word for word the same. Torch headers only (the CUDA binding includes it under nvcc).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

namespace fused_s2s {

inline void check_decoder_step_2d(const at::Tensor& t, const char* name, int64_t rows, int64_t cols) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "decoder_step: expected ", name, " of size [",
              rows, ", ", cols, "], got ", t.sizes());
}

struct DecoderStepSizes {
  int64_t L, B, H, S, M, K;  // layers, batch, hidden, source positions, memory features, key features
  bool additive;             // additive scores (else dot scores, with a projected query when w_query is given)
};

// Every shape and the score kind. `same(t, name)` checks a tensor's dtype and device the way the caller's
// kernel needs them; the caller checks x's dtype (the kernels take different ones) before.
template <typename Same>
DecoderStepSizes check_decoder_step(const at::Tensor& x, const std::optional<at::Tensor>& feed, const at::Tensor& h,
                                    const at::Tensor& c, at::TensorList w_cat,
                                    const c10::List<std::optional<at::Tensor>>& b_cat, c10::string_view score,
                                    const at::Tensor& keys, const std::optional<at::Tensor>& w_query,
                                    const std::optional<at::Tensor>& b_query, const std::optional<at::Tensor>& v,
                                    const at::Tensor& memory, const at::Tensor& w_out,
                                    const std::optional<at::Tensor>& b_out, const Same& same) {
  TORCH_CHECK(h.dim() == 3 && c.sizes() == h.sizes(), "decoder_step: expected h and c of the same size [L, B, H], got ",
              h.sizes(), " and ", c.sizes());
  const int64_t L = h.size(0), B = h.size(1), H = h.size(2);
  TORCH_CHECK(L >= 1, "decoder_step: needs at least one layer");
  TORCH_CHECK(x.dim() == 2 && x.size(0) == B, "decoder_step: expected x of size [", B, ", E], got ", x.sizes());
  TORCH_CHECK(memory.dim() == 3 && memory.size(0) == B, "decoder_step: expected memory of size [", B,
              ", S, M], got ", memory.sizes());
  const int64_t S = memory.size(1), M = memory.size(2);
  TORCH_CHECK(S >= 1, "decoder_step: memory must have at least one source position");
  TORCH_CHECK(static_cast<int64_t>(w_cat.size()) == L && static_cast<int64_t>(b_cat.size()) == L,
              "decoder_step: expected ", L, " layer weights and biases, got ", w_cat.size(), " and ", b_cat.size());
  for (auto& [t, n] : {std::pair<const at::Tensor&, const char*>{h, "h"}, {c, "c"}, {memory, "memory"},
                       {keys, "keys"}, {w_out, "w_out"}, {x, "x"}})
    same(t, n);
  if (feed.has_value()) {
    same(*feed, "feed");
    check_decoder_step_2d(*feed, "feed", B, H);
  }
  TORCH_CHECK(keys.dim() == 3 && keys.size(0) == B && keys.size(1) == S, "decoder_step: expected keys of size [", B,
              ", ", S, ", K], got ", keys.sizes());
  const int64_t K = keys.size(2);
  const std::string_view kind(score.data(), score.size());
  const bool additive = kind == "additive";
  TORCH_CHECK(additive || kind == "dot", "decoder_step: score must be 'dot' or 'additive', got '", score, "'");
  if (additive) {
    TORCH_CHECK(w_query.has_value() && v.has_value(), "decoder_step: additive scores need w_query and v");
    same(*w_query, "w_query");
    same(*v, "v");
    check_decoder_step_2d(*w_query, "w_query", K, H);
    TORCH_CHECK(v->dim() == 1 && v->size(0) == K, "decoder_step: expected v of size [", K, "], got ", v->sizes());
    if (b_query.has_value()) {
      same(*b_query, "b_query");
      TORCH_CHECK(b_query->dim() == 1 && b_query->size(0) == K, "decoder_step: expected b_query of size [", K,
                  "], got ", b_query->sizes());
    }
  } else if (w_query.has_value()) {
    // general attention scored as (W h)·m_s: keys is memory itself and w_query = W [M, H] projects the query
    same(*w_query, "w_query");
    check_decoder_step_2d(*w_query, "w_query", K, H);
  } else {
    TORCH_CHECK(K == H, "decoder_step: dot scores need keys of size [", B, ", ", S, ", ", H, "], got ", keys.sizes());
  }
  check_decoder_step_2d(w_out, "w_out", H, M + H);
  if (b_out.has_value()) {
    same(*b_out, "b_out");
    TORCH_CHECK(b_out->dim() == 1 && b_out->size(0) == H, "decoder_step: expected b_out of size [", H, "], got ",
                b_out->sizes());
  }
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& w = w_cat[l];
    same(w, "w_cat");
    const int64_t in = l == 0 ? x.size(1) + (feed.has_value() ? H : 0) : H;
    TORCH_CHECK(w.dim() == 2 && w.size(0) == 4 * H && w.size(1) == in + H, "decoder_step: expected layer ", l,
                " weight [w_ih | w_hh] of size [", 4 * H, ", ", in + H, "], got ", w.sizes(),
                l == 0 ? " (input size E, plus H with input feeding)" : "");
    const std::optional<at::Tensor> bias = b_cat.get(l);
    if (bias.has_value()) {
      same(*bias, "b_cat");
      TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 4 * H, "decoder_step: expected layer ", l,
                  " bias of size [", 4 * H, "], got ", bias->sizes());
    }
  }
  return {L, B, H, S, M, K, additive};
}

}  // namespace fused_s2s
