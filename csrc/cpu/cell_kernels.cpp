// The GRU, Elman RNN and peephole-LSTM layers' per-step CPU kernels, vectorised with at::vec. Compiled once per CPU
// capability like lstm_kernels.cpp (see CMakeLists.txt); cell_dispatch.cpp picks the build.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>

#include "cell_kernels.h"
#include "fused_s2s/gru_cell.h"
#include "fused_s2s/lstm_cell.h"
#include "fused_s2s/rnn_cell.h"
#include "vec_math.h"

namespace fused_s2s::cpu::CPU_CAPABILITY {

using at::vec::Vectorized;

// Rows past their sequence's end: the state is kept, the output (or the gradient) is zero.
inline bool inactive(const uint8_t* active, int64_t b) {
  return active != nullptr && !active[b];
}

template <typename scalar_t>
void gru_fwd_pointwise_impl(const GruFwdArgs<scalar_t>& a) {
  using Vec = Vectorized<scalar_t>;
  const int64_t H = a.H;
  for_each_unit_block(a.B, H, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* y = a.y + b * H;
    if (inactive(a.active, b)) {
      std::fill(y + j0, y + j1, scalar_t(0));
      if (a.saved != nullptr)  // never read (its gradient is zero), but must not hold garbage
        for (int k = 0; k < 4; ++k) std::fill(a.saved + b * 4 * H + k * H + j0, a.saved + b * 4 * H + k * H + j1, scalar_t(0));
      return;
    }
    const scalar_t* gi = a.gi + b * 3 * H;
    const scalar_t* gh = a.gh + b * 3 * H;
    scalar_t* h = a.h + b * H;
    scalar_t* saved = a.saved != nullptr ? a.saved + b * 4 * H : nullptr;
    for (int64_t j = j0; j < j1; j += Vec::size()) {
      const int n = static_cast<int>(std::min<int64_t>(Vec::size(), j1 - j));
      auto rec = [&](int64_t k) {  // h·W_hhᵀ + b_hh for gate k
        const Vec g = Vec::loadu(gh + k * H + j, n);
        return a.b_hh != nullptr ? g + Vec::loadu(a.b_hh + k * H + j, n) : g;
      };
      const Vec ghr = rec(0), ghz = rec(1), ghn = rec(2);
      Vec r, z, nn, hv;
      gru_cell_forward<Vec, VecMath<scalar_t>>(Vec::loadu(gi + j, n), Vec::loadu(gi + H + j, n),
                                               Vec::loadu(gi + 2 * H + j, n), ghr, ghz, ghn,
                                               Vec::loadu(h + j, n), r, z, nn, hv);
      hv.store(h + j, n);
      hv.store(y + j, n);
      if (saved != nullptr) {
        r.store(saved + j, n);
        z.store(saved + H + j, n);
        nn.store(saved + 2 * H + j, n);
        ghn.store(saved + 3 * H + j, n);
      }
    }
  });
}

template <typename scalar_t>
void gru_bwd_pointwise_impl(const GruBwdArgs<scalar_t>& a) {
  using Vec = Vectorized<scalar_t>;
  const int64_t H = a.H;
  for_each_unit_block(a.B, H, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* dgi = a.dgi + b * 3 * H;
    scalar_t* dgh = a.dgh + b * 3 * H;
    if (inactive(a.active, b)) {  // dh passes through unchanged; no gate gradient
      for (int k = 0; k < 3; ++k) {
        std::fill(dgi + k * H + j0, dgi + k * H + j1, scalar_t(0));
        std::fill(dgh + k * H + j0, dgh + k * H + j1, scalar_t(0));
      }
      return;
    }
    const scalar_t* s = a.saved + b * 4 * H;
    const scalar_t* hp = a.h_prev + b * H;
    const scalar_t* dy = a.dy + b * H;
    scalar_t* dh = a.dh + b * H;
    for (int64_t j = j0; j < j1; j += Vec::size()) {
      const int n = static_cast<int>(std::min<int64_t>(Vec::size(), j1 - j));
      Vec dh_prev, dgir, dgiz, dgin, dghn;
      gru_cell_backward<Vec>(Vec::loadu(s + j, n), Vec::loadu(s + H + j, n), Vec::loadu(s + 2 * H + j, n),
                             Vec::loadu(s + 3 * H + j, n), Vec::loadu(hp + j, n), Vec::loadu(dh + j, n) + Vec::loadu(dy + j, n), dh_prev,
                             dgir, dgiz, dgin, dghn);
      dh_prev.store(dh + j, n);
      dgir.store(dgi + j, n);
      dgiz.store(dgi + H + j, n);
      dgin.store(dgi + 2 * H + j, n);
      dgir.store(dgh + j, n);
      dgiz.store(dgh + H + j, n);
      dghn.store(dgh + 2 * H + j, n);
    }
  });
}

