// LSTM cell math for one hidden unit, shared by the CPU kernels (scalar and at::vec) and the CUDA kernels.
//
// Gate order is nn.LSTM's: i, f, g, o. Every function is a template over the value type T so the CPU
// kernel can instantiate it with at::vec::Vectorized<float> (16 units per call on AVX-512) and the CUDA
// kernel with float; the activations come from a Math policy (sigmoid, tanh) chosen per T.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define FS2S_HD __host__ __device__ __forceinline__
#else
#define FS2S_HD inline
#endif

namespace fused_s2s {

// Scalar activations. On the device they use the CUDA math library's accurate expf/tanhf (not __expf):
// the tests hold every backend to nn.LSTM at fp32 rounding.
template <typename T>
struct ScalarMath {
  static FS2S_HD T sigmoid(T x) { return T(1) / (T(1) + ::exp(-x)); }
  static FS2S_HD T tanh(T x) { return ::tanh(x); }
};

template <>
struct ScalarMath<float> {
  static FS2S_HD float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
  static FS2S_HD float tanh(float x) { return tanhf(x); }
};

// Forward of one unit. a* are the gate pre-activations (x·W_ihᵀ + h·W_hhᵀ + biases).
// Writes the activated gates (saved for backward, like cuDNN's reserve space), the new cell and the
// unprojected hidden value h = o * tanh(c).
template <typename T, typename Math = ScalarMath<T>>
FS2S_HD void lstm_cell_forward(T ai, T af, T ag, T ao, T c_prev, T& i, T& f, T& g, T& o, T& c, T& h) {
  i = Math::sigmoid(ai);
  f = Math::sigmoid(af);
  g = Math::tanh(ag);
  o = Math::sigmoid(ao);
  c = f * c_prev + i * g;
  h = o * Math::tanh(c);
}

// Backward of one unit from the saved activated gates and cells.
//   dh: gradient reaching h_t (output gradient + recurrent gradient, after the projection's backward)
//   dc: in: gradient reaching c_t from step t+1; out: gradient to c_{t-1}
//   da*: gradients of the gate pre-activations (what the weight-gradient GEMMs consume)
template <typename T, typename Math = ScalarMath<T>>
FS2S_HD void lstm_cell_backward(T i, T f, T g, T o, T c, T c_prev, T dh, T& dc, T& dai, T& daf, T& dag,
                                T& dao) {
  const T one(1);
  const T tc = Math::tanh(c);
  const T dc_total = dc + dh * o * (one - tc * tc);
  dai = dc_total * g * i * (one - i);
  daf = dc_total * c_prev * f * (one - f);
  dag = dc_total * i * (one - g * g);
  dao = dh * tc * o * (one - o);
  dc = dc_total * f;
}

// The hidden value recomputed from saved gates and cell (needed for the projection's weight gradient).
template <typename T, typename Math = ScalarMath<T>>
FS2S_HD T lstm_cell_hidden(T o, T c) {
  return o * Math::tanh(c);
}

// Peephole LSTM (opt-in): the gates also see the cell state through diagonal weights,
//   i = σ(a_i + w_ci ⊙ c_{t-1}),  f = σ(a_f + w_cf ⊙ c_{t-1}),  o = σ(a_o + w_co ⊙ c_t).
template <typename T, typename Math = ScalarMath<T>>
FS2S_HD void peephole_cell_forward(T ai, T af, T ag, T ao, T c_prev, T wci, T wcf, T wco, T& i, T& f, T& g, T& o,
                                   T& c, T& h) {
  i = Math::sigmoid(ai + wci * c_prev);
  f = Math::sigmoid(af + wcf * c_prev);
  g = Math::tanh(ag);
  c = f * c_prev + i * g;
  o = Math::sigmoid(ao + wco * c);
  h = o * Math::tanh(c);
}

// Backward of one peephole unit: as lstm_cell_backward, plus the peephole paths (o's into c_t; i's and f's
// into c_{t-1}). The peephole weights' gradients are sums of dai·c_prev, daf·c_prev and dao·c over rows and
// steps, taken by the caller from the returned gate gradients.
template <typename T, typename Math = ScalarMath<T>>
FS2S_HD void peephole_cell_backward(T i, T f, T g, T o, T c, T c_prev, T wci, T wcf, T wco, T dh, T& dc, T& dai,
                                    T& daf, T& dag, T& dao) {
  const T one(1);
  const T tc = Math::tanh(c);
  dao = dh * tc * o * (one - o);
  const T dc_total = dc + dh * o * (one - tc * tc) + dao * wco;
  dai = dc_total * g * i * (one - i);
  daf = dc_total * c_prev * f * (one - f);
  dag = dc_total * i * (one - g * g);
  dc = dc_total * f + dai * wci + daf * wcf;
}

}  // namespace fused_s2s
