// Vector helpers shared by the capability-compiled kernel files (included only from them: the at::vec types
// here differ per CPU_CAPABILITY).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include <cmath>
#include <cstdint>

namespace fused_s2s::cpu::CPU_CAPABILITY {

using at::vec::Vectorized;

// Activations on a vector of units. float: both from at::vec's fast exp (exp_u20, a lower-accuracy polynomial than SLEEF's 1-ulp exp), with
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
  // 1/d for d in [1, inf] (or NaN). On AVX-512 a 14-bit estimate refined by one Newton step (~2^-27
  // relative error) instead of a division, whose throughput made it the costliest part of the cell.
  static Vec recip(Vec d) {
#if defined(CPU_CAPABILITY_AVX512)
    const __m512 v = d;
    __m512 r = _mm512_rcp14_ps(v);
    r = _mm512_mul_ps(r, _mm512_fnmadd_ps(v, r, _mm512_set1_ps(2.0f)));
    // d = inf (exp overflowed): the estimate is 0 and the Newton step would make it NaN
    const __mmask16 inf = _mm512_cmp_ps_mask(v, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ);
    return Vec(_mm512_mask_blend_ps(inf, r, _mm512_setzero_ps()));
#else
    return Vec(1.0f) / d;
#endif
  }
  static Vec sigmoid(Vec x) { return recip(Vec(1.0f) + exp(x.neg())); }
  static Vec tanh(Vec x) { return Vec(2.0f) * recip(Vec(1.0f) + exp(x * Vec(-2.0f))) - Vec(1.0f); }
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

// Units are split into blocks so that a batch of one still spreads over both cores when H is large, and
// small steps stay on one thread (a parallel region costs a few microseconds).
constexpr int64_t kUnitBlock = 256;
constexpr int64_t kMinUnitsPerThread = 8192;

template <typename F>
void for_each_unit_block(int64_t B, int64_t H, const F& body) {
  const int64_t blocks_per_row = (H + kUnitBlock - 1) / kUnitBlock;
  const int64_t grain = std::max<int64_t>(1, kMinUnitsPerThread / std::min(H, kUnitBlock));
  at::parallel_for(0, B * blocks_per_row, grain, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b = blk / blocks_per_row;
      const int64_t j0 = (blk % blocks_per_row) * kUnitBlock;
      body(b, j0, std::min(H, j0 + kUnitBlock));
    }
  });
}

}  // namespace fused_s2s::cpu::CPU_CAPABILITY
