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

}  // namespace fused_s2s::cpu
