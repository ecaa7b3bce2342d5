// Vector helpers shared by the capability-compiled kernel files (included only from them: the at::vec types
// here differ per CPU_CAPABILITY).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace fused_s2s::cpu::CPU_CAPABILITY {

using at::vec::Vectorized;

// Activations on a vector of units. float: both from at::vec's fast exp (exp_u20, ~2 ulp), with
// tanh(x) = 2·sigmoid(2x) − 1; SLEEF's tanh (1 ulp) made the pointwise pass cost as much as the step's GEMM.
// The error stays at fp32 rounding of the result (|err| < 1e-6 for these bounded functions). double: SLEEF's
// 1-ulp exp and tanh, for gradcheck.
template <typename scalar_t>
struct VecMath;

template <>
struct VecMath<float> {
  using Vec = Vectorized<float>;
  // exp_u20 does not propagate NaN; NaN in must be NaN out.
  static Vec exp(Vec x) { return Vec::blendv(x.exp_u20(), x, x.isnan()); }
  static Vec sigmoid(Vec x) { return Vec(1.0f) / (Vec(1.0f) + exp(x.neg())); }
  static Vec tanh(Vec x) { return Vec(2.0f) / (Vec(1.0f) + exp(x * Vec(-2.0f))) - Vec(1.0f); }
};

template <>
struct VecMath<double> {
  using Vec = Vectorized<double>;
  static Vec sigmoid(Vec x) { return Vec(1.0) / (Vec(1.0) + x.neg().exp()); }
  static Vec tanh(Vec x) { return x.tanh(); }
};

// small_gemm's panels are kColVecs vectors wide; R rows × kColVecs accumulators stay in registers. With
// gate-interleaved panels the four vectors are the i, f, g, o pre-activations of Vec::size() units.
constexpr int kColVecs = 4;

template <typename scalar_t>
constexpr int64_t panel_width() {
  return kColVecs * Vectorized<scalar_t>::size();
}

}  // namespace fused_s2s::cpu::CPU_CAPABILITY
