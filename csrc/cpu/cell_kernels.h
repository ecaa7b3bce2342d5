// Per-step CPU kernels of the GRU, Elman RNN and peephole-LSTM layers (cell_layer.cpp), compiled once per CPU capability
// (DEFAULT, AVX2, AVX512) from cell_kernels.cpp and picked at run time like the LSTM's (cell_dispatch.cpp).
#pragma once

#include <cstdint>

namespace fused_s2s::cpu {

// One GRU forward step over B rows × H units.
template <typename scalar_t>
struct GruFwdArgs {
  const scalar_t* gi;     // [B, 3H] x_t·W_ihᵀ + b_ih (r, z, n)
  const scalar_t* gh;     // [B, 3H] h_{t-1}·W_hhᵀ (no bias)
  const scalar_t* b_hh;   // [3H] or nullptr
  scalar_t* h;            // [B, H] in: h_{t-1}; out: h_t (inactive rows keep their value)
  scalar_t* y;            // [B, H] out: h_t, or 0 where inactive
  scalar_t* saved;        // [B, 4H] out: r, z, n, gh_n (= W_hn h + b_hn), for backward; or nullptr
  const uint8_t* active;  // [B] 1 where the sequence has this step, or nullptr when every row has it
  int64_t B, H;
};

// One GRU backward step.
template <typename scalar_t>
struct GruBwdArgs {
  const scalar_t* saved;   // [B, 4H] r, z, n, gh_n of this step
  const scalar_t* h_prev;  // [B, H] h_{t-1} of each row
  const scalar_t* dy;      // [B, H] dL/dy_t, added to dh for active rows
  scalar_t* dh;            // [B, H] in: dL/dh_t from step t+1; out: the direct part of dL/dh_{t-1}
                           // (z·(dh + dy); inactive rows keep dh); dgh·W_hh is added by the caller
  scalar_t* dgi;           // [B, 3H] out: gradient of x_t·W_ihᵀ + b_ih (0 where inactive)
  scalar_t* dgh;           // [B, 3H] out: gradient of h_{t-1}·W_hhᵀ + b_hh (0 where inactive)
  const uint8_t* active;   // [B] or nullptr
  int64_t B, H;
};

// One Elman RNN forward step: h_t = act(gi + gh) for active rows.
template <typename scalar_t>
struct RnnFwdArgs {
  const scalar_t* gi;     // [B, H] x_t·W_ihᵀ + b_ih + b_hh
  const scalar_t* gh;     // [B, H] h_{t-1}·W_hhᵀ
  scalar_t* h;            // [B, H] in: h_{t-1}; out: h_t (inactive rows keep their value)
  scalar_t* y;            // [B, H] out: h_t, or 0 where inactive
  const uint8_t* active;  // [B] or nullptr
  int64_t B, H;
  int activation;         // RnnActivation: 0 tanh, 1 relu
};

// One Elman RNN backward step: da = (dh + dy) · act'(h_t) where active, 0 elsewhere.
template <typename scalar_t>
struct RnnBwdArgs {
  const scalar_t* h;       // [B, H] h_t (the step's output y[t])
  const scalar_t* dh;      // [B, H] dL/dh_t from step t+1
  const scalar_t* dy;      // [B, H] dL/dy_t, added to dh
  scalar_t* da;            // [B, H] out
  const uint8_t* active;   // [B] or nullptr
  int64_t B, H;
  int activation;
};

// One peephole-LSTM forward step (the LSTM's gate order i, f, g, o).
template <typename scalar_t>
struct PeepholeFwdArgs {
  const scalar_t* gi;      // [B, 4H] x_t·W_ihᵀ + b_ih + b_hh
  const scalar_t* gh;      // [B, 4H] h_{t-1}·W_hhᵀ
  const scalar_t* w_c;     // [3H] the peephole weights w_ci, w_cf, w_co
  scalar_t* h;             // [B, H] in: h_{t-1}; out: h_t (inactive rows keep their value)
  scalar_t* c;             // [B, H] in: c_{t-1}; out: c_t (inactive rows keep their value)
  scalar_t* y;             // [B, H] out: h_t, or 0 where inactive
  scalar_t* gates;         // [B, 4H] out: activated i, f, g, o (0 where inactive), or nullptr
  scalar_t* cells;         // [B, H] out: c after this step (frozen rows included), or nullptr
  const uint8_t* active;   // [B] or nullptr
  int64_t B, H;
};

// One peephole-LSTM backward step.
template <typename scalar_t>
struct PeepholeBwdArgs {
  const scalar_t* gates;   // [B, 4H] saved activated gates of step t
  const scalar_t* c;       // [B, H] c_t
  const scalar_t* c_prev;  // [B, H] c_{t-1}
  const scalar_t* w_c;     // [3H] w_ci, w_cf, w_co
  const scalar_t* dh;      // [B, H] dL/dh_t from step t+1
  const scalar_t* dy;      // [B, H] dL/dy_t, added to dh
  scalar_t* dc;            // [B, H] in: dL/dc_t; out: dL/dc_{t-1} (inactive rows unchanged)
  scalar_t* dgates;        // [B, 4H] out: gate pre-activation gradients (0 where inactive)
  const uint8_t* active;   // [B] or nullptr
  int64_t B, H;
};

// W_hh [G·H, H] of a GRU (G = 3) or Elman RNN (G = 1) packed for the fused recurrences: panel p holds the G
// gate rows of units [p·U, p·U + U), U = cell_panel_units(G), as columns g·U + u (row g·H + p·U + u of W_hh);
// each panel is [H, G·U] contiguous, zero past unit H. (W_hh's element (n, k) is at w[n·stride_n + k·stride_k].)
template <typename scalar_t>
struct CellPanelPackArgs {
  const scalar_t* w;
  int64_t stride_n, stride_k;
  scalar_t* panels;  // [ceil(H / U), H, G·U]
  int64_t gates, H;
};

// The whole forward recurrence of a GRU layer in one parallel region (cell_recurrence.cpp): each thread owns
// some panels (the same units, and the same W_hh slice in its L2, at every step), computes h_{t-1}·W_hhᵀ for
// them and applies the cell math from registers; one barrier per step orders the exchange of h.
template <typename scalar_t>
struct GruRecurrenceArgs {
  const scalar_t* panels;  // W_hh packed with gates = 3
  const scalar_t* gi;      // [T, B, 3H] x·W_ihᵀ + b_ih
  const scalar_t* b_hh;    // [3H] or nullptr
  scalar_t* y;             // [T, B, H] out (0 where inactive)
  scalar_t* saved;         // [T, B, 4H] out: r, z, n, gh_n per step (0 where inactive), or nullptr
  scalar_t* h_buf;         // [2, B, H]: h_buf[0] holds h0; the final state ends in h_buf[T % 2]
  const int64_t* lengths;  // [B] or nullptr
  int64_t T, B, H;
  bool reverse;
};

// The Elman RNN's, likewise.
template <typename scalar_t>
struct RnnRecurrenceArgs {
  const scalar_t* panels;  // W_hh packed with gates = 1
  const scalar_t* gi;      // [T, B, H] x·W_ihᵀ + b_ih + b_hh
  scalar_t* y;             // [T, B, H] out (0 where inactive)
  scalar_t* h_buf;         // [2, B, H]: h_buf[0] holds h0; the final state ends in h_buf[T % 2]
  const int64_t* lengths;  // [B] or nullptr
  int64_t T, B, H;
  bool reverse;
  int activation;          // RnnActivation
};

#define FS2S_DECLARE_CELL_KERNELS(NS)                 \
  namespace NS {                                      \
  void gru_fwd_pointwise(const GruFwdArgs<float>& a);  \
  void gru_fwd_pointwise(const GruFwdArgs<double>& a); \
  void gru_bwd_pointwise(const GruBwdArgs<float>& a);  \
  void gru_bwd_pointwise(const GruBwdArgs<double>& a); \
  void rnn_fwd_pointwise(const RnnFwdArgs<float>& a);  \
  void rnn_fwd_pointwise(const RnnFwdArgs<double>& a); \
  void rnn_bwd_pointwise(const RnnBwdArgs<float>& a);  \
  void rnn_bwd_pointwise(const RnnBwdArgs<double>& a); \
  void peephole_fwd_pointwise(const PeepholeFwdArgs<float>& a);  \
  void peephole_fwd_pointwise(const PeepholeFwdArgs<double>& a); \
  void peephole_bwd_pointwise(const PeepholeBwdArgs<float>& a);  \
  void peephole_bwd_pointwise(const PeepholeBwdArgs<double>& a); \
  void cell_pack_panels(const CellPanelPackArgs<float>& a);      \
  void cell_pack_panels(const CellPanelPackArgs<double>& a);     \
  int64_t cell_panel_units(float, int64_t gates);                \
  int64_t cell_panel_units(double, int64_t gates);               \
  void gru_recurrence(const GruRecurrenceArgs<float>& a);        \
  void gru_recurrence(const GruRecurrenceArgs<double>& a);       \
  void rnn_recurrence(const RnnRecurrenceArgs<float>& a);        \
  void rnn_recurrence(const RnnRecurrenceArgs<double>& a);       \
  }

FS2S_DECLARE_CELL_KERNELS(DEFAULT)
FS2S_DECLARE_CELL_KERNELS(AVX2)
FS2S_DECLARE_CELL_KERNELS(AVX512)

template <typename scalar_t>
void gru_fwd_pointwise(const GruFwdArgs<scalar_t>& a);
template <typename scalar_t>
void gru_bwd_pointwise(const GruBwdArgs<scalar_t>& a);
template <typename scalar_t>
void rnn_fwd_pointwise(const RnnFwdArgs<scalar_t>& a);
template <typename scalar_t>
void rnn_bwd_pointwise(const RnnBwdArgs<scalar_t>& a);
template <typename scalar_t>
void peephole_fwd_pointwise(const PeepholeFwdArgs<scalar_t>& a);
template <typename scalar_t>
void peephole_bwd_pointwise(const PeepholeBwdArgs<scalar_t>& a);
template <typename scalar_t>
void cell_pack_panels(const CellPanelPackArgs<scalar_t>& a);
template <typename scalar_t>
int64_t cell_panel_units(int64_t gates);
template <typename scalar_t>
void gru_recurrence(const GruRecurrenceArgs<scalar_t>& a);
template <typename scalar_t>
void rnn_recurrence(const RnnRecurrenceArgs<scalar_t>& a);

}  // namespace fused_s2s::cpu
