// Fused attention forward and backward kernels (design, shapes and launch in attention.cuh).
// Compiles under nvcc and, with FS2S_CPU_HARNESS, as C++20 for the CPU harness.
#include "attention.cuh"

namespace fused_s2s::cuda {

// Every kernel loops over D, M and positions with blockDim-strided loops, so any multiple of 32 up to
// kAttnMaxThreads works; the plan's default is 128.
template <typename T, bool Additive>
__global__ void __launch_bounds__(kAttnMaxThreads, 1) attention_fwd_kernel(AttentionFwdParams<T> p) {
  const int row = static_cast<int>(blockIdx.x) / p.splits, split = static_cast<int>(blockIdx.x) % p.splits;
  const int b = row / p.Tq;
  float* q_s = fs2s_dynamic_smem<float>();  // [D] the query in fp32, read by every warp for every position
  const T* q = p.query + static_cast<int64_t>(row) * p.D;
  for (int d = threadIdx.x; d < p.D; d += blockDim.x) q_s[d] = to_float(q[d]);
  __syncthreads();  // q_s written -> read by the scores
  attn::fwd_split<T, Additive>(p, row, b, split);
}

// Merges the splits of one query row: with m_i, l_i, c_i the splits' max, sum and unnormalised context,
//   m = max_i m_i,  l = Σ_i l_i e^{m_i − m},  context = Σ_i c_i e^{m_i − m} / l,  lse = m + log l.
// Split 0 always holds position 0 (lengths ≥ 1), so m is finite unless a score is ±inf or NaN.
template <typename T>
__global__ void __launch_bounds__(kAttnMaxThreads, 1) attention_fwd_combine_kernel(AttentionFwdParams<T> p) {
  const int row = static_cast<int>(blockIdx.x), b = row / p.Tq;
  const int splits = p.splits, M = p.M, S = p.S;
  float* factor = fs2s_dynamic_smem<float>();  // [splits] e^{m_i − m}
  const float* ml = p.part_ml + static_cast<int64_t>(row) * splits * 2;
  float m = -INFINITY;
  for (int i = 0; i < splits; ++i) m = fmaxf(m, ml[2 * i]);  // every thread: splits is small
  float l = 0.0f;
  for (int i = 0; i < splits; ++i) l += ml[2 * i + 1] * expf(ml[2 * i] - m);  // an empty split: 0 · e^{-inf}
  for (int i = threadIdx.x; i < splits; i += blockDim.x) factor[i] = attn::div_sum(expf(ml[2 * i] - m), l);
  __syncthreads();  // factor written -> read below
  const float* part = p.part_ctx + static_cast<int64_t>(row) * splits * M;
  for (int c = threadIdx.x; c < M; c += blockDim.x) {
    float acc = 0.0f;
    for (int i = 0; i < splits; ++i) acc = fmaf(part[static_cast<int64_t>(i) * M + c], factor[i], acc);
    p.context[row * p.ldc + c] = from_float<T>(acc);
  }
  const float lse = m + logf(l);
  if (threadIdx.x == 0) p.lse[row] = lse;
  if (p.weights != nullptr) {
    const int len = p.lengths != nullptr ? static_cast<int>(p.lengths[b]) : S;
    const float* scores = p.scores + static_cast<int64_t>(row) * S;
    T* w = p.weights + static_cast<int64_t>(row) * S;
    for (int s = threadIdx.x; s < S; s += blockDim.x) w[s] = from_float<T>(s < len ? expf(scores[s] - lse) : 0.0f);
  }
}

template <typename T, bool Additive>
__global__ void __launch_bounds__(kAttnMaxThreads, 1) attention_bwd_kernel(AttentionBwdParams<T> p) {
  const int b = static_cast<int>(blockIdx.x) / p.splits, split = static_cast<int>(blockIdx.x) % p.splits;
  const int Tq = p.Tq, S = p.S, D = p.D, M = p.M;
  const int warp = static_cast<int>(threadIdx.x / 32), warps = static_cast<int>(blockDim.x / 32);
  const int lane = fs2s_lane_id();
  const int len = p.lengths != nullptr ? static_cast<int>(p.lengths[b]) : S;
  float* smem = fs2s_dynamic_smem<float>();
  float* delta_s = smem;                                          // [Tq] Σ_s p_s (dctx_t · values_s)
  float* acc_k = smem + Tq + static_cast<int64_t>(warp) * (D + M);  // [D] this warp's d_keys row (lane-owned)
  float* acc_v = acc_k + D;                                       // [M] this warp's d_values row (lane-owned)
  const int64_t P = static_cast<int64_t>(p.splits) * warps;
  const int64_t slot = static_cast<int64_t>(b) * P + static_cast<int64_t>(split) * warps + warp;
  float* dq_w = p.dq_part + slot * Tq * D;  // [Tq, D] this warp's share of d_query, written by no other warp
  float* dv_w = Additive ? p.dv_part + slot * D : nullptr;  // [D] this warp's share of d_v

  // delta_t = Σ_s p_s (dctx_t · values_s), the softmax backward's row term (Σ_s ds_s = 0 needs it exact).
  if constexpr (std::is_same_v<T, float>) {
    // = dctx_t · context_t, from the stored fp32 context (FlashAttention's form: one M-long dot per row)
    for (int t = warp; t < Tq; t += warps) {
      const T* dctx = p.d_context + (static_cast<int64_t>(b) * Tq + t) * M;
      const T* ctx = p.context + (static_cast<int64_t>(b) * Tq + t) * M;
      float acc = 0.0f;
      for (int m = lane; m < M; m += 32) acc = fmaf(to_float(dctx[m]), to_float(ctx[m]), acc);
      acc = attn::warp_sum(acc);
      if (lane == 0) delta_s[t] = acc;
    }
  } else {
    // A 16-bit context is rounded (relative 2^-8): dctx · round(context) misses Σ p·dp by up to
    // |dctx|·|context|·2^-8, and d_query carries that times |Σ_s p_s k_s|, 2-4x torch's own bf16 error on
    // some inputs. So the sum is recomputed in fp32 over all the row's positions (not only this split's):
    // one more pass over keys and values. Each warp sums into its own slots, which borrow its d_keys/d_values
    // row (D + M floats, unused until the main loop; no extra shared memory), so t goes in passes of D + M;
    // the slots are then summed in a fixed order. Lane 0 alone writes a warp's slots.
    const int pass = D + M;
    for (int t0 = 0; t0 < Tq; t0 += pass) {
      const int nt = Tq - t0 < pass ? Tq - t0 : pass;
      if (lane == 0)
        for (int i = 0; i < nt; ++i) acc_k[i] = 0.0f;
      for (int s = warp; s < len; s += warps) {  // warp-uniform
        const T* k = p.keys + (static_cast<int64_t>(b) * S + s) * D;
        const T* val = p.values + (static_cast<int64_t>(b) * S + s) * M;
        for (int i = 0; i < nt; ++i) {
          const int64_t bt = static_cast<int64_t>(b) * Tq + t0 + i;
          const float pr = expf(attn::score<T, Additive>(p.query + bt * D, k, p.v, D, p.scale) - p.lse[bt]);
          float dp = 0.0f;
          for (int m = lane; m < M; m += 32) dp = fmaf(to_float(p.d_context[bt * M + m]), to_float(val[m]), dp);
          dp = attn::warp_sum(dp);
          if (lane == 0) acc_k[i] += pr * dp;
        }
      }
      __syncthreads();  // every warp's slots written -> summed below
      for (int i = threadIdx.x; i < nt; i += blockDim.x) {
        float acc = 0.0f;
        for (int w = 0; w < warps; ++w) acc += smem[Tq + static_cast<int64_t>(w) * pass + i];
        delta_s[t0 + i] = acc;
      }
      __syncthreads();  // slots read -> the next pass, or the main loop, overwrites them
    }
  }
  // Zeroed here, updated below by whichever lane owns column d: the __syncthreads below orders the two (for
  // Tq > 1 and D not a multiple of 32 the zeroing lane of an element is not the one that updates it).
  for (int i = lane; i < Tq * D; i += 32) dq_w[i] = 0.0f;
  if constexpr (Additive) {
    for (int d = lane; d < D; d += 32) dv_w[d] = 0.0f;
  }
  __syncthreads();  // delta_s written -> read by every warp

  const int s_begin = split * p.chunk;
  const int s_stop = s_begin + p.chunk < S ? s_begin + p.chunk : S;
  for (int s = s_begin + warp; s < s_stop; s += warps) {  // warp-uniform: every lane joins the shuffles
    T* dk = p.d_keys + (static_cast<int64_t>(b) * S + s) * D;
    T* dval = p.d_values + (static_cast<int64_t>(b) * S + s) * M;
    if (s >= len) {  // padding: zero gradient, and its keys and values are never read
      for (int d = lane; d < D; d += 32) dk[d] = from_float<T>(0.0f);
      for (int m = lane; m < M; m += 32) dval[m] = from_float<T>(0.0f);
      continue;
    }
    const T* k = p.keys + (static_cast<int64_t>(b) * S + s) * D;
    const T* val = p.values + (static_cast<int64_t>(b) * S + s) * M;
    for (int d = lane; d < D; d += 32) acc_k[d] = 0.0f;
    for (int m = lane; m < M; m += 32) acc_v[m] = 0.0f;
    for (int t = 0; t < Tq; ++t) {
      const int64_t bt = static_cast<int64_t>(b) * Tq + t;
      const T* q = p.query + bt * D;
      const T* dctx = p.d_context + bt * M;
      const float pr = expf(attn::score<T, Additive>(q, k, p.v, D, p.scale) - p.lse[bt]);
      float dp = 0.0f;
      for (int m = lane; m < M; m += 32) dp = fmaf(to_float(dctx[m]), to_float(val[m]), dp);
      dp = attn::warp_sum(dp);
      const float ds = pr * (dp - delta_s[t]);  // d score
      for (int m = lane; m < M; m += 32) acc_v[m] = fmaf(pr, to_float(dctx[m]), acc_v[m]);
      float* dq = dq_w + static_cast<int64_t>(t) * D;
      for (int d = lane; d < D; d += 32) {
        const float qd = to_float(q[d]), kd = to_float(k[d]);
        if constexpr (Additive) {
          const float u = tanhf(qd + kd);
          const float g = ds * to_float(p.v[d]) * (1.0f - u * u);
          acc_k[d] += g;
          dq[d] += g;
          dv_w[d] = fmaf(ds, u, dv_w[d]);
        } else {
          const float g = ds * p.scale;
          acc_k[d] = fmaf(g, qd, acc_k[d]);
          dq[d] = fmaf(g, kd, dq[d]);
        }
      }
    }
    for (int d = lane; d < D; d += 32) dk[d] = from_float<T>(acc_k[d]);
    for (int m = lane; m < M; m += 32) dval[m] = from_float<T>(acc_v[m]);
  }
}

// d_query[b, t] = Σ_{slot} dq_part[b, slot, t] and d_v = Σ_{b, slot} dv_part[b, slot], slots in a fixed order.
// Runs after attention_bwd_kernel (stream order makes its workspace writes visible).
template <typename T>
__global__ void __launch_bounds__(kAttnMaxThreads, 1) attention_bwd_reduce_kernel(AttentionBwdParams<T> p) {
  const int Tq = p.Tq, D = p.D;
  const int64_t P = static_cast<int64_t>(p.splits) * p.warps;
  const int row = static_cast<int>(blockIdx.x);
  if (row < p.B * Tq) {
    const int b = row / Tq, t = row % Tq;
    const float* part = p.dq_part + (static_cast<int64_t>(b) * P * Tq + t) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      float acc = 0.0f;
      for (int64_t i = 0; i < P; ++i) acc += part[i * Tq * D + d];
      p.d_query[static_cast<int64_t>(row) * D + d] = from_float<T>(acc);
    }
  } else if (p.d_v != nullptr) {  // the one extra block
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      float acc = 0.0f;
      for (int64_t i = 0; i < p.B * P; ++i) acc += p.dv_part[i * D + d];
      p.d_v[d] = from_float<T>(acc);
    }
  }
}

#define FS2S_INSTANTIATE_ATTENTION(T)                                                      \
  template __global__ void attention_fwd_kernel<T, false>(AttentionFwdParams<T>);          \
  template __global__ void attention_fwd_kernel<T, true>(AttentionFwdParams<T>);           \
  template __global__ void attention_fwd_combine_kernel<T>(AttentionFwdParams<T>);         \
  template __global__ void attention_bwd_kernel<T, false>(AttentionBwdParams<T>);          \
  template __global__ void attention_bwd_kernel<T, true>(AttentionBwdParams<T>);           \
  template __global__ void attention_bwd_reduce_kernel<T>(AttentionBwdParams<T>);

FS2S_INSTANTIATE_ATTENTION(float)
FS2S_INSTANTIATE_ATTENTION(__nv_bfloat16)
FS2S_INSTANTIATE_ATTENTION(__half)
#undef FS2S_INSTANTIATE_ATTENTION

}  // namespace fused_s2s::cuda
