// The fused forward recurrences of one GRU or Elman RNN layer: h_{t-1}·W_hhᵀ, the cell math and the outputs
// in one pass per step, all steps inside one OpenMP parallel region (the LSTM's scheme, lstm_recurrence.cpp).
// Compiled once per CPU capability, like cell_kernels.cpp.
//
// Thread w owns panels [p0, p1) of the packed W_hh (cell_kernels.h, CellPanelPackArgs), i.e. a fixed set of
// units with all their gate rows: it is the only writer of those units' h, y and saved values, and its W_hh
// slice stays in its own L2 across steps. h goes through a double buffer: step s reads h_buf[s % 2] (every
// unit) and writes h_buf[(s + 1) % 2] (own units); the barrier at the end of step s orders those writes before
// step s+1's reads, and step s's reads before step s+1's writes into the buffer read at s.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cell_kernels.h"
#include "fused_s2s/gru_cell.h"
#include "fused_s2s/rnn_cell.h"
#include "recurrence_common.h"
#include "vec_math.h"

namespace fused_s2s::cpu::CPU_CAPABILITY {
namespace {

using recurrence::panel_product;
using recurrence::run_steps;
using recurrence::RunningRows;
using recurrence::scratch;

// Column vectors per panel: the GRU's three gates of V units, or four vectors of Elman units.
constexpr int cols_of(int64_t gates) { return gates == 1 ? 4 : static_cast<int>(gates); }

template <typename scalar_t>
int64_t units_per_panel(int64_t gates) {
  return cols_of(gates) * Vectorized<scalar_t>::size() / gates;
}

template <typename scalar_t>
void pack_panels_impl(const CellPanelPackArgs<scalar_t>& a) {
  const int64_t U = units_per_panel<scalar_t>(a.gates), W = a.gates * U, H = a.H;
  const int64_t panels = (H + U - 1) / U;
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      scalar_t* panel = a.panels + p * H * W;
      for (int64_t k = 0; k < H; ++k)
        for (int64_t c = 0; c < W; ++c) {
          const int64_t unit = p * U + c % U, row = (c / U) * H + unit;
          panel[k * W + c] = unit < H ? a.w[row * a.stride_n + k * a.stride_k] : scalar_t(0);
        }
    }
  });
}

// GRU step s (time t) for panels [p0, p1), each V units × 3 gates (r, z, n).
template <typename scalar_t>
void gru_panels_of_step(const GruRecurrenceArgs<scalar_t>& a, int64_t s, int64_t p0, int64_t p1) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size(), W = 3 * V;
  const int64_t H = a.H, B = a.B;
  const int64_t t = a.reverse ? a.T - 1 - s : s;
  const scalar_t* h_prev = a.h_buf + (s % 2) * B * H;
  scalar_t* h_next = a.h_buf + ((s + 1) % 2) * B * H;
  scalar_t* acc = scratch<scalar_t>(B * W);
  const RunningRows<scalar_t> running(h_prev, B, H, a.lengths, t);
  for (int64_t p = p0; p < p1; ++p) {
    panel_product<scalar_t, 3>(running.x, H, running.n, a.panels + p * H * W, H, acc);
    const int64_t j = p * V;                                         // first unit of the panel
    const int cnt = static_cast<int>(std::min<int64_t>(V, H - j));  // units of the panel inside H
    auto bias = [&](int64_t g) { return a.b_hh != nullptr ? Vec::loadu(a.b_hh + g * H + j, cnt) : Vec(scalar_t(0)); };
    const Vec bhr = bias(0), bhz = bias(1), bhn = bias(2);
    for (int64_t b = 0, row = 0; b < B; ++b) {
      scalar_t* y = a.y + (t * B + b) * H + j;
      scalar_t* saved = a.saved != nullptr ? a.saved + (t * B + b) * 4 * H + j : nullptr;
      if (a.lengths != nullptr && t >= a.lengths[b]) {  // past the end: keep h, output zero
        std::memcpy(h_next + b * H + j, h_prev + b * H + j, cnt * sizeof(scalar_t));
        std::fill(y, y + cnt, scalar_t(0));
        if (saved != nullptr)  // never read (its gradient is zero), but must not hold garbage
          for (int g = 0; g < 4; ++g) std::fill(saved + g * H, saved + g * H + cnt, scalar_t(0));
        continue;
      }
      const scalar_t* gi = a.gi + (t * B + b) * 3 * H + j;
      const scalar_t* ab = acc + row++ * W;  // running rows come in batch order
      const Vec ghn = Vec::loadu(ab + 2 * V) + bhn;
      Vec r, z, n, h;
      gru_cell_forward<Vec, VecMath<scalar_t>>(Vec::loadu(gi, cnt), Vec::loadu(gi + H, cnt),
                                               Vec::loadu(gi + 2 * H, cnt), Vec::loadu(ab) + bhr,
                                               Vec::loadu(ab + V) + bhz, ghn, Vec::loadu(h_prev + b * H + j, cnt),
                                               r, z, n, h);
      h.store(h_next + b * H + j, cnt);
      h.store(y, cnt);
      if (saved != nullptr) {
        r.store(saved, cnt);
        z.store(saved + H, cnt);
        n.store(saved + 2 * H, cnt);
        ghn.store(saved + 3 * H, cnt);
      }
    }
  }
}

