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
#include <cstring>

#include "fused_s2s/lstm_cell.h"
#include "lstm_kernels.h"
#include "vec_math.h"

namespace fused_s2s::cpu::CPU_CAPABILITY {
namespace {

// R rows from b0, one panel (V units × 4 gates) of step t.
template <typename scalar_t, int R>
void cell_rows(const FusedRecurrenceArgs<scalar_t>& a, int64_t t, const scalar_t* h_prev, scalar_t* h_next,
               int64_t b0, int64_t p) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size(), W = panel_width<scalar_t>();
  const int64_t H = a.H, K = a.H;
  const int64_t j = p * V;                                  // first unit of the panel
  const int cnt = static_cast<int>(std::min<int64_t>(V, H - j));  // units of the panel inside H
  const scalar_t* panel = a.panels + p * K * W;
  Vec acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < 4; ++g) acc[r][g] = Vec(scalar_t(0));
  for (int64_t k = 0; k < K; ++k) {
    Vec wv[4];
    for (int g = 0; g < 4; ++g) wv[g] = Vec::loadu(panel + k * W + g * V);
    for (int r = 0; r < R; ++r) {
      const Vec hv(h_prev[(b0 + r) * H + k]);
      for (int g = 0; g < 4; ++g) acc[r][g] = at::vec::fmadd(hv, wv[g], acc[r][g]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
    scalar_t* c_state = a.c_state + b * H + j;
    scalar_t* c_saved = a.cells + (t * a.B + b) * H + j;
    scalar_t* y = a.y + (t * a.B + b) * H + j;
    if (a.lengths != nullptr && t >= a.lengths[b]) {  // past the sequence's end: freeze, output zero
      std::memcpy(c_saved, c_state, cnt * sizeof(scalar_t));
      std::memcpy(h_next + b * H + j, h_prev + b * H + j, cnt * sizeof(scalar_t));
      std::fill(y, y + cnt, scalar_t(0));
      continue;
    }
    scalar_t* gi = a.gates + (t * a.B + b) * 4 * H + j;
    const Vec ai = acc[r][0] + Vec::loadu(gi, cnt);
    const Vec af = acc[r][1] + Vec::loadu(gi + H, cnt);
    const Vec ag = acc[r][2] + Vec::loadu(gi + 2 * H, cnt);
    const Vec ao = acc[r][3] + Vec::loadu(gi + 3 * H, cnt);
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

template <typename scalar_t>
void panels_of_step(const FusedRecurrenceArgs<scalar_t>& a, int64_t s, int64_t p0, int64_t p1) {
  constexpr int kRows = 6;  // 6 rows × 4 gates = 24 vector accumulators
  const int64_t t = a.reverse ? a.T - 1 - s : s;
  const scalar_t* h_prev = a.h_buf + (s % 2) * a.B * a.H;
  scalar_t* h_next = a.h_buf + ((s + 1) % 2) * a.B * a.H;
  for (int64_t p = p0; p < p1; ++p) {
    int64_t b = 0;
    for (; b + kRows <= a.B; b += kRows) cell_rows<scalar_t, kRows>(a, t, h_prev, h_next, b, p);
    switch (a.B - b) {
      case 5: cell_rows<scalar_t, 5>(a, t, h_prev, h_next, b, p); break;
      case 4: cell_rows<scalar_t, 4>(a, t, h_prev, h_next, b, p); break;
      case 3: cell_rows<scalar_t, 3>(a, t, h_prev, h_next, b, p); break;
      case 2: cell_rows<scalar_t, 2>(a, t, h_prev, h_next, b, p); break;
      case 1: cell_rows<scalar_t, 1>(a, t, h_prev, h_next, b, p); break;
      default: break;
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

// R rows from b0, one panel (4V hidden units) of backward step s (time t). Phase 1: unless s is the first
// step, dh = dG[t_before]·W_hh for rows active at t_before (the step processed just before t in backward
// order; other rows keep dh). Phase 2 (s < T): the cell backward of step t for these units.
template <typename scalar_t, int R>
void bwd_cell_rows(const FusedRecurrenceBwdArgs<scalar_t>& a, int64_t s, int64_t b0, int64_t p) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size(), W = panel_width<scalar_t>();
  const int64_t H = a.H, K = 4 * a.H, T = a.T;
  auto time_of = [&](int64_t step) { return a.reverse ? step : T - 1 - step; };  // backward order
  auto active = [&](int64_t b, int64_t t) { return a.lengths == nullptr || t < a.lengths[b]; };
  const int64_t j0 = p * W;
  if (s > 0) {
    const int64_t t_before = time_of(s - 1);
    const scalar_t* dg = a.dgates + t_before * a.B * K;
    const scalar_t* panel = a.panels + p * K * W;
    Vec acc[R][kColVecs];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < kColVecs; ++c) acc[r][c] = Vec(scalar_t(0));
    for (int64_t k = 0; k < K; ++k) {
      Vec wv[kColVecs];
      for (int c = 0; c < kColVecs; ++c) wv[c] = Vec::loadu(panel + k * W + c * V);
      for (int r = 0; r < R; ++r) {
        const Vec gv(dg[(b0 + r) * K + k]);
        for (int c = 0; c < kColVecs; ++c) acc[r][c] = at::vec::fmadd(gv, wv[c], acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r) {
      if (!active(b0 + r, t_before)) continue;  // a frozen step passes dh through
      for (int c = 0; c < kColVecs; ++c) {
        const int64_t j = j0 + c * V;
        if (j >= H) break;
        acc[r][c].store(a.dh + (b0 + r) * H + j, static_cast<int>(std::min<int64_t>(V, H - j)));
      }
    }
  }
  if (s == T) return;
  const int64_t t = time_of(s);
  const int64_t t_prev = a.reverse ? t + 1 : t - 1;  // the step before t in forward order (c_{t-1})
  const bool first_fwd = s == T - 1;                  // t is the first step of the forward pass
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
    const bool on = active(b, t);
    for (int c = 0; c < kColVecs; ++c) {
      const int64_t j = j0 + c * V;
      if (j >= H) break;
      const int cnt = static_cast<int>(std::min<int64_t>(V, H - j));
      scalar_t* dg = a.dgates + (t * a.B + b) * K + j;
      if (!on) {
        for (int g = 0; g < 4; ++g) std::fill(dg + g * H, dg + g * H + cnt, scalar_t(0));
        continue;
      }
      const scalar_t* gt = a.gates + (t * a.B + b) * K + j;
      const scalar_t* cp = first_fwd ? a.c0 + b * H + j : a.cells + (t_prev * a.B + b) * H + j;
      const Vec dh = Vec::loadu(a.dh + b * H + j, cnt) + Vec::loadu(a.dy + (t * a.B + b) * H + j, cnt);
      Vec dc = Vec::loadu(a.dc + b * H + j, cnt);
      Vec dai, daf, dag, dao;
      lstm_cell_backward<Vec, VecMath<scalar_t>>(
          Vec::loadu(gt, cnt), Vec::loadu(gt + H, cnt), Vec::loadu(gt + 2 * H, cnt), Vec::loadu(gt + 3 * H, cnt),
          Vec::loadu(a.cells + (t * a.B + b) * H + j, cnt), Vec::loadu(cp, cnt), dh, dc, dai, daf, dag, dao);
      dc.store(a.dc + b * H + j, cnt);
      dai.store(dg, cnt);
      daf.store(dg + H, cnt);
      dag.store(dg + 2 * H, cnt);
      dao.store(dg + 3 * H, cnt);
    }
  }
}

template <typename scalar_t>
void fused_recurrence_bwd_impl(const FusedRecurrenceBwdArgs<scalar_t>& a) {
  constexpr int64_t W = panel_width<scalar_t>();
  constexpr int kRows = 6;
  // Steps 0..T-1 are the cells in backward order; step T only finishes dh0 from the last dG.
  run_steps(a.T + 1, (a.H + W - 1) / W, 4 * a.H * W, [&](int64_t s, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      int64_t b = 0;
      for (; b + kRows <= a.B; b += kRows) bwd_cell_rows<scalar_t, kRows>(a, s, b, p);
      switch (a.B - b) {
        case 5: bwd_cell_rows<scalar_t, 5>(a, s, b, p); break;
        case 4: bwd_cell_rows<scalar_t, 4>(a, s, b, p); break;
        case 3: bwd_cell_rows<scalar_t, 3>(a, s, b, p); break;
        case 2: bwd_cell_rows<scalar_t, 2>(a, s, b, p); break;
        case 1: bwd_cell_rows<scalar_t, 1>(a, s, b, p); break;
        default: break;
      }
    }
  });
}

}  // namespace

void fused_recurrence(const FusedRecurrenceArgs<float>& a) { fused_recurrence_impl(a); }
void fused_recurrence(const FusedRecurrenceArgs<double>& a) { fused_recurrence_impl(a); }
void fused_recurrence_bwd(const FusedRecurrenceBwdArgs<float>& a) { fused_recurrence_bwd_impl(a); }
void fused_recurrence_bwd(const FusedRecurrenceBwdArgs<double>& a) { fused_recurrence_bwd_impl(a); }

}  // namespace fused_s2s::cpu::CPU_CAPABILITY
