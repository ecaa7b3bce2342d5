// The LSTM layer's per-step CPU kernels, vectorised with at::vec. This file is compiled once per CPU
// capability with CPU_CAPABILITY set to DEFAULT, AVX2 or AVX512 (see CMakeLists.txt), like ATen's own
// kernels; lstm_dispatch.cpp picks the build that matches the machine.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "fused_s2s/lstm_cell.h"
#include "lstm_kernels.h"
#include "vec_math.h"

namespace fused_s2s::cpu::CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename scalar_t>
void fwd_pointwise_impl(const FwdPointwiseArgs<scalar_t>& a) {
  using Vec = Vectorized<scalar_t>;
  const int64_t H = a.H;
  for_each_unit_block(a.B, H, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* c_saved = a.c_saved + b * H;
    scalar_t* c_state = a.c_state + b * H;
    if (a.active != nullptr && !a.active[b]) {  // past this sequence's end: freeze, output zero
      std::memcpy(c_saved + j0, c_state + j0, (j1 - j0) * sizeof(scalar_t));
      if (a.y != nullptr) std::fill(a.y + b * H + j0, a.y + b * H + j1, scalar_t(0));
      return;
    }
    scalar_t* gi = a.gates + b * 4 * H;
    const scalar_t* ri = a.rec != nullptr ? a.rec + b * 4 * H : nullptr;
    scalar_t* h_out = a.h_out + b * H;
    scalar_t* y = a.y != nullptr ? a.y + b * H : nullptr;
    for (int64_t j = j0; j < j1; j += Vec::size()) {
      const int n = static_cast<int>(std::min<int64_t>(Vec::size(), j1 - j));
      auto pre = [&](int64_t k) {  // pre-activation of gate k: gates (+ rec)
        const Vec g = Vec::loadu(gi + k * H + j, n);
        return ri != nullptr ? g + Vec::loadu(ri + k * H + j, n) : g;
      };
      const Vec ai = pre(0), af = pre(1), ag = pre(2), ao = pre(3);
      Vec i, f, g, o, c, h;
      lstm_cell_forward<Vec, VecMath<scalar_t>>(ai, af, ag, ao, Vec::loadu(c_state + j, n), i, f, g, o, c, h);
      i.store(gi + j, n);
      f.store(gi + H + j, n);
      g.store(gi + 2 * H + j, n);
      o.store(gi + 3 * H + j, n);
      c.store(c_state + j, n);
      c.store(c_saved + j, n);
      h.store(h_out + j, n);
      if (y != nullptr) h.store(y + j, n);
    }
  });
}

template <typename scalar_t>
void bwd_pointwise_impl(const BwdPointwiseArgs<scalar_t>& a) {
  using Vec = Vectorized<scalar_t>;
  const int64_t H = a.H;
  for_each_unit_block(a.B, H, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* dg = a.dgates + b * 4 * H;
    if (a.active != nullptr && !a.active[b]) {  // a frozen step passes dc through and has no gate gradient
      for (int k = 0; k < 4; ++k) std::fill(dg + k * H + j0, dg + k * H + j1, scalar_t(0));
      // h_raw meets a zero gradient in W_hr's GEMM, but must not be garbage there (0 * NaN is NaN)
      if (a.h_raw != nullptr) std::fill(a.h_raw + b * H + j0, a.h_raw + b * H + j1, scalar_t(0));
      return;
    }
    const scalar_t* g = a.gates + b * 4 * H;
    const scalar_t* c = a.c + b * H;
    const scalar_t* cp = a.c_prev + b * H;
    const scalar_t* dh = a.dh + b * H;
    const scalar_t* dy = a.dy != nullptr ? a.dy + b * H : nullptr;
    scalar_t* dc = a.dc + b * H;
    scalar_t* h_raw = a.h_raw != nullptr ? a.h_raw + b * H : nullptr;
    for (int64_t j = j0; j < j1; j += Vec::size()) {
      const int n = static_cast<int>(std::min<int64_t>(Vec::size(), j1 - j));
      const Vec i = Vec::loadu(g + j, n), f = Vec::loadu(g + H + j, n);
      const Vec gg = Vec::loadu(g + 2 * H + j, n), o = Vec::loadu(g + 3 * H + j, n);
      const Vec cj = Vec::loadu(c + j, n);
      Vec dhj = Vec::loadu(dh + j, n);
      if (dy != nullptr) dhj = dhj + Vec::loadu(dy + j, n);
      Vec dcj = Vec::loadu(dc + j, n);
      Vec dai, daf, dag, dao;
      lstm_cell_backward<Vec, VecMath<scalar_t>>(i, f, gg, o, cj, Vec::loadu(cp + j, n), dhj, dcj, dai, daf,
                                                 dag, dao);
      dcj.store(dc + j, n);
      dai.store(dg + j, n);
      daf.store(dg + H + j, n);
      dag.store(dg + 2 * H + j, n);
      dao.store(dg + 3 * H + j, n);
      if (h_raw != nullptr) lstm_cell_hidden<Vec, VecMath<scalar_t>>(o, cj).store(h_raw + j, n);
    }
  });
}


