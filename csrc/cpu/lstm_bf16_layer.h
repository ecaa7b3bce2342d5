// The native bf16 path of the CPU LSTM layer (one layer, one direction, no projection): bf16 storage and
// GEMM operands, fp32 accumulation, cell math and c. lstm_layer.cpp routes bf16 inputs here.
// Shapes as in lstm_layer.h with P = H: x [T, B, I], h0 [B, H], c0 [B, H], w_ih [4H, I], w_hh [4H, H],
// b_ih/b_hh [4H], lengths [B] (int64, 1..T); every floating tensor bf16.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace fused_s2s::cpu {

// Whether bf16 inputs run natively: the kernels were compiled (-mavx512bf16), this CPU has AVX512-BF16 and
// ATen's capability is AVX512, the fused recurrence is on (FUSED_S2S_FUSED_RECURRENCE != 0), and
// FUSED_S2S_NATIVE_BF16 is not 0 (read at every call: the tests force the fp32 fallback with it). When
// false, fused_s2s.ops.lstm runs bf16 through the fp32 kernel on upcast copies.
bool bf16_native_enabled();

// -> y [T, B, H] bf16, h_n [B, H] bf16, c_n [B, H] bf16, and when `save`: gates [T, B, 4H] bf16 (activated
//    i, f, g, o) and cells [T, B, H] fp32 for backward (undefined tensors otherwise; the input projection is
//    then computed a chunk of steps at a time, as lstm_layer_infer does for fp32).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bf16_fwd(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse, bool save);

// The backward recurrence: dy [T, B, H], dh_n, dc_n [B, H] bf16; gates, cells as lstm_bf16_fwd saved them.
// -> dgates [T, B, 4H] bf16 (0 where inactive; the dX and dW GEMMs take it), the same in fp32 when
//    `fp32_dgates` (else undefined), dh0 [B, H] bf16, dc0 [B, H] bf16
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bf16_bwd_recurrence(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& c0,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& lengths, bool reverse, const at::Tensor& gates,
    const at::Tensor& cells, bool fp32_dgates);

}  // namespace fused_s2s::cpu
