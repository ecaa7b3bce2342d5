// The fused decoder step's attention, vectorised with at::vec. Compiled once per CPU capability (see
// CMakeLists.txt); decoder_dispatch.cpp picks the build that matches the machine.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "decoder_kernels.h"
#include "vec_math.h"

namespace fused_s2s::cpu::CPU_CAPABILITY {

using at::vec::Vectorized;

// Rows are split over threads only when there is enough work: a parallel region costs a few microseconds,
// as much as a whole row at S = 50, H = 512.
constexpr int64_t kMinElementsPerThread = 1 << 18;

// Σ_k a_k b_k (dot) or Σ_k v_k tanh(a_k + b_k) (additive); tails are zero-filled by loadu(ptr, n), and
// tanh(0) · 0 = 0, so they add nothing.
template <typename scalar_t>
scalar_t score(const scalar_t* a, const scalar_t* b, const scalar_t* v, int64_t n) {
  using Vec = Vectorized<scalar_t>;
  Vec acc0(0), acc1(0);
  int64_t i = 0;
  if (v == nullptr) {
    for (; i + 2 * Vec::size() <= n; i += 2 * Vec::size()) {  // two accumulators hide the FMA latency
      acc0 = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), acc0);
      acc1 = at::vec::fmadd(Vec::loadu(a + i + Vec::size()), Vec::loadu(b + i + Vec::size()), acc1);
    }
    for (; i < n; i += Vec::size()) {
      const int m = static_cast<int>(std::min<int64_t>(Vec::size(), n - i));
      acc0 = at::vec::fmadd(Vec::loadu(a + i, m), Vec::loadu(b + i, m), acc0);
    }
  } else {
    for (; i < n; i += Vec::size()) {
      const int m = static_cast<int>(std::min<int64_t>(Vec::size(), n - i));
      acc0 = at::vec::fmadd(Vec::loadu(v + i, m), VecMath<scalar_t>::tanh(Vec::loadu(a + i, m) + Vec::loadu(b + i, m)),
                            acc0);
    }
  }
  return at::vec::vec_reduce_all([](Vec& x, Vec& y) { return x + y; }, acc0 + acc1);
}

template <typename scalar_t>
void attention_row(const DecoderAttentionArgs<scalar_t>& a, int64_t b) {
  using Vec = Vectorized<scalar_t>;
  const int64_t S = a.S, K = a.K, M = a.M;
  const int64_t n = a.lengths != nullptr ? a.lengths[b] : S;
  const scalar_t* q = a.query + b * K;
  const scalar_t* keys = a.keys + b * S * K;
  const scalar_t* values = a.values + b * S * M;
  scalar_t* p = a.attn + b * S;
  // scores and softmax over the n valid positions (NaN anywhere makes the whole row NaN, as in torch)
  scalar_t mx = -std::numeric_limits<scalar_t>::infinity();
  for (int64_t s = 0; s < n; ++s) {
    const scalar_t sc = score(q, keys + s * K, a.v, K);
    p[s] = a.v == nullptr ? sc * a.scale : sc;
    mx = std::max(mx, p[s]);
  }
  scalar_t sum = 0;
  for (int64_t s = 0; s < n; ++s) {
    p[s] = std::exp(p[s] - mx);
    sum += p[s];
  }
  const scalar_t inv = scalar_t(1) / sum;
  for (int64_t s = 0; s < n; ++s) p[s] *= inv;
  std::fill(p + n, p + S, scalar_t(0));
  // context = Σ_s p_s values_s, four vectors of the output held in registers over the source
  scalar_t* ctx = a.context + b * M;
  constexpr int64_t kW = 4 * Vec::size();
  int64_t m0 = 0;
  for (; m0 + kW <= M; m0 += kW) {
    Vec c0(0), c1(0), c2(0), c3(0);
    for (int64_t s = 0; s < n; ++s) {
      const Vec ps(p[s]);
      const scalar_t* row = values + s * M + m0;
      c0 = at::vec::fmadd(ps, Vec::loadu(row), c0);
      c1 = at::vec::fmadd(ps, Vec::loadu(row + Vec::size()), c1);
      c2 = at::vec::fmadd(ps, Vec::loadu(row + 2 * Vec::size()), c2);
      c3 = at::vec::fmadd(ps, Vec::loadu(row + 3 * Vec::size()), c3);
    }
    c0.store(ctx + m0);
    c1.store(ctx + m0 + Vec::size());
    c2.store(ctx + m0 + 2 * Vec::size());
    c3.store(ctx + m0 + 3 * Vec::size());
  }
  for (; m0 < M; m0 += Vec::size()) {
    const int w = static_cast<int>(std::min<int64_t>(Vec::size(), M - m0));
    Vec c0(0);
    for (int64_t s = 0; s < n; ++s) c0 = at::vec::fmadd(Vec(p[s]), Vec::loadu(values + s * M + m0, w), c0);
    c0.store(ctx + m0, w);
  }
}