// How far ahead (in K rows of a panel, 8 KB of fp32) the first row group asks for the panel's lines: the
// decoder step's weights (15 MB at H512) come from L3 every step, and the hardware prefetcher alone left
// the FMAs waiting (H512 decoder step B8, interleaved against the build without it, three runs each:
// 565-590 -> 515-563 us with precomputed keys, 620-630 -> 573-591 us without).
constexpr int64_t kPrefetchRows = 32;

// A streamed weight (SmallGemmArgs::streamed) with more than one row group is taken kChunkRows K rows of a
// panel at a time, every row group running over that chunk before the next one: the groups after the first
// re-read the chunk from L1 while the first group's prefetches for the next chunk are in flight, instead of
// re-reading the whole panel from L2 in passes of their own after it. A group's accumulators are parked
// between chunks; each output is still summed in k order. A/B gate, six interleaved pairs: H512 decoder step
// B8 0.90-0.91x the time; but GRU B64 (W_hh from L2) 1.03-1.04x, hence only for streamed weights.
constexpr int64_t kChunkRows = 64;

// R rows of x (from row b0) against K rows [k0, k1) of panel p. The accumulators start from zero at k0 = 0,
// else from `park` (row r's at park[(b0 + r) * W]); they end in `out` at k1 = K, else in `park`.
// PREFETCH: also prefetch the panel kPrefetchRows K rows ahead (the first row group; the others find it in
// cache).
template <typename scalar_t, int R, bool PREFETCH = false>
void small_gemm_rows(const SmallGemmArgs<scalar_t>& a, int64_t b0, int64_t p, int64_t k0, int64_t k1,
                     scalar_t* park) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size(), W = panel_width<scalar_t>();
  const int64_t K = a.K, N = a.N;
  const scalar_t* x = a.x + b0 * K;
  const scalar_t* panel = a.panels + p * K * W;
  Vec acc[R][kColVecs];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kColVecs; ++j)
      acc[r][j] = k0 == 0 ? Vec(scalar_t(0)) : Vec::loadu(park + (b0 + r) * W + j * V);
  for (int64_t k = k0; k < k1; ++k) {
    Vec wv[kColVecs];
    if constexpr (PREFETCH)  // one cache line per vector (64 bytes); past the panel's end it is a no-op
      for (int j = 0; j < kColVecs; ++j) __builtin_prefetch(panel + (k + kPrefetchRows) * W + j * V, 0, 3);
    for (int j = 0; j < kColVecs; ++j) wv[j] = Vec::loadu(panel + k * W + j * V);
    for (int r = 0; r < R; ++r) {
      const Vec xv(x[r * K + k]);
      for (int j = 0; j < kColVecs; ++j) acc[r][j] = at::vec::fmadd(xv, wv[j], acc[r][j]);
    }
  }
  if (k1 < K) {
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kColVecs; ++j) acc[r][j].store(park + (b0 + r) * W + j * V);
    return;
  }
  scalar_t* out = a.out + b0 * N;
  const int64_t n0 = p * W;
  for (int j = 0; j < kColVecs; ++j) {
    const int64_t n = n0 + j * V;
    if (n >= N) break;
    const int cnt = static_cast<int>(std::min<int64_t>(V, N - n));
    const Vec bias = a.bias ? Vec::loadu(a.bias + n, cnt) : Vec(scalar_t(0));
    for (int r = 0; r < R; ++r) {
      Vec v = a.bias ? acc[r][j] + bias : acc[r][j];
      if (a.tanh_out) v = VecMath<scalar_t>::tanh(v);
      v.store(out + r * N + n, cnt);
    }
  }
}

