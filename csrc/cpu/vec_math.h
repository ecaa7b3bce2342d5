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

// Activations on a vector of units. float: a fast exp (below), sigmoid and tanh built on it; the error stays
// at fp32 rounding of the result (|err| < 1e-6 for these bounded functions). double: SLEEF's 1-ulp exp and
// tanh, for gradcheck.
template <typename scalar_t>
struct VecMath;

template <>
struct VecMath<float> {
  using Vec = Vectorized<float>;
#if defined(CPU_CAPABILITY_AVX512)
  // exp(x) for x already clamped to a finite range (or NaN): n = round(x·log2 e), r = x − n·ln 2 in two
  // parts (Cody–Waite), e^r by its degree-6 Taylor polynomial (|r| ≤ ln2/2: < 2 ulp), then 2^n · e^r by
  // vscalefps, which needs no exponent masks. 11 instructions against exp_u20's ~22; NaN stays NaN.
  static __m512 exp_clamped(__m512 x) {
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.0f / 720), r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
  }
  // max/min return their second operand when either is NaN, so x last keeps NaN in the result.
  static __m512 clamp(__m512 x, float bound) {
    return _mm512_min_ps(_mm512_set1_ps(bound), _mm512_max_ps(_mm512_set1_ps(-bound), x));
  }
  // 1/d for d in [1, e^80]: a 14-bit estimate refined by one Newton step (~2^-27 relative error) instead
  // of a division, whose throughput made it the costliest part of the cell.
  static __m512 recip(__m512 d) {
    const __m512 r = _mm512_rcp14_ps(d);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
  }
  // sigmoid(x) = 1/(1 + e^-x) with x clamped to ±80, where sigmoid is 1 or below 2e-35 (and 1 + e^80 keeps
  // its reciprocal a normal float).
  static Vec sigmoid(Vec x) {
    const __m512 e = exp_clamped(_mm512_sub_ps(_mm512_setzero_ps(), clamp(x, 80.0f)));
    return Vec(recip(_mm512_add_ps(_mm512_set1_ps(1.0f), e)));
  }
  // tanh(x) = 2·sigmoid(2x) − 1 (absolute error ~1e-7 near 0, as before).
  static Vec tanh(Vec x) {
    const __m512 e = exp_clamped(_mm512_mul_ps(_mm512_set1_ps(-2.0f), clamp(x, 40.0f)));
    return Vec(_mm512_fmsub_ps(_mm512_set1_ps(2.0f), recip(_mm512_add_ps(_mm512_set1_ps(1.0f), e)),
                               _mm512_set1_ps(1.0f)));
  }
#else
  // Activations from at::vec's fast exp (exp_u20, a lower-accuracy polynomial than SLEEF's 1-ulp exp),
  // with tanh(x) = 2·sigmoid(2x) − 1; SLEEF's tanh (1 ulp) made the pointwise pass cost as much as the
  // step's GEMM. exp_u20 does not propagate NaN; NaN in must be NaN out.
  static Vec exp(Vec x) { return Vec::blendv(x.exp_u20(), x, x.isnan()); }
  static Vec recip(Vec d) { return Vec(1.0f) / d; }
  static Vec sigmoid(Vec x) { return recip(Vec(1.0f) + exp(x.neg())); }
  static Vec tanh(Vec x) { return Vec(2.0f) * recip(Vec(1.0f) + exp(x * Vec(-2.0f))) - Vec(1.0f); }
#endif
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
