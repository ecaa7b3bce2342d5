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

template <typename scalar_t>
void fused_recurrence_impl(const FusedRecurrenceArgs<scalar_t>& a) {
  constexpr int64_t V = Vectorized<scalar_t>::size();
  const int64_t panels = (a.H + V - 1) / V;
  // A second thread pays off only when its share of W_hh is large enough to hide the barrier (~1 µs).
  constexpr int64_t kMinPanelElemsPerThread = 1 << 15;
  const int64_t useful = std::max<int64_t>(1, panels * a.H * 4 * V / kMinPanelElemsPerThread);
  const int threads = static_cast<int>(std::min<int64_t>({at::get_num_threads(), panels, useful}));
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t s = 0; s < a.T; ++s) panels_of_step(a, s, 0, panels);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    // Every thread of the team runs this block, so every thread reaches every barrier.
    const int64_t n = omp_get_num_threads(), w = omp_get_thread_num();
    const int64_t p0 = panels * w / n, p1 = panels * (w + 1) / n;
    for (int64_t s = 0; s < a.T; ++s) {
      panels_of_step(a, s, p0, p1);
#pragma omp barrier
    }
  }
}

}  // namespace

void fused_recurrence(const FusedRecurrenceArgs<float>& a) { fused_recurrence_impl(a); }
void fused_recurrence(const FusedRecurrenceArgs<double>& a) { fused_recurrence_impl(a); }

}  // namespace fused_s2s::cpu::CPU_CAPABILITY
