// The GEMMs of the CPU LSTM. On this class of CPU oneDNN's inner product runs ~1.2-2x faster than
// at::linear/MKL for the LSTM's shapes (DESIGN.md §3), so x·wᵀ goes through torch's internal
// mkldnn::_linear_pointwise op when it exists and accepts the input, else through at::linear.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace fused_s2s::cpu {

// x [M, K] · w [N, K]ᵀ (+ bias [N]) -> new [M, N] tensor. x must be contiguous; w contiguous or packed.
at::Tensor fast_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias = std::nullopt);

// w [N, K] in oneDNN's own blocked layout for inputs of `rows` rows, when fast_linear uses oneDNN (else w
// itself). A weight reused for every step is packed once, instead of being reordered by every call.
at::Tensor pack_weight(const at::Tensor& w, int64_t rows);

// Whether fast_linear() uses oneDNN for this dtype (false when the op is missing, or FUSED_S2S_DISABLE_ONEDNN=1).
bool onednn_linear_available(at::ScalarType dtype);

}  // namespace fused_s2s::cpu