template <typename scalar_t>
void decoder_attention_impl(const DecoderAttentionArgs<scalar_t>& a) {
  const int64_t per_row = std::max<int64_t>(1, a.S * (a.K + a.M));
  at::parallel_for(0, a.B, std::max<int64_t>(1, kMinElementsPerThread / per_row), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) attention_row(a, b);
  });
}

// Rows [n0, n0 + R) of w against the NB rows of x; R × NB accumulators stay in registers (R·NB ≤ 16).
template <typename scalar_t, int NB, int R>
void rowwise_block(const RowwiseLinearArgs<scalar_t>& a, int64_t n0) {
  using Vec = Vectorized<scalar_t>;
  const int64_t K = a.K;
  Vec acc[NB][R];
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < R; ++r) acc[b][r] = Vec(0);
  const scalar_t* w = a.w + n0 * K;
  int64_t k = 0;
  for (; k + Vec::size() <= K; k += Vec::size()) {
    Vec wr[R];
    for (int r = 0; r < R; ++r) wr[r] = Vec::loadu(w + r * K + k);
    for (int b = 0; b < NB; ++b) {
      const Vec xb = Vec::loadu(a.x + b * K + k);
      for (int r = 0; r < R; ++r) acc[b][r] = at::vec::fmadd(wr[r], xb, acc[b][r]);
    }
  }
  if (k < K) {  // tail: zero-filled loads add nothing
    const int m = static_cast<int>(K - k);
    Vec wr[R];
    for (int r = 0; r < R; ++r) wr[r] = Vec::loadu(w + r * K + k, m);
    for (int b = 0; b < NB; ++b) {
      const Vec xb = Vec::loadu(a.x + b * K + k, m);
      for (int r = 0; r < R; ++r) acc[b][r] = at::vec::fmadd(wr[r], xb, acc[b][r]);
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < R; ++r) {
      const scalar_t sum = at::vec::vec_reduce_all([](Vec& x, Vec& y) { return x + y; }, acc[b][r]);
      a.out[b * a.N + n0 + r] = a.bias != nullptr ? sum + a.bias[n0 + r] : sum;
    }
}

// out[b, n0:n1] = tanh(out[b, n0:n1]) for every row b
template <typename scalar_t>
void tanh_columns(const RowwiseLinearArgs<scalar_t>& a, int64_t n0, int64_t n1) {
  using Vec = Vectorized<scalar_t>;
  for (int64_t b = 0; b < a.B; ++b) {
    scalar_t* o = a.out + b * a.N;
    for (int64_t n = n0; n < n1; n += Vec::size()) {
      const int m = static_cast<int>(std::min<int64_t>(Vec::size(), n1 - n));
      VecMath<scalar_t>::tanh(Vec::loadu(o + n, m)).store(o + n, m);
    }
  }
}

template <typename scalar_t, int NB>
void rowwise_linear_nb(const RowwiseLinearArgs<scalar_t>& a) {
  constexpr int R = 4;
  const int64_t blocks = a.N / R;
  // a thread gets at least ~256 KB of w: below that the parallel region costs more than it saves
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / (R * std::max<int64_t>(a.K, 1)));
  at::parallel_for(0, blocks, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) rowwise_block<scalar_t, NB, R>(a, i * R);
    if (a.tanh_out) tanh_columns(a, i0 * R, i1 * R);  // while this thread's outputs are in its L1
  });
  for (int64_t n = blocks * R; n < a.N; ++n) rowwise_block<scalar_t, NB, 1>(a, n);
  if (a.tanh_out) tanh_columns(a, blocks * R, a.N);
}

template <typename scalar_t>
void rowwise_linear_impl(const RowwiseLinearArgs<scalar_t>& a) {
  switch (a.B) {
    case 0: return;
    case 1: return rowwise_linear_nb<scalar_t, 1>(a);
    case 2: return rowwise_linear_nb<scalar_t, 2>(a);
    case 3: return rowwise_linear_nb<scalar_t, 3>(a);
    default: return rowwise_linear_nb<scalar_t, 4>(a);  // callers keep B ≤ kMaxRowwiseBatch
  }
}

void decoder_attention(const DecoderAttentionArgs<float>& a) { decoder_attention_impl(a); }
void decoder_attention(const DecoderAttentionArgs<double>& a) { decoder_attention_impl(a); }
void rowwise_linear(const RowwiseLinearArgs<float>& a) { rowwise_linear_impl(a); }
void rowwise_linear(const RowwiseLinearArgs<double>& a) { rowwise_linear_impl(a); }

}  // namespace fused_s2s::cpu::CPU_CAPABILITY