template <typename scalar_t>
void rnn_fwd_pointwise_impl(const RnnFwdArgs<scalar_t>& a) {
  using Vec = Vectorized<scalar_t>;
  const int64_t H = a.H;
  const bool relu = a.activation == static_cast<int>(RnnActivation::kRelu);
  for_each_unit_block(a.B, H, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* y = a.y + b * H;
    if (inactive(a.active, b)) {
      std::fill(y + j0, y + j1, scalar_t(0));
      return;
    }
    const scalar_t* gi = a.gi + b * H;
    const scalar_t* gh = a.gh + b * H;
    scalar_t* h = a.h + b * H;
    for (int64_t j = j0; j < j1; j += Vec::size()) {
      const int n = static_cast<int>(std::min<int64_t>(Vec::size(), j1 - j));
      const Vec pre = Vec::loadu(gi + j, n) + Vec::loadu(gh + j, n);
      // at::vec::maximum propagates NaN, as torch.relu does
      const Vec hv = relu ? at::vec::maximum(pre, Vec(scalar_t(0))) : rnn_tanh_forward<Vec, VecMath<scalar_t>>(pre);
      hv.store(h + j, n);
      hv.store(y + j, n);
    }
  });
}

template <typename scalar_t>
void rnn_bwd_pointwise_impl(const RnnBwdArgs<scalar_t>& a) {
  using Vec = Vectorized<scalar_t>;
  const int64_t H = a.H;
  const bool relu = a.activation == static_cast<int>(RnnActivation::kRelu);
  for_each_unit_block(a.B, H, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* da = a.da + b * H;
    if (inactive(a.active, b)) {
      std::fill(da + j0, da + j1, scalar_t(0));
      return;
    }
    const scalar_t* h = a.h + b * H;
    const scalar_t* dh = a.dh + b * H;
    const scalar_t* dy = a.dy + b * H;
    for (int64_t j = j0; j < j1; j += Vec::size()) {
      const int n = static_cast<int>(std::min<int64_t>(Vec::size(), j1 - j));
      const Vec hv = Vec::loadu(h + j, n), dhv = Vec::loadu(dh + j, n) + Vec::loadu(dy + j, n);
      const Vec g = relu ? Vec::blendv(Vec(scalar_t(0)), dhv, hv > Vec(scalar_t(0))) : rnn_tanh_backward(hv, dhv);
      g.store(da + j, n);
    }
  });
}

template <typename scalar_t>
void peephole_fwd_pointwise_impl(const PeepholeFwdArgs<scalar_t>& a) {
  using Vec = Vectorized<scalar_t>;
  const int64_t H = a.H;
  for_each_unit_block(a.B, H, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* y = a.y + b * H;
    if (inactive(a.active, b)) {
      std::fill(y + j0, y + j1, scalar_t(0));
      if (a.cells != nullptr) std::memcpy(a.cells + b * H + j0, a.c + b * H + j0, (j1 - j0) * sizeof(scalar_t));
      if (a.gates != nullptr)  // never read (the gradient there is zero), but must not hold garbage
        for (int k = 0; k < 4; ++k)
          std::fill(a.gates + b * 4 * H + k * H + j0, a.gates + b * 4 * H + k * H + j1, scalar_t(0));
      return;
    }
    const scalar_t* gi = a.gi + b * 4 * H;
    const scalar_t* gh = a.gh + b * 4 * H;
    scalar_t* h = a.h + b * H;
    scalar_t* c = a.c + b * H;
    for (int64_t j = j0; j < j1; j += Vec::size()) {
      const int n = static_cast<int>(std::min<int64_t>(Vec::size(), j1 - j));
      auto pre = [&](int64_t k) { return Vec::loadu(gi + k * H + j, n) + Vec::loadu(gh + k * H + j, n); };
      Vec i, f, g, o, cv, hv;
      peephole_cell_forward<Vec, VecMath<scalar_t>>(pre(0), pre(1), pre(2), pre(3), Vec::loadu(c + j, n),
                                                    Vec::loadu(a.w_c + j, n), Vec::loadu(a.w_c + H + j, n),
                                                    Vec::loadu(a.w_c + 2 * H + j, n), i, f, g, o, cv, hv);
      cv.store(c + j, n);
      hv.store(h + j, n);
      hv.store(y + j, n);
      if (a.cells != nullptr) cv.store(a.cells + b * H + j, n);
      if (a.gates != nullptr) {
        scalar_t* gs = a.gates + b * 4 * H;
        i.store(gs + j, n);
        f.store(gs + H + j, n);
        g.store(gs + 2 * H + j, n);
        o.store(gs + 3 * H + j, n);
      }
    }
  });
}

