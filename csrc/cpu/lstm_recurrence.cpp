// The fused forward recurrence of one LSTM layer (no projection): h_{t-1}·W_hhᵀ, gate math, cell update
// and output in one pass per step, all steps inside one OpenMP parallel region. Compiled once per CPU
// capability, like lstm_kernels.cpp.
//
// Thread w owns panels [p0, p1) of the gate-interleaved W_hh, i.e. units [p0·V, p1·V) and their four gate
// rows: it is the only writer of those units' gates, c, h and y, and its W_hh slice stays in its own L2
// across steps. h is exchanged through a double buffer: step s reads h_buf[s % 2] (every unit) and writes
// h_buf[(s + 1) % 2] (own units); the barrier at the end of step s orders those writes before step s+1's
// reads, and step s's reads before step s+1's writes into the buffer read at s.
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fused_s2s/lstm_cell.h"
#include "lstm_kernels.h"
#include "vec_math.h"

namespace fused_s2s::cpu::CPU_CAPABILITY {
namespace {

// Rows [b0, b0 + R) of acc[B, W] (+)= x[b, k0:k1] · panel[k0:k1, :]; R × kColVecs accumulators in registers.
template <typename scalar_t, int R>
void panel_fma_rows(const scalar_t* x, int64_t ldx, const scalar_t* panel, int64_t k0, int64_t k1, scalar_t* acc,
                    int64_t b0, bool first) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size(), W = panel_width<scalar_t>();
  Vec sum[R][kColVecs];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kColVecs; ++c) sum[r][c] = first ? Vec(scalar_t(0)) : Vec::loadu(acc + (b0 + r) * W + c * V);
  for (int64_t k = k0; k < k1; ++k) {
    Vec wv[kColVecs];
    for (int c = 0; c < kColVecs; ++c) wv[c] = Vec::loadu(panel + k * W + c * V);
    for (int r = 0; r < R; ++r) {
      const Vec xv(x[(b0 + r) * ldx + k]);
      for (int c = 0; c < kColVecs; ++c) sum[r][c] = at::vec::fmadd(xv, wv[c], sum[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kColVecs; ++c) sum[r][c].store(acc + (b0 + r) * W + c * V);
}

// acc[B, W] = x[B, K] · panel[K, W] (x with row stride ldx). K is walked in chunks whose slice of the panel
// stays in L1 while every row group uses it; the panel as a whole stays in this core's L2 across steps.
template <typename scalar_t>
void panel_product(const scalar_t* x, int64_t ldx, int64_t B, const scalar_t* panel, int64_t K, scalar_t* acc) {
  constexpr int kRows = 6;  // 6 rows × 4 vectors = 24 accumulators
  constexpr int64_t kChunk = 128;
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int64_t k1 = std::min(K, k0 + kChunk);
    const bool first = k0 == 0;
    int64_t b = 0;
    for (; b + kRows <= B; b += kRows) panel_fma_rows<scalar_t, kRows>(x, ldx, panel, k0, k1, acc, b, first);
    switch (B - b) {
      case 5: panel_fma_rows<scalar_t, 5>(x, ldx, panel, k0, k1, acc, b, first); break;
      case 4: panel_fma_rows<scalar_t, 4>(x, ldx, panel, k0, k1, acc, b, first); break;
      case 3: panel_fma_rows<scalar_t, 3>(x, ldx, panel, k0, k1, acc, b, first); break;
      case 2: panel_fma_rows<scalar_t, 2>(x, ldx, panel, k0, k1, acc, b, first); break;
      case 1: panel_fma_rows<scalar_t, 1>(x, ldx, panel, k0, k1, acc, b, first); break;
      default: break;
    }
  }
}

// Per-thread scratch for panel_product's [B, W] accumulators, 64-byte aligned: a full-width vector at an
// address that is not crosses two cache lines on every load and store (seen as a ~15% slower recurrence
// in processes where malloc happened to return such an address).
template <typename scalar_t>
scalar_t* scratch(int64_t elems) {
  constexpr size_t kAlign = 64;
  thread_local std::vector<char> buf;
  const size_t bytes = elems * sizeof(scalar_t) + kAlign;
  if (buf.size() < bytes) buf.resize(bytes);
  const uintptr_t base = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<scalar_t*>((base + kAlign - 1) / kAlign * kAlign);
}

// ---- forward ----

// Step s (time t) for panels [p0, p1): each panel is V units × 4 gates.
template <typename scalar_t>
void panels_of_step(const FusedRecurrenceArgs<scalar_t>& a, int64_t s, int64_t p0, int64_t p1) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size(), W = panel_width<scalar_t>();
  const int64_t H = a.H, B = a.B;
  const int64_t t = a.reverse ? a.T - 1 - s : s;
  const scalar_t* h_prev = a.h_buf + (s % 2) * B * H;
  scalar_t* h_next = a.h_buf + ((s + 1) % 2) * B * H;
  scalar_t* acc = scratch<scalar_t>(B * W);
  for (int64_t p = p0; p < p1; ++p) {
    panel_product(h_prev, H, B, a.panels + p * H * W, H, acc);
    const int64_t j = p * V;                                         // first unit of the panel
    const int cnt = static_cast<int>(std::min<int64_t>(V, H - j));  // units of the panel inside H
    for (int64_t b = 0; b < B; ++b) {
      scalar_t* c_state = a.c_state + b * H + j;
      scalar_t* c_saved = a.cells + (t * B + b) * H + j;
      scalar_t* y = a.y + (t * B + b) * H + j;
      if (a.lengths != nullptr && t + a.t_offset >= a.lengths[b]) {  // past the end: freeze, output zero
        std::memcpy(c_saved, c_state, cnt * sizeof(scalar_t));
        std::memcpy(h_next + b * H + j, h_prev + b * H + j, cnt * sizeof(scalar_t));
        std::fill(y, y + cnt, scalar_t(0));
        continue;
      }
      scalar_t* gi = a.gates + (t * B + b) * 4 * H + j;
      const scalar_t* ab = acc + b * W;
      const Vec ai = Vec::loadu(ab) + Vec::loadu(gi, cnt);
      const Vec af = Vec::loadu(ab + V) + Vec::loadu(gi + H, cnt);
      const Vec ag = Vec::loadu(ab + 2 * V) + Vec::loadu(gi + 2 * H, cnt);
      const Vec ao = Vec::loadu(ab + 3 * V) + Vec::loadu(gi + 3 * H, cnt);
      Vec i, f, g, o, c, h;
      lstm_cell_forward<Vec, VecMath<scalar_t>>(ai, af, ag, ao, Vec::loadu(c_state, cnt), i, f, g, o, c, h);
      i.store(gi, cnt);
      f.store(gi + H, cnt);
      g.store(gi + 2 * H, cnt);
      o.store(gi + 3 * H, cnt);
      c.store(c_state, cnt);
      c.store(c_saved, cnt);
      h.store(h_next + b * H + j, cnt);
      h.store(y, cnt);
    }
  }
}

// Runs step(s, p0, p1) for s = 0..steps-1 over `panels` panels of `panel_elems` weights each, split across
// threads that keep the same panels at every step, with a barrier after each step.
template <typename StepFn>
void run_steps(int64_t steps, int64_t panels, int64_t panel_elems, const StepFn& step) {
  // A second thread pays off only when its share of the weights is large enough to hide the barrier (~1 µs).
  constexpr int64_t kMinPanelElemsPerThread = 1 << 15;
  const int64_t useful = std::max<int64_t>(1, panels * panel_elems / kMinPanelElemsPerThread);
  const int threads = static_cast<int>(std::min<int64_t>({at::get_num_threads(), panels, useful}));
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t s = 0; s < steps; ++s) step(s, int64_t{0}, panels);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    // Every thread of the team runs this block, so every thread reaches every barrier.
    const int64_t n = omp_get_num_threads(), w = omp_get_thread_num();
    const int64_t p0 = panels * w / n, p1 = panels * (w + 1) / n;
    for (int64_t s = 0; s < steps; ++s) {
      step(s, p0, p1);
#pragma omp barrier
    }
  }
}

