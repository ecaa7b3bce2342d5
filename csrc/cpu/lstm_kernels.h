// Per-step CPU kernels of the LSTM layer, compiled once per CPU capability (DEFAULT, AVX2, AVX512) from
// lstm_kernels.cpp and picked at run time by at::get_cpu_capability() (ATEN_CPU_CAPABILITY overrides it).
#pragma once

#include <cstdint>

namespace fused_s2s::cpu {

// One forward step's pointwise pass over B rows × H units.
template <typename scalar_t>
struct FwdPointwiseArgs {
  scalar_t* gates;        // [B, 4H] in: x_t·W_ihᵀ + biases; out: activated i, f, g, o (saved for backward)
  const scalar_t* rec;    // [B, 4H] h_{t-1}·W_hhᵀ, or nullptr when gates already hold it (decoder step)
  scalar_t* c_state;      // [B, H] in: c_{t-1}; out: c_t (rows that are inactive keep their value)
  scalar_t* c_saved;      // [B, H] out: c_state after this step (C[t], frozen rows included)
  scalar_t* h_out;        // [B, H] out: o*tanh(c_t) for active rows (inactive rows keep their value)
  scalar_t* y;            // [B, H] out: y[t] (o*tanh(c_t), or 0 where inactive); nullptr with a projection
  const uint8_t* active;  // [B] 1 where the sequence has step t, or nullptr when every row is active
  int64_t B, H;
};

// One backward step's pointwise pass over B rows × H units.
template <typename scalar_t>
struct BwdPointwiseArgs {
  const scalar_t* gates;   // [B, 4H] saved activated gates of step t
  const scalar_t* c;       // [B, H] C[t]
  const scalar_t* c_prev;  // [B, H] c_{t-1} (C of the previous processed step, or c0)
  const scalar_t* dh;      // [B, H] gradient reaching o*tanh(c_t) (recurrent + projection backward)
  const scalar_t* dy;      // [B, H] added to dh (no projection), or nullptr
  scalar_t* dc;            // [B, H] in: dL/dc_t; out: dL/dc_{t-1} (inactive rows unchanged)
  scalar_t* dgates;        // [B, 4H] out: gradients of the gate pre-activations (0 where inactive)
  scalar_t* h_raw;         // [B, H] out: o*tanh(c_t) recomputed for W_hr's gradient, or nullptr
  const uint8_t* active;   // [B] or nullptr
  int64_t B, H;
};

// out[b, n] = sum_k x[b, k] * w[n, k] for a few rows b: the recurrent GEMM at batch sizes where a GEMM
// library's per-call overhead costs more than the arithmetic. w is packed once per call into panels of
// small_gemm_panel_width() columns, each panel [K, width] contiguous, so the inner loop is a broadcast-FMA
// over a contiguous stream (no horizontal sums, no strided loads); each thread owns the same panels at every
// step, which then stay in its core's L2.
template <typename scalar_t>
struct SmallGemmArgs {
  const scalar_t* x;       // [B, K]
  const scalar_t* panels;  // [ceil(N / width), K, width], zero-padded past N
  scalar_t* out;           // [B, N]
  int64_t B, N, K;
  // The weight comes from L3 or DRAM on every call (a decoder step's 15 MB), not from the thread's L2 (a
  // recurrence's W_hh): row groups then share each panel chunk from L1 (lstm_kernels.cpp, kChunkRows).
  bool streamed = false;
  const scalar_t* bias = nullptr;  // [N] added to every row, or nullptr
  bool tanh_out = false;           // out = tanh(x·wᵀ + bias), in the same pass
};

// Packs w (element (n, k) at w[n * stride_n + k * stride_k]) into the panel layout above. With
// gate_units = H > 0 (w = W_hh, N = 4H), panel p instead holds the four gates of units [pV, pV + V),
// V = width / 4: column g·V + u is row g·H + pV + u, so one panel yields whole cells (fused_recurrence).
template <typename scalar_t>
struct SmallGemmPackArgs {
  const scalar_t* w;
  int64_t stride_n, stride_k;
  scalar_t* panels;
  int64_t N, K;
  int64_t gate_units = 0;
};

// The whole forward recurrence of a layer without projection in one parallel region: each thread owns
// some panels of gate-interleaved W_hh (so the same units, and the same W_hh slice in its L2, at every
// step), computes h_{t-1}·W_hhᵀ for them and applies the cell math straight from registers; one barrier
// per step orders the exchange of h through a double buffer.
//
// With x given, the input projection runs inside too: each thread computes x·W_ihᵀ for its own units, a chunk
// of steps at a time, into a private buffer that stays in its L2 (no [T, B, 4H] tensor written by one GEMM
// and read back across cores: those reads cost ~25 µs of a 175 µs B64 H256 step). gates then is output only,
// and with gates and cells nullptr (inference) nothing is saved.
template <typename scalar_t>
struct FusedRecurrenceArgs {
  const scalar_t* panels;  // W_hh [4H, H] packed with gate_units = H
  scalar_t* gates;         // [T, B, 4H] in: x·W_ihᵀ + biases (unless x); out: activated i, f, g, o (or nullptr)
  scalar_t* cells;         // [T, B, H] out: c after each step (frozen rows included), or nullptr
  scalar_t* y;             // [T, B, H] out (0 where inactive)
  scalar_t* h_buf;         // [2, B, H]: h_buf[0] holds h0; the final state ends in h_buf[T % 2]
  scalar_t* c_state;       // [B, H] in: c0, out: c_n
  const int64_t* lengths;  // [B] or nullptr
  int64_t T, B, H;
  bool reverse;
  int64_t t_offset = 0;    // these T steps are steps t_offset.. of the sequence (for lengths)
  const scalar_t* x = nullptr;          // [T, B, I]: project inside (then gates is not read)
  const scalar_t* ih_panels = nullptr;  // W_ih [4H, I] packed like panels (gate_units = H)
  const scalar_t* bias = nullptr;       // [4H] b_ih + b_hh, or nullptr
  int64_t I = 0;
};

// The whole backward recurrence of a layer without projection in one parallel region, the mirror of
// FusedRecurrenceArgs: each thread owns panels of W_hhᵀ (plain panels of 4V hidden units), computes
// dG_{t'}·W_hh for its units (t' the step processed just before), adds dy[t] and runs the cell backward for
// those units straight from registers; one barrier per step orders the exchange of dG[t].
template <typename scalar_t>
struct FusedRecurrenceBwdArgs {
  const scalar_t* panels;  // w = W_hhᵀ [H, 4H] packed as plain panels (gate_units = 0)
  const scalar_t* gates;   // [T, B, 4H] saved activated gates
  const scalar_t* cells;   // [T, B, H] saved cells
  const scalar_t* c0;      // [B, H]
  const scalar_t* dy;      // [T, B, H]
  scalar_t* dgates;        // [T, B, 4H] out (0 where inactive)
  scalar_t* dh;            // [B, H] in: dL/dh_n; out: dL/dh0
  scalar_t* dc;            // [B, H] in: dL/dc_n; out: dL/dc0
  const int64_t* lengths;  // [B] or nullptr
  int64_t T, B, H;
  bool reverse;
};

#define FS2S_DECLARE_KERNELS(NS)                                   \
  namespace NS {                                                   \
  void fwd_pointwise(const FwdPointwiseArgs<float>& a);            \
  void fwd_pointwise(const FwdPointwiseArgs<double>& a);           \
  void bwd_pointwise(const BwdPointwiseArgs<float>& a);            \
  void bwd_pointwise(const BwdPointwiseArgs<double>& a);           \
  void small_gemm(const SmallGemmArgs<float>& a);                  \
  void small_gemm(const SmallGemmArgs<double>& a);                 \
  void small_gemm_pack(const SmallGemmPackArgs<float>& a);         \
  void small_gemm_pack(const SmallGemmPackArgs<double>& a);        \
  int64_t small_gemm_panel_width(float);                           \
  int64_t small_gemm_panel_width(double);                          \
  void fused_recurrence(const FusedRecurrenceArgs<float>& a);      \
  void fused_recurrence(const FusedRecurrenceArgs<double>& a);     \
  void fused_recurrence_bwd(const FusedRecurrenceBwdArgs<float>& a);  \
  void fused_recurrence_bwd(const FusedRecurrenceBwdArgs<double>& a); \
  }

FS2S_DECLARE_KERNELS(DEFAULT)
FS2S_DECLARE_KERNELS(AVX2)
FS2S_DECLARE_KERNELS(AVX512)

template <typename scalar_t>
void fwd_pointwise(const FwdPointwiseArgs<scalar_t>& a);
template <typename scalar_t>
void bwd_pointwise(const BwdPointwiseArgs<scalar_t>& a);
template <typename scalar_t>
void small_gemm(const SmallGemmArgs<scalar_t>& a);
template <typename scalar_t>
void small_gemm_pack(const SmallGemmPackArgs<scalar_t>& a);
template <typename scalar_t>
int64_t small_gemm_panel_width();
template <typename scalar_t>
void fused_recurrence(const FusedRecurrenceArgs<scalar_t>& a);
template <typename scalar_t>
void fused_recurrence_bwd(const FusedRecurrenceBwdArgs<scalar_t>& a);

}  // namespace fused_s2s::cpu