// Elman RNN step s (time t) for panels [p0, p1), each 4V units.
template <typename scalar_t>
void rnn_panels_of_step(const RnnRecurrenceArgs<scalar_t>& a, int64_t s, int64_t p0, int64_t p1) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size(), W = 4 * V;
  const int64_t H = a.H, B = a.B;
  const int64_t t = a.reverse ? a.T - 1 - s : s;
  const bool relu = a.activation == static_cast<int>(RnnActivation::kRelu);
  const scalar_t* h_prev = a.h_buf + (s % 2) * B * H;
  scalar_t* h_next = a.h_buf + ((s + 1) % 2) * B * H;
  scalar_t* acc = scratch<scalar_t>(B * W);
  const RunningRows<scalar_t> running(h_prev, B, H, a.lengths, t);
  for (int64_t p = p0; p < p1; ++p) {
    panel_product<scalar_t, 4>(running.x, H, running.n, a.panels + p * H * W, H, acc);
    const int64_t j0 = p * W, j1 = std::min(H, j0 + W);
    for (int64_t b = 0, row = 0; b < B; ++b) {
      scalar_t* y = a.y + (t * B + b) * H;
      if (a.lengths != nullptr && t >= a.lengths[b]) {  // past the end: keep h, output zero
        std::memcpy(h_next + b * H + j0, h_prev + b * H + j0, (j1 - j0) * sizeof(scalar_t));
        std::fill(y + j0, y + j1, scalar_t(0));
        continue;
      }
      const scalar_t* gi = a.gi + (t * B + b) * H;
      const scalar_t* ab = acc + row++ * W;  // running rows come in batch order
      for (int64_t j = j0; j < j1; j += V) {
        const int cnt = static_cast<int>(std::min<int64_t>(V, j1 - j));
        const Vec pre = Vec::loadu(gi + j, cnt) + Vec::loadu(ab + (j - j0));
        // at::vec::maximum propagates NaN, as torch.relu does
        const Vec h = relu ? at::vec::maximum(pre, Vec(scalar_t(0))) : rnn_tanh_forward<Vec, VecMath<scalar_t>>(pre);
        h.store(h_next + b * H + j, cnt);
        h.store(y + j, cnt);
      }
    }
  }
}

template <typename scalar_t>
void gru_recurrence_impl(const GruRecurrenceArgs<scalar_t>& a) {
  const int64_t U = units_per_panel<scalar_t>(3);
  run_steps(a.T, (a.H + U - 1) / U, a.H * 3 * U,
            [&](int64_t s, int64_t p0, int64_t p1) { gru_panels_of_step(a, s, p0, p1); });
}

template <typename scalar_t>
void rnn_recurrence_impl(const RnnRecurrenceArgs<scalar_t>& a) {
  const int64_t U = units_per_panel<scalar_t>(1);
  run_steps(a.T, (a.H + U - 1) / U, a.H * U,
            [&](int64_t s, int64_t p0, int64_t p1) { rnn_panels_of_step(a, s, p0, p1); });
}

}  // namespace

void cell_pack_panels(const CellPanelPackArgs<float>& a) { pack_panels_impl(a); }
void cell_pack_panels(const CellPanelPackArgs<double>& a) { pack_panels_impl(a); }
int64_t cell_panel_units(float, int64_t gates) { return units_per_panel<float>(gates); }
int64_t cell_panel_units(double, int64_t gates) { return units_per_panel<double>(gates); }
void gru_recurrence(const GruRecurrenceArgs<float>& a) { gru_recurrence_impl(a); }
void gru_recurrence(const GruRecurrenceArgs<double>& a) { gru_recurrence_impl(a); }
void rnn_recurrence(const RnnRecurrenceArgs<float>& a) { rnn_recurrence_impl(a); }
void rnn_recurrence(const RnnRecurrenceArgs<double>& a) { rnn_recurrence_impl(a); }

}  // namespace fused_s2s::cpu::CPU_CAPABILITY
