// Fused attention-decoder step kernels (contract and launch sequence in decoder_step.cuh).
// Compiles under nvcc and, with FS2S_CPU_HARNESS, as C++20 for the CPU harness.
#include "decoder_step.cuh"

namespace fused_s2s::cuda {

template <typename T>
__global__ void __launch_bounds__(1024) decoder_lstm_cell_kernel(DecoderCellParams<T> p) {
  const int64_t n = static_cast<int64_t>(p.B) * p.H;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    decoder::cell_unit(p, static_cast<int>(idx / p.H), static_cast<int>(idx % p.H), true);
  }
}

template <typename T>
__global__ void __launch_bounds__(kAttnMaxThreads, 1) decoder_cell_attention_kernel(DecoderStepParams<T> p) {
  const int splits = p.attn.splits;
  const int b = static_cast<int>(blockIdx.x) / splits, split = static_cast<int>(blockIdx.x) % splits;
  // The query of attn::fwd_split lives in smem[0, H): the cell writes h' there. Every split recomputes the
  // same h' (same inputs, same code: bit-identical); only split 0 stores it.
  float* q_s = fs2s_dynamic_smem<float>();
  for (int j = threadIdx.x; j < p.cell.H; j += blockDim.x) q_s[j] = decoder::cell_unit(p.cell, b, j, split == 0);
  __syncthreads();  // q_s written -> read by the scores
  attn::fwd_split<T, false>(p.attn, b, b, split);  // Tq = 1: the query row is the batch row
}

template <typename T>
__global__ void __launch_bounds__(1024) decoder_combine_tanh_kernel(T* out, const T* b_out, int B, int H) {
  const int64_t n = static_cast<int64_t>(B) * H;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float bias = b_out != nullptr ? to_float(b_out[idx % H]) : 0.0f;
    out[idx] = from_float<T>(tanhf(to_float(out[idx]) + bias));
  }
}

#define FS2S_INSTANTIATE_DECODER_STEP(T)                                                   \
  template __global__ void decoder_lstm_cell_kernel<T>(DecoderCellParams<T>);              \
  template __global__ void decoder_cell_attention_kernel<T>(DecoderStepParams<T>);         \
  template __global__ void decoder_combine_tanh_kernel<T>(T*, const T*, int, int);

FS2S_INSTANTIATE_DECODER_STEP(float)
FS2S_INSTANTIATE_DECODER_STEP(__nv_bfloat16)
FS2S_INSTANTIATE_DECODER_STEP(__half)
#undef FS2S_INSTANTIATE_DECODER_STEP

}  // namespace fused_s2s::cuda