template <typename scalar_t>
void fused_recurrence_impl(const FusedRecurrenceArgs<scalar_t>& a) {
  constexpr int64_t V = Vectorized<scalar_t>::size();
  run_steps(a.T, (a.H + V - 1) / V, a.H * panel_width<scalar_t>(),
            [&](int64_t s, int64_t p0, int64_t p1) { panels_of_step(a, s, p0, p1); });
}

// ---- backward ----

// Backward step s (time t) for panels [p0, p1), each 4V hidden units. First, unless s is the first step,
// dh = dG[t_before]·W_hh for rows active at t_before (the step processed just before t in backward order;
// other rows keep dh). Then (s < T) the cell backward of step t for these units.
template <typename scalar_t>
void bwd_panels_of_step(const FusedRecurrenceBwdArgs<scalar_t>& a, int64_t s, int64_t p0, int64_t p1) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size(), W = panel_width<scalar_t>();
  const int64_t H = a.H, K = 4 * a.H, T = a.T, B = a.B;
  auto time_of = [&](int64_t step) { return a.reverse ? step : T - 1 - step; };  // backward order
  auto active = [&](int64_t b, int64_t t) { return a.lengths == nullptr || t < a.lengths[b]; };
  scalar_t* acc = scratch<scalar_t>(B * W);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t j0 = p * W;
    if (s > 0) {
      const int64_t t_before = time_of(s - 1);
      panel_product(a.dgates + t_before * B * K, K, B, a.panels + p * K * W, K, acc);
      for (int64_t b = 0; b < B; ++b) {
        if (!active(b, t_before)) continue;  // a frozen step passes dh through
        std::memcpy(a.dh + b * H + j0, acc + b * W, std::min<int64_t>(W, H - j0) * sizeof(scalar_t));
      }
    }
    if (s == T) continue;
    const int64_t t = time_of(s);
    const int64_t t_prev = a.reverse ? t + 1 : t - 1;  // the step before t in forward order (c_{t-1})
    const bool first_fwd = s == T - 1;                  // t is the first step of the forward pass
    for (int64_t b = 0; b < B; ++b) {
      const bool on = active(b, t);
      for (int64_t j = j0; j < std::min(H, j0 + W); j += V) {
        const int cnt = static_cast<int>(std::min<int64_t>(V, H - j));
        scalar_t* dg = a.dgates + (t * B + b) * K + j;
        if (!on) {
          for (int g = 0; g < 4; ++g) std::fill(dg + g * H, dg + g * H + cnt, scalar_t(0));
          continue;
        }
        const scalar_t* gt = a.gates + (t * B + b) * K + j;
        const scalar_t* cp = first_fwd ? a.c0 + b * H + j : a.cells + (t_prev * B + b) * H + j;
        const Vec dh = Vec::loadu(a.dh + b * H + j, cnt) + Vec::loadu(a.dy + (t * B + b) * H + j, cnt);
        Vec dc = Vec::loadu(a.dc + b * H + j, cnt);
        Vec dai, daf, dag, dao;
        lstm_cell_backward<Vec, VecMath<scalar_t>>(
            Vec::loadu(gt, cnt), Vec::loadu(gt + H, cnt), Vec::loadu(gt + 2 * H, cnt), Vec::loadu(gt + 3 * H, cnt),
            Vec::loadu(a.cells + (t * B + b) * H + j, cnt), Vec::loadu(cp, cnt), dh, dc, dai, daf, dag, dao);
        dc.store(a.dc + b * H + j, cnt);
        dai.store(dg, cnt);
        daf.store(dg + H, cnt);
        dag.store(dg + 2 * H, cnt);
        dao.store(dg + 3 * H, cnt);
      }
    }
  }
}

template <typename scalar_t>
void fused_recurrence_bwd_impl(const FusedRecurrenceBwdArgs<scalar_t>& a) {
  constexpr int64_t W = panel_width<scalar_t>();
  // Steps 0..T-1 are the cells in backward order; step T only finishes dh0 from the last dG.
  run_steps(a.T + 1, (a.H + W - 1) / W, 4 * a.H * W,
            [&](int64_t s, int64_t p0, int64_t p1) { bwd_panels_of_step(a, s, p0, p1); });
}

}  // namespace

void fused_recurrence(const FusedRecurrenceArgs<float>& a) { fused_recurrence_impl(a); }
void fused_recurrence(const FusedRecurrenceArgs<double>& a) { fused_recurrence_impl(a); }
void fused_recurrence_bwd(const FusedRecurrenceBwdArgs<float>& a) { fused_recurrence_bwd_impl(a); }
void fused_recurrence_bwd(const FusedRecurrenceBwdArgs<double>& a) { fused_recurrence_bwd_impl(a); }

}  // namespace fused_s2s::cpu::CPU_CAPABILITY
