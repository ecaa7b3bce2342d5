// Elman RNN cell math for one hidden unit (nn.RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or
// relu), shared by the CPU kernels (scalar and at::vec) and the CUDA kernels. The backward needs only the
// output h', which is the layer's output y: nothing else is saved.
#pragma once

#include "fused_s2s/lstm_cell.h"  // FS2S_HD, ScalarMath

namespace fused_s2s {

enum class RnnActivation { kTanh = 0, kRelu = 1 };

// relu that keeps NaN (NaN in means NaN out, as torch.relu).
template <typename T>
FS2S_HD T scalar_relu(T a) {
  return a != a ? a : (a > T(0) ? a : T(0));
}

template <typename T, typename Math = ScalarMath<T>>
FS2S_HD T rnn_tanh_forward(T a) {
  return Math::tanh(a);
}

// dL/da from dL/dh' and h' = tanh(a).
template <typename T>
FS2S_HD T rnn_tanh_backward(T h, T dh) {
  return dh * (T(1) - h * h);
}

// dL/da from dL/dh' and h' = relu(a): the gradient passes where h' > 0 (torch's relu backward).
template <typename T>
FS2S_HD T rnn_relu_backward_scalar(T h, T dh) {
  return h > T(0) ? dh : T(0);
}

}  // namespace fused_s2s