template <typename scalar_t>
void peephole_bwd_pointwise_impl(const PeepholeBwdArgs<scalar_t>& a) {
  using Vec = Vectorized<scalar_t>;
  const int64_t H = a.H;
  for_each_unit_block(a.B, H, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* dg = a.dgates + b * 4 * H;
    if (inactive(a.active, b)) {  // dc passes through; no gate gradient
      for (int k = 0; k < 4; ++k) std::fill(dg + k * H + j0, dg + k * H + j1, scalar_t(0));
      return;
    }
    const scalar_t* gs = a.gates + b * 4 * H;
    const scalar_t* c = a.c + b * H;
    const scalar_t* cp = a.c_prev + b * H;
    const scalar_t* dh = a.dh + b * H;
    const scalar_t* dy = a.dy + b * H;
    scalar_t* dc = a.dc + b * H;
    for (int64_t j = j0; j < j1; j += Vec::size()) {
      const int n = static_cast<int>(std::min<int64_t>(Vec::size(), j1 - j));
      Vec dcv = Vec::loadu(dc + j, n);
      Vec dai, daf, dag, dao;
      peephole_cell_backward<Vec, VecMath<scalar_t>>(
          Vec::loadu(gs + j, n), Vec::loadu(gs + H + j, n), Vec::loadu(gs + 2 * H + j, n),
          Vec::loadu(gs + 3 * H + j, n), Vec::loadu(c + j, n), Vec::loadu(cp + j, n), Vec::loadu(a.w_c + j, n),
          Vec::loadu(a.w_c + H + j, n), Vec::loadu(a.w_c + 2 * H + j, n),
          Vec::loadu(dh + j, n) + Vec::loadu(dy + j, n), dcv, dai, daf, dag, dao);
      dcv.store(dc + j, n);
      dai.store(dg + j, n);
      daf.store(dg + H + j, n);
      dag.store(dg + 2 * H + j, n);
      dao.store(dg + 3 * H + j, n);
    }
  });
}

void peephole_fwd_pointwise(const PeepholeFwdArgs<float>& a) { peephole_fwd_pointwise_impl(a); }
void peephole_fwd_pointwise(const PeepholeFwdArgs<double>& a) { peephole_fwd_pointwise_impl(a); }
void peephole_bwd_pointwise(const PeepholeBwdArgs<float>& a) { peephole_bwd_pointwise_impl(a); }
void peephole_bwd_pointwise(const PeepholeBwdArgs<double>& a) { peephole_bwd_pointwise_impl(a); }
void gru_fwd_pointwise(const GruFwdArgs<float>& a) { gru_fwd_pointwise_impl(a); }
void gru_fwd_pointwise(const GruFwdArgs<double>& a) { gru_fwd_pointwise_impl(a); }
void gru_bwd_pointwise(const GruBwdArgs<float>& a) { gru_bwd_pointwise_impl(a); }
void gru_bwd_pointwise(const GruBwdArgs<double>& a) { gru_bwd_pointwise_impl(a); }
void rnn_fwd_pointwise(const RnnFwdArgs<float>& a) { rnn_fwd_pointwise_impl(a); }
void rnn_fwd_pointwise(const RnnFwdArgs<double>& a) { rnn_fwd_pointwise_impl(a); }
void rnn_bwd_pointwise(const RnnBwdArgs<float>& a) { rnn_bwd_pointwise_impl(a); }
void rnn_bwd_pointwise(const RnnBwdArgs<double>& a) { rnn_bwd_pointwise_impl(a); }

}  // namespace fused_s2s::cpu::CPU_CAPABILITY