template <typename scalar_t>
void small_gemm_impl(const SmallGemmArgs<scalar_t>& a) {
  constexpr int64_t W = panel_width<scalar_t>();
  constexpr int64_t kMinWeightPerThread = 1 << 16;  // elements of w; less is not worth a second thread
  const int64_t panels = (a.N + W - 1) / W;
  const int64_t grain = std::max<int64_t>(1, kMinWeightPerThread / std::max<int64_t>(1, a.K * W));
  const bool chunked = a.streamed && a.B > 6;  // one row group needs no chunks (and no park)
  const int64_t chunk = chunked ? kChunkRows : a.K;
  at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
    std::vector<scalar_t> park(chunked ? a.B * W : 0);
    for (int64_t p = p0; p < p1; ++p) {  // panel-outer: one panel is reused by every row group from cache
      for (int64_t k0 = 0; k0 < a.K; k0 += chunk) {
        const int64_t k1 = std::min(a.K, k0 + chunk);
        int64_t b = 0;
        if (a.B >= 6) {  // the first group streams the chunk in from wherever it is
          small_gemm_rows<scalar_t, 6, true>(a, 0, p, k0, k1, park.data());
          b = 6;
        }
        for (; b + 6 <= a.B; b += 6) small_gemm_rows<scalar_t, 6>(a, b, p, k0, k1, park.data());
        switch (a.B - b) {
          case 5: small_gemm_rows<scalar_t, 5>(a, b, p, k0, k1, park.data()); break;
          case 4: small_gemm_rows<scalar_t, 4>(a, b, p, k0, k1, park.data()); break;
          case 3: small_gemm_rows<scalar_t, 3>(a, b, p, k0, k1, park.data()); break;
          case 2: small_gemm_rows<scalar_t, 2>(a, b, p, k0, k1, park.data()); break;
          case 1: small_gemm_rows<scalar_t, 1>(a, b, p, k0, k1, park.data()); break;
          default: break;
        }
      }
    }
  });
}

template <typename scalar_t>
void small_gemm_pack_impl(const SmallGemmPackArgs<scalar_t>& a) {
  constexpr int64_t W = panel_width<scalar_t>();
  const int64_t panels = a.gate_units > 0 ? (a.gate_units + W / 4 - 1) / (W / 4) : (a.N + W - 1) / W;
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      scalar_t* panel = a.panels + p * a.K * W;
      for (int64_t k = 0; k < a.K; ++k)
        for (int64_t c = 0; c < W; ++c) {
          constexpr int64_t U = W / 4;  // units per panel when gate-interleaved
          const int64_t unit = p * U + c % U;
          const int64_t n = a.gate_units > 0 ? (c / U) * a.gate_units + unit : p * W + c;
          const bool inside = a.gate_units > 0 ? unit < a.gate_units : n < a.N;
          panel[k * W + c] = inside ? a.w[n * a.stride_n + k * a.stride_k] : scalar_t(0);
        }
    }
  });
}

void fwd_pointwise(const FwdPointwiseArgs<float>& a) { fwd_pointwise_impl(a); }
void fwd_pointwise(const FwdPointwiseArgs<double>& a) { fwd_pointwise_impl(a); }
void bwd_pointwise(const BwdPointwiseArgs<float>& a) { bwd_pointwise_impl(a); }
void bwd_pointwise(const BwdPointwiseArgs<double>& a) { bwd_pointwise_impl(a); }
void small_gemm(const SmallGemmArgs<float>& a) { small_gemm_impl(a); }
void small_gemm(const SmallGemmArgs<double>& a) { small_gemm_impl(a); }
void small_gemm_pack(const SmallGemmPackArgs<float>& a) { small_gemm_pack_impl(a); }
void small_gemm_pack(const SmallGemmPackArgs<double>& a) { small_gemm_pack_impl(a); }
int64_t small_gemm_panel_width(float) { return panel_width<float>(); }
int64_t small_gemm_panel_width(double) { return panel_width<double>(); }

}  // namespace fused_s2s::cpu::CPU_CAPABILITY
