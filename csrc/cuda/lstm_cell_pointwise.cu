// Fused LSTM pointwise step on the GPU: one thread per (row, unit), built on the same lstm_cell.h math as
// the CPU kernels. The full CUDA backend (recurrent GEMM in the loop, backward) lands with its own issue;
// this kernel keeps the CUDA build path and the shared __host__ __device__ header compiled today.
#include <cuda_runtime.h>

#include <cstdint>

#include "fused_s2s/lstm_cell.h"

namespace fused_s2s::cuda {

// gates [B, 4H]: in x·W_ihᵀ + biases, out activated i, f, g, o; rec [B, 4H] h·W_hhᵀ; c [B, H] in/out;
// h [B, H] out; active [B] (1 where the sequence has this step) or nullptr.
template <typename T>
__global__ void lstm_fwd_pointwise_kernel(T* __restrict__ gates, const T* __restrict__ rec, T* __restrict__ c,
                                          T* __restrict__ h, const uint8_t* __restrict__ active, int64_t B,
                                          int64_t H) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * H) return;
  const int64_t b = idx / H, j = idx % H;
  if (active != nullptr && !active[b]) return;
  T* g = gates + b * 4 * H;
  const T* r = rec + b * 4 * H;
  T i, f, gg, o, c_new, h_new;
  lstm_cell_forward<T>(g[j] + r[j], g[H + j] + r[H + j], g[2 * H + j] + r[2 * H + j], g[3 * H + j] + r[3 * H + j],
                       c[b * H + j], i, f, gg, o, c_new, h_new);
  g[j] = i;
  g[H + j] = f;
  g[2 * H + j] = gg;
  g[3 * H + j] = o;
  c[b * H + j] = c_new;
  h[b * H + j] = h_new;
}

template __global__ void lstm_fwd_pointwise_kernel<float>(float*, const float*, float*, float*, const uint8_t*,
                                                          int64_t, int64_t);
template __global__ void lstm_fwd_pointwise_kernel<double>(double*, const double*, double*, double*,
                                                           const uint8_t*, int64_t, int64_t);

}  // namespace fused_s2s::cuda
