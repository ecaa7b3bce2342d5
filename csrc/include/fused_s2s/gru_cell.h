// GRU cell math for one hidden unit, shared by the CPU kernels (scalar and at::vec) and the CUDA kernels.
//
// Gate order and formula are nn.GRU's: r, z, n with
//   r = σ(W_ir x + b_ir + W_hr h + b_hr),  z = σ(W_iz x + b_iz + W_hz h + b_hz),
//   n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),  h' = (1 − z) ⊙ n + z ⊙ h.
// b_hn sits inside the reset product, so the recurrent n-part (gh_n, bias included) is kept apart from the
// input part and saved for backward. T is the value type (float, double or an at::vec::Vectorized); the
// activations come from a Math policy as in lstm_cell.h.
#pragma once

#include "fused_s2s/lstm_cell.h"  // FS2S_HD, ScalarMath

namespace fused_s2s {

// gi*: x·W_ihᵀ + b_ih for r, z, n; gh*: h·W_hhᵀ + b_hh for r, z, n. Writes the activated gates (saved for
// backward) and the new hidden value.
template <typename T, typename Math = ScalarMath<T>>
FS2S_HD void gru_cell_forward(T gir, T giz, T gin, T ghr, T ghz, T ghn, T h_prev, T& r, T& z, T& n, T& h) {
  r = Math::sigmoid(gir + ghr);
  z = Math::sigmoid(giz + ghz);
  n = Math::tanh(gin + r * ghn);
  h = n + z * (h_prev - n);
}

// Backward of one unit from the saved r, z, n and ghn (= W_hn h + b_hn).
//   dh: gradient reaching h_t; dh_prev: out, the part of dL/dh_{t-1} that does not go through W_hh
//   dgi*: gradients of x·W_ihᵀ + b_ih (r, z, n); dghn: gradient of the recurrent n-part (dgh r and z
//   equal dgi r and z)
template <typename T>
FS2S_HD void gru_cell_backward(T r, T z, T n, T ghn, T h_prev, T dh, T& dh_prev, T& dgir, T& dgiz, T& dgin,
                               T& dghn) {
  const T one(1);
  dh_prev = dh * z;
  const T dn = dh * (one - z);
  const T dz = dh * (h_prev - n);
  dgin = dn * (one - n * n);
  dghn = dgin * r;
  dgir = dgin * ghn * r * (one - r);
  dgiz = dz * z * (one - z);
}

}  // namespace fused_s2s
