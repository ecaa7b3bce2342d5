// What the fused recurrences (lstm_recurrence.cpp, cell_recurrence.cpp) share: the panel product that
// computes h_{t-1}·W_hhᵀ for a thread's own panels from registers, 64-byte-aligned per-thread scratch, and the
// one-parallel-region step loop with a barrier per step. Included only by files compiled once per CPU
// capability (CPU_CAPABILITY is defined there), so each capability gets its own copy.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fused_s2s::cpu::CPU_CAPABILITY::recurrence {

using at::vec::Vectorized;

// Rows [b0, b0 + R) of acc[B, COLS·V] (+)= x[b, k0:k1] · panel[k0:k1, :]; R × COLS accumulators in registers.
template <typename scalar_t, int COLS, int R>
void panel_fma_rows(const scalar_t* x, int64_t ldx, const scalar_t* panel, int64_t k0, int64_t k1, scalar_t* acc,
                    int64_t b0, bool first) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size(), W = COLS * V;
  Vec sum[R][COLS];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < COLS; ++c) sum[r][c] = first ? Vec(scalar_t(0)) : Vec::loadu(acc + (b0 + r) * W + c * V);
  for (int64_t k = k0; k < k1; ++k) {
    Vec wv[COLS];
    for (int c = 0; c < COLS; ++c) wv[c] = Vec::loadu(panel + k * W + c * V);
    for (int r = 0; r < R; ++r) {
      const Vec xv(x[(b0 + r) * ldx + k]);
      for (int c = 0; c < COLS; ++c) sum[r][c] = at::vec::fmadd(xv, wv[c], sum[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < COLS; ++c) sum[r][c].store(acc + (b0 + r) * W + c * V);
}

// The last `rows` (< R) rows: one compile-time row count each, counted down from R - 1.
template <typename scalar_t, int COLS, int R>
void panel_fma_tail(int64_t rows, const scalar_t* x, int64_t ldx, const scalar_t* panel, int64_t k0, int64_t k1,
                    scalar_t* acc, int64_t b0, bool first) {
  if constexpr (R > 0) {
    if (rows == R) return panel_fma_rows<scalar_t, COLS, R>(x, ldx, panel, k0, k1, acc, b0, first);
    panel_fma_tail<scalar_t, COLS, R - 1>(rows, x, ldx, panel, k0, k1, acc, b0, first);
  }
}

// acc[B, COLS·V] = x[B, K] · panel[K, COLS·V] (x with row stride ldx). K is walked in chunks whose slice of
// the panel stays in L1 while every row group uses it; the panel as a whole stays in this core's L2 across
// steps. 24 accumulators (rows × COLS) leave registers for the weights and the broadcast.
template <typename scalar_t, int COLS>
void panel_product(const scalar_t* x, int64_t ldx, int64_t B, const scalar_t* panel, int64_t K, scalar_t* acc) {
  constexpr int kRows = 24 / COLS;
  constexpr int64_t kChunk = 128;
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int64_t k1 = std::min(K, k0 + kChunk);
    const bool first = k0 == 0;
    int64_t b = 0;
    for (; b + kRows <= B; b += kRows) panel_fma_rows<scalar_t, COLS, kRows>(x, ldx, panel, k0, k1, acc, b, first);
    if (b < B) panel_fma_tail<scalar_t, COLS, kRows - 1>(B - b, x, ldx, panel, k0, k1, acc, b, first);
  }
}

// Per-thread scratch for panel_product's accumulators, 64-byte aligned: a full-width vector at an address
// that is not crosses two cache lines on every load and store (seen as a ~15% slower recurrence in processes
// where malloc happened to return such an address).
// SLOT tells apart buffers that one step needs at the same time.
template <typename scalar_t, int SLOT = 0>
scalar_t* scratch(int64_t elems) {
  constexpr size_t kAlign = 64;
  thread_local std::vector<char> buf;
  const size_t bytes = elems * sizeof(scalar_t) + kAlign;
  if (buf.size() < bytes) buf.resize(bytes);
  const uintptr_t base = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<scalar_t*>((base + kAlign - 1) / kAlign * kAlign);
}

// The rows of h_{t-1} that step t needs: with lengths, only the sequences still running at t (a finished row
// keeps its state and needs no product). Gathered into this thread's scratch when some row has finished, so
// the product's cost follows the running rows. They keep batch order: the k-th running row is the k-th row
// of x.
template <typename scalar_t>
struct RunningRows {
  const scalar_t* x;  // [n, H]: h_prev itself, or the gathered rows
  int64_t n;          // rows in x

  RunningRows(const scalar_t* h_prev, int64_t B, int64_t H, const int64_t* lengths, int64_t t)
      : x(h_prev), n(B) {
    if (lengths == nullptr) return;
    thread_local std::vector<int64_t> rows;
    rows.clear();
    for (int64_t b = 0; b < B; ++b)
      if (t < lengths[b]) rows.push_back(b);
    if (static_cast<int64_t>(rows.size()) == B) return;
    scalar_t* gathered = scratch<scalar_t, 1>(static_cast<int64_t>(rows.size()) * H);
    for (size_t i = 0; i < rows.size(); ++i) std::copy(h_prev + rows[i] * H, h_prev + (rows[i] + 1) * H, gathered + i * H);
    x = gathered;
    n = static_cast<int64_t>(rows.size());
  }
};

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

}  // namespace fused_s2s::cpu::CPU_CAPABILITY::recurrence
