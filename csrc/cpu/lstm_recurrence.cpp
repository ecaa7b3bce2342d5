// The fused forward recurrence of one LSTM layer (no projection): h_{t-1}·W_hhᵀ, gate math, cell update
// and output in one pass per step, all steps inside one OpenMP parallel region. Compiled once per CPU
// capability, like lstm_kernels.cpp.
//
// Thread w owns panels [p0, p1) of the gate-interleaved W_hh, i.e. units [p0·V, p1·V) and their four gate
// rows: it is the only writer of those units' gates, c, h and y, and its W_hh slice stays in its own L2
// across steps. h is exchanged through a double buffer: step s reads h_buf[s % 2] (every unit) and writes
// h_buf[(s + 1) % 2] (own units); the barrier at the end of step s orders those writes before step s+1's
// reads, and step s's reads before step s+1's writes into the buffer read at s.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fused_s2s/lstm_cell.h"
#include "lstm_kernels.h"
#include "recurrence_common.h"
#include "vec_math.h"

namespace fused_s2s::cpu::CPU_CAPABILITY {
namespace {

using recurrence::panel_product;
using recurrence::run_steps;
using recurrence::RunningRows;
using recurrence::scratch;

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
  // Row b is running at t while t + t_offset < lengths[b]: RunningRows takes t + t_offset.
  const RunningRows<scalar_t> running(h_prev, B, H, a.lengths, t + a.t_offset);
  for (int64_t p = p0; p < p1; ++p) {
    panel_product<scalar_t, kColVecs>(running.x, H, running.n, a.panels + p * H * W, H, acc);
    const int64_t j = p * V;                                         // first unit of the panel
    const int cnt = static_cast<int>(std::min<int64_t>(V, H - j));  // units of the panel inside H
    for (int64_t b = 0, row = 0; b < B; ++b) {
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
      const scalar_t* ab = acc + row++ * W;  // running rows come in batch order
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
      panel_product<scalar_t, kColVecs>(a.dgates + t_before * B * K, K, B, a.panels + p * K * W, K, acc);
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
