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
#include <type_traits>
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

// The input projection of this thread's panels [p0, p1) for the chunk of steps that starts at step s0:
// rows x[t] of every step in it against each panel of W_ih, into proj[(p - p0)][row][W] with row = (t - t_lo)·B
// + b (t_lo the chunk's lowest time index: its steps are contiguous in x in either direction). The chunk is
// sized so the buffer stays well inside L2 next to the thread's W_hh and W_ih panels.
template <typename scalar_t>
struct ProjectedChunk {
  const scalar_t* proj = nullptr;
  int64_t s0 = 0, steps = 0, t_lo = 0;
};

template <typename scalar_t>
int64_t projection_chunk_steps(const FusedRecurrenceArgs<scalar_t>& a, int64_t own_panels) {
  constexpr int64_t kBufferBytes = 512 << 10;
  const int64_t per_step = std::max<int64_t>(1, own_panels * a.B * panel_width<scalar_t>() * int64_t(sizeof(scalar_t)));
  return std::clamp<int64_t>(kBufferBytes / per_step, 1, a.T);
}

template <typename scalar_t>
void project_chunk(const FusedRecurrenceArgs<scalar_t>& a, int64_t s0, int64_t p0, int64_t p1,
                   ProjectedChunk<scalar_t>& chunk) {
  constexpr int64_t W = panel_width<scalar_t>();
  const int64_t n = std::min(projection_chunk_steps(a, p1 - p0), a.T - s0);
  const int64_t t_lo = a.reverse ? a.T - s0 - n : s0;
  scalar_t* proj = scratch<scalar_t, 2>((p1 - p0) * n * a.B * W);
  for (int64_t p = p0; p < p1; ++p)
    panel_product<scalar_t, kColVecs>(a.x + t_lo * a.B * a.I, a.I, n * a.B, a.ih_panels + p * a.I * W, a.I,
                                      proj + (p - p0) * n * a.B * W);
  chunk = {proj, s0, n, t_lo};
}

// A value saved for backward and not read again in this pass (the activated gates, the cells): a full,
// 64-byte-aligned vector is stored around the caches (a non-temporal store), so the [T, B, 4H] stream of
// saved gates does not evict this thread's weight panels and projection buffer from its L2 (training
// forward, T50 H256 B64: 15.5 -> 13.9 ms; B16 4.0 -> 3.6 ms; H512 B16 15.7 -> 14.6-15.0 ms).
template <typename Vec, typename scalar_t>
void store_saved(const Vec& v, scalar_t* p, int cnt) {
#if defined(CPU_CAPABILITY_AVX512)
  if (cnt == Vec::size() && reinterpret_cast<uintptr_t>(p) % 64 == 0) {
    if constexpr (std::is_same_v<scalar_t, float>)
      _mm512_stream_ps(p, __m512(v));
    else
      _mm512_stream_pd(p, __m512d(v));
    return;
  }
#endif
  v.store(p, cnt);
}

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
  // This thread's projection chunk: the thread keeps the same panels at every step of the call, so the
  // chunk made at its first step serves the next ones (each thread chunks on its own, no barrier needed).
  thread_local ProjectedChunk<scalar_t> chunk;
  if (a.x != nullptr && (s == 0 || s >= chunk.s0 + chunk.steps)) project_chunk(a, s, p0, p1, chunk);
  // Row b is running at t while t + t_offset < lengths[b]: RunningRows takes t + t_offset.
  const RunningRows<scalar_t> running(h_prev, B, H, a.lengths, t + a.t_offset);
  for (int64_t p = p0; p < p1; ++p) {
    panel_product<scalar_t, kColVecs>(running.x, H, running.n, a.panels + p * H * W, H, acc);
    const int64_t j = p * V;                                         // first unit of the panel
    const int cnt = static_cast<int>(std::min<int64_t>(V, H - j));  // units of the panel inside H
    // the projection of (t, b) for this panel, [W] gate-interleaved, and the panel's biases
    const scalar_t* proj =
        a.x != nullptr ? chunk.proj + ((p - p0) * chunk.steps + (t - chunk.t_lo)) * B * W : nullptr;
    Vec bias[4];
    for (int g = 0; g < 4; ++g) bias[g] = a.bias != nullptr ? Vec::loadu(a.bias + g * H + j, cnt) : Vec(scalar_t(0));
    for (int64_t b = 0, row = 0; b < B; ++b) {
      scalar_t* c_state = a.c_state + b * H + j;
      scalar_t* y = a.y + (t * B + b) * H + j;
      if (a.lengths != nullptr && t + a.t_offset >= a.lengths[b]) {  // past the end: freeze, output zero
        if (a.cells != nullptr) std::memcpy(a.cells + (t * B + b) * H + j, c_state, cnt * sizeof(scalar_t));
        std::memcpy(h_next + b * H + j, h_prev + b * H + j, cnt * sizeof(scalar_t));
        std::fill(y, y + cnt, scalar_t(0));
        continue;
      }
      scalar_t* gi = a.gates != nullptr ? a.gates + (t * B + b) * 4 * H + j : nullptr;
      const scalar_t* ab = acc + row++ * W;  // running rows come in batch order
      Vec pre[4];
      for (int g = 0; g < 4; ++g)
        pre[g] = Vec::loadu(ab + g * V) +
                 (proj != nullptr ? Vec::loadu(proj + b * W + g * V) + bias[g] : Vec::loadu(gi + g * H, cnt));
      Vec i, f, g, o, c, h;
      lstm_cell_forward<Vec, VecMath<scalar_t>>(pre[0], pre[1], pre[2], pre[3], Vec::loadu(c_state, cnt), i, f, g,
                                                o, c, h);
      if (gi != nullptr && proj != nullptr) {  // gates is output only: nothing here reads it again
        store_saved(i, gi, cnt);
        store_saved(f, gi + H, cnt);
        store_saved(g, gi + 2 * H, cnt);
        store_saved(o, gi + 3 * H, cnt);
      } else if (gi != nullptr) {
        i.store(gi, cnt);
        f.store(gi + H, cnt);
        g.store(gi + 2 * H, cnt);
        o.store(gi + 3 * H, cnt);
      }
      c.store(c_state, cnt);
      if (a.cells != nullptr) store_saved(c, a.cells + (t * B + b) * H + j, cnt);
      h.store(h_next + b * H + j, cnt);
      h.store(y, cnt);
    }
  }
#if defined(CPU_CAPABILITY_AVX512)
  _mm_sfence();  // the non-temporal stores above are ordered before the step's barrier, like the others
#endif
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
