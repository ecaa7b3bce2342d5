// Packed forms of recurrent weights (W_hh in small_gemm's or the fused recurrence's panels, oneDNN's blocked
// layout), reused across calls of a layer.
//
// Packing W_hh costs about as much as a few steps of the recurrence (measured on the 2-core Xeon: ~0.25 ms at
// H256 and ~0.9 ms at H512, per call), and every call of a layer repeats it on the same weights. An entry is
// reused only while the weight holds the same bytes: each lookup compares the weight with the copy the entry
// keeps (a memcmp, a fraction of the packing's cost), so any change repacks — an optimizer step, load_state_dict,
// or a write through `.data`, which the version counter would not show. FUSED_S2S_WEIGHT_CACHE=0 turns it off.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>

namespace fused_s2s::cpu {

// Tags that tell apart the packings of one weight.
enum class Packing : int64_t {
  kGatePanels = 1,     // fused LSTM recurrence: W_hh [4H, H] in gate-interleaved panels
  kLstmBwdPanels = 2,  // fused LSTM backward: W_hhᵀ in plain panels
  kCellPanels = 3,     // fused GRU / RNN recurrence (the gate count is in the weight's shape)
  kSmallGemm = 4,      // StepWeight: small_gemm panels
  kOneDnn = 5,         // StepWeight: oneDNN's layout for `rows` rows
  kBf16GatePanels = 6,  // native bf16 LSTM forward: W_hh in K-pair gate panels (lstm_bf16_kernels.h)
  kBf16BwdPanels = 7,   // native bf16 LSTM backward: W_hhᵀ in K-pair panels
  kOneDnnProjection = 8,  // input_projection: W_ih in oneDNN's layout (for any number of rows)
};

// pack() for w, or the tensor an earlier call with the same w (address, shape, strides, dtype, bytes), tag and
// rows returned. The result must be treated as read-only: later calls share it. Dense weights only (others are
// packed every call).
at::Tensor cached_packing(const at::Tensor& w, Packing tag, int64_t rows, const std::function<at::Tensor()>& pack);

}  // namespace fused_s2s::cpu
