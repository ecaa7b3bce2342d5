// Fused attention over a padded source for the decoder, forward and backward (flash-decoding pattern).
//
// The op is fused_s2s::attention_fwd / attention_bwd (csrc/cpu/attention.h, fused_s2s/ops/attention.py):
//   query [B, Tq, D]   keys [B, S, D]   values [B, S, M]   lengths [B] (each in 1..S) or null   v [D] (additive)
//   score(b, t, s) = scale · q·k_s                  (Additive = false: dot, scaled_dot, general)
//                  = Σ_d v_d tanh(q_d + k_{s,d})    (Additive = true: Bahdanau / OpenNMT "mlp")
//   positions s ≥ lengths[b] are masked out (never read: NaN in padding cannot reach a result);
//   context = softmax(score) · values;  lse = log Σ_s exp(score);  weights = softmax(score) (0 at padding).
// A decoder step is Tq = 1 (query [B, D]); Tq > 1 is the batched teacher-forcing form.
//
// What runs OUTSIDE these kernels, as GEMMs (cuBLAS through torch), exactly as for the CPU and Triton ops:
//   general:  the projected query q' = w·q ([B, Tq, M] = query·wᵀ), scored as dot with keys = values = memory;
//   additive: the projected query q' = w_query·q + b_query [B, Tq, A] and the projected keys
//             k' = memory·w_memoryᵀ [B, S, A] (a decoder computes these once per source);
//   dot / scaled_dot: nothing (keys = values = memory; scale = 1 or 1/√M).
// The backward returns the gradients with respect to these kernel inputs (d_query of the projected query,
// d_keys of the projected keys, d_values of the memory, d_v); the chain through w, w_query, b_query and
// w_memory is again GEMMs outside.
//
// Storage type T (float, __nv_bfloat16, __half) for every tensor but lse and the workspaces, which are fp32;
// every score, exponential and sum is accumulated in fp32 (16-bit T is only how the tensors are held, as torch
// holds them).
//
// Forward (attention_fwd_kernel): one CTA per (query row, split of S). A query row is (b, t), row = b·Tq + t.
// Split i covers positions [i·chunk, min((i+1)·chunk, lengths[b])). Inside the CTA the split is walked in tiles
// of kAttnTile positions: each warp scores one position at a time (lanes over D, a shuffle reduction), warp 0
// folds the tile into a running max and sum (online softmax), and every thread rescales and accumulates its
// own columns m of the context (coalesced reads of values[s, m]). So each CTA reads its keys and values once.
// With splits = 1 the CTA normalises and writes context, lse and weights itself; with splits > 1 it writes a
// partial (max, sum, unnormalised context) and attention_fwd_combine_kernel merges the splits of each row
// (the flash-decoding reduction) and writes the outputs.
//
// Backward (attention_bwd_kernel): one CTA per (batch row b, split of S); each warp owns positions of the split
// (one at a time, all Tq queries in an inner loop), recomputes p = exp(score − lse) from the saved lse, and
//   dp = dctx·values_s,  delta = Σ_s p·dp (= dctx·context for fp32; recomputed over the row for 16-bit,
//   whose stored context is rounded),  ds = p·(dp − delta),
//   d_values[s] = Σ_t p·dctx_t,
//   d_keys[s] = Σ_t ds·scale·q_t (dot) or Σ_t ds·v⊙(1 − u²) (additive, u = tanh(q + k)),
// accumulating d_keys[s] and d_values[s] in fp32 shared memory and writing each once (no atomics). d_query
// and d_v are sums over positions: each warp adds its positions' terms into its own fp32 slice of a workspace
// (dq_part, dv_part; no other warp touches it), and attention_bwd_reduce_kernel sums the slices in a fixed
// order (deterministic) and writes d_query and d_v.
//
// Launch: attention_plan gives splits, chunk, shared memory and workspace sizes (or why a shape does not fit);
// attention_fwd_launch / attention_bwd_launch below run the kernels in order: blockDim.x a multiple of 32 in
// [32, kAttnMaxThreads]; forward grid = B·Tq·splits, then (splits > 1) the combine with grid = B·Tq;
// backward grid = B·splits, then the reduce with grid = B·Tq (+1 when d_v is wanted). No cooperative launch
// (no CTA waits on another). Workspaces need no zeroing. lengths are int64, as torch's default integer.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda_compat.cuh"

namespace fused_s2s::cuda {

constexpr int kAttnTile = 64;  // positions per forward tile: the scores of one tile live in shared memory
// The kernels' __launch_bounds__(kAttnMaxThreads, 1). Measured with nvcc 13.0: at 1024 the dot backward spilled
// (64 registers per thread left); with the bound's second argument left out, ptxas spilled a few instantiations
// (24-byte stack frames at 40-48 registers, far below the cap) at 256 and 512; naming minBlocksPerMultiprocessor
// = 1 compiles every instantiation without spills at 256 (the compile check enforces it).
constexpr int kAttnMaxThreads = 256;

template <typename T>
struct AttentionFwdParams {
  const T* query;          // [B, Tq, D] (the projected query for general / additive)
  const T* keys;           // [B, S, D]  (memory, or the projected keys for additive)
  const T* values;         // [B, S, M]  (memory)
  const int64_t* lengths;  // [B], each in [1, S], or nullptr (every position valid)
  const T* v;              // [D] for additive scores, unused (may be null) for dot scores
  float scale;             // dot scores only: 1, or 1/√M for scaled_dot
  T* context;              // [B·Tq, ldc] out: row b·Tq + t, columns [0, M)
  int64_t ldc;             // row stride of context (M when it is a plain [B, Tq, M] tensor)
  float* lse;              // [B, Tq] out: log Σ_s exp(score), saved for backward
  T* weights;              // [B, Tq, S] out (0 at padding), or nullptr
  float* scores;           // [B, Tq, S] workspace, needed when weights != nullptr: raw fp32 scores (for T = float
                           // it may be the weights buffer itself: each element is read and then overwritten by
                           // the same thread)
  float* part_ml;          // [B·Tq, splits, 2] workspace (splits > 1): each split's running max and sum
  float* part_ctx;         // [B·Tq, splits, M] workspace (splits > 1): each split's unnormalised context
  int B, Tq, S, D, M;
  int splits;              // CTAs per query row
  int chunk;               // positions per split, splits · chunk ≥ S (positions past it would be dropped)
};

template <typename T>
struct AttentionBwdParams {
  const T* d_context;      // [B, Tq, M]
  const T* query;          // [B, Tq, D]
  const T* keys;           // [B, S, D]
  const T* values;         // [B, S, M]
  const int64_t* lengths;  // [B] or nullptr
  const T* v;              // [D] (additive) or unused
  float scale;             // dot scores only
  const T* context;        // [B, Tq, M] the forward's context
  const float* lse;        // [B, Tq] the forward's lse
  T* d_query;              // [B, Tq, D] out
  T* d_keys;               // [B, S, D] out (0 at padding)
  T* d_values;             // [B, S, M] out (0 at padding)
  T* d_v;                  // [D] out (additive), or nullptr
  float* dq_part;          // [B, P, Tq, D] workspace, P = splits · warps
  float* dv_part;          // [B, P, D] workspace (additive), else unused
  int B, Tq, S, D, M;
  int splits;              // CTAs per batch row
  int chunk;               // positions per split, splits · chunk ≥ S
  int warps;               // blockDim.x / 32 of attention_bwd_kernel (the reduce kernel needs it for P)
};

// Kernels (attention.cu, instantiated for T in {float, __nv_bfloat16, __half} and Additive in {false, true}).
template <typename T, bool Additive>
__global__ void attention_fwd_kernel(AttentionFwdParams<T> p);      // grid B·Tq·splits
template <typename T>
__global__ void attention_fwd_combine_kernel(AttentionFwdParams<T> p);  // grid B·Tq (only when splits > 1)
template <typename T, bool Additive>
__global__ void attention_bwd_kernel(AttentionBwdParams<T> p);      // grid B·splits
template <typename T>
__global__ void attention_bwd_reduce_kernel(AttentionBwdParams<T> p);   // grid B·Tq + (d_v ? 1 : 0)

// ------------------------------------------------------------------------------------------------------------
// Shared-memory layouts (bytes), computed the same way by the kernels and the plan.
// ------------------------------------------------------------------------------------------------------------
// Forward: q [D] fp32 | tile scores/probabilities [kAttnTile] | context accumulator [M] | stats [4].
inline std::size_t attention_fwd_smem_bytes(int D, int M) {
  return sizeof(float) * (static_cast<std::size_t>(D) + kAttnTile + M + 4);
}
// Combine: the splits' rescale factors [splits].
inline std::size_t attention_combine_smem_bytes(int splits) {
  return sizeof(float) * static_cast<std::size_t>(splits);
}
// Backward: delta [Tq] | per warp: d_keys row [D], d_values row [M] (first the 16-bit row-term sums).
inline std::size_t attention_bwd_smem_bytes(int Tq, int D, int M, int warps) {
  return sizeof(float) * (static_cast<std::size_t>(Tq) + static_cast<std::size_t>(warps) * (D + M));
}

// ------------------------------------------------------------------------------------------------------------
// Launch sequences, written once for the binding and the CPU harness. `launch(kernel, grid, threads,
// smem_bytes, params)` launches one kernel: in the binding a <<<grid, threads, smem_bytes, stream>>> (after
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes) above 48 KB) with its
// error check; in the harness harness::launch. Kernels run in stream order, which is all the combine and
// reduce kernels need (they read what the kernel before them wrote).
// ------------------------------------------------------------------------------------------------------------
// Forward: p.splits, p.chunk from attention_plan (splits · chunk ≥ S), workspaces sized as in the params.
template <typename T, typename Launch>
void attention_fwd_launch(const AttentionFwdParams<T>& p, bool additive, int threads, Launch&& launch) {
  const int rows = p.B * p.Tq;
  launch(additive ? &attention_fwd_kernel<T, true> : &attention_fwd_kernel<T, false>, rows * p.splits, threads,
         attention_fwd_smem_bytes(p.D, p.M), p);
  if (p.splits > 1) launch(&attention_fwd_combine_kernel<T>, rows, threads, attention_combine_smem_bytes(p.splits), p);
}

// Backward: blockDim.x = 32 · p.warps for the main kernel (the workspace's P = splits · warps depends on it).
template <typename T, typename Launch>
void attention_bwd_launch(const AttentionBwdParams<T>& p, bool additive, Launch&& launch) {
  const int threads = 32 * p.warps;
  launch(additive ? &attention_bwd_kernel<T, true> : &attention_bwd_kernel<T, false>, p.B * p.splits, threads,
         attention_bwd_smem_bytes(p.Tq, p.D, p.M, p.warps), p);
  launch(&attention_bwd_reduce_kernel<T>, p.B * p.Tq + (p.d_v != nullptr ? 1 : 0), threads, std::size_t{0}, p);
}

// ------------------------------------------------------------------------------------------------------------
// Host plan: splits, chunk, shared memory and workspace sizes for a shape on a device, or why it does not fit.
// ------------------------------------------------------------------------------------------------------------
struct AttentionPlan {
  int splits = 0;                 // CTAs per query row (forward) / per batch row (backward)
  int chunk = 0;                  // positions per split
  int threads = 0;                // blockDim.x
  std::size_t fwd_smem = 0;       // attention_fwd_kernel
  std::size_t combine_smem = 0;   // attention_fwd_combine_kernel (launched only when splits > 1)
  std::size_t bwd_smem = 0;       // attention_bwd_kernel
  std::size_t fwd_workspace_floats = 0;  // part_ml + part_ctx (0 when splits = 1), scores not included
  std::size_t bwd_workspace_floats = 0;  // dq_part + dv_part (dv_part only read for additive scores)
  std::string reason;             // empty when the kernels take this shape
  bool fits() const { return reason.empty(); }
};

// min_positions_per_split: the fewest positions worth a CTA (below it the partial's write and the combine cost
// more than the positions). The split count aims at about two CTAs per SM over the B·Tq rows (forward) and B rows
// (the backward uses the same split, so one plan describes both).
inline AttentionPlan attention_plan(int B, int Tq, int S, int D, int M, int sm_count, std::size_t max_smem_per_cta,
                                    int threads = 128, int min_positions_per_split = 32) {
  AttentionPlan plan;
  plan.threads = threads;
  if (B < 1 || Tq < 1 || S < 1 || D < 1 || M < 1) {
    plan.reason = "attention: needs B, Tq, S, D, M >= 1, got B=" + std::to_string(B) + " Tq=" + std::to_string(Tq) +
                  " S=" + std::to_string(S) + " D=" + std::to_string(D) + " M=" + std::to_string(M);
    return plan;
  }
  if (threads < 32 || threads % 32 != 0 || threads > kAttnMaxThreads) {
    plan.reason = "attention: threads must be a multiple of 32 in [32, " + std::to_string(kAttnMaxThreads) +
                  "], got " + std::to_string(threads);
    return plan;
  }
  const int rows = B * Tq;
  const int target = 2 * (sm_count > 0 ? sm_count : 1);
  int splits = (target + rows - 1) / rows;
  const int max_splits = (S + min_positions_per_split - 1) / min_positions_per_split;
  splits = splits < 1 ? 1 : (splits > max_splits ? max_splits : splits);
  plan.chunk = (S + splits - 1) / splits;
  plan.splits = (S + plan.chunk - 1) / plan.chunk;  // no split left empty by the rounding
  const int warps = threads / 32;
  plan.fwd_smem = attention_fwd_smem_bytes(D, M);
  plan.combine_smem = attention_combine_smem_bytes(plan.splits);
  plan.bwd_smem = attention_bwd_smem_bytes(Tq, D, M, warps);
  plan.fwd_workspace_floats =
      plan.splits > 1 ? static_cast<std::size_t>(rows) * plan.splits * (2 + static_cast<std::size_t>(M)) : 0;
  const std::size_t P = static_cast<std::size_t>(plan.splits) * warps;
  plan.bwd_workspace_floats = static_cast<std::size_t>(B) * P * (static_cast<std::size_t>(Tq) * D + D);
  const std::size_t need = plan.fwd_smem > plan.bwd_smem ? plan.fwd_smem : plan.bwd_smem;
  if (need > max_smem_per_cta) {
    plan.reason = "attention: D=" + std::to_string(D) + " M=" + std::to_string(M) + " Tq=" + std::to_string(Tq) +
                  " with " + std::to_string(threads) + " threads needs " + std::to_string(need) +
                  " bytes of shared memory per CTA (forward " + std::to_string(plan.fwd_smem) + ", backward " +
                  std::to_string(plan.bwd_smem) + "); the device allows " + std::to_string(max_smem_per_cta);
  }
  return plan;
}

// ------------------------------------------------------------------------------------------------------------
// Device building blocks, shared with decoder_step.cu (which computes the query itself, from the LSTM cell).
// ------------------------------------------------------------------------------------------------------------
namespace attn {

// a / b for b ≥ 1 (a softmax sum: its largest term is e^0): __fdividef on the GPU (2 ulp), because IEEE
// division there calls a slow-path subroutine whose calling convention made ptxas spill around it.
FS2S_DEVICE float div_sum(float a, float b) {
#if defined(FS2S_CPU_HARNESS)
  return a / b;
#else
  return __fdividef(a, b);
#endif
}

FS2S_DEVICE float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}
FS2S_DEVICE float warp_max(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// One position's score, on every lane of the warp: lanes stride over D (coalesced reads of k), then a
// butterfly sum. q is fp32 (shared memory or a register-free global read), k and v in storage type.
template <typename T, bool Additive, typename Q>
FS2S_DEVICE float score(const Q* q, const T* k, const T* v, int D, float scale) {
  float acc = 0.0f;
  for (int d = fs2s_lane_id(); d < D; d += 32) {
    const float qd = to_float(q[d]), kd = to_float(k[d]);
    if constexpr (Additive) {
      acc = fmaf(to_float(v[d]), tanhf(qd + kd), acc);
    } else {
      acc = fmaf(qd, kd, acc);
    }
  }
  acc = warp_sum(acc);
  return Additive ? acc : acc * scale;
}

// Forward of one CTA: query row `row` (batch row b), split `split`, with the fp32 query already in
// smem[0, D) (written before a __syncthreads by the caller). Writes the final outputs (splits = 1) or the
// split's partial (splits > 1). Shared memory: attention_fwd_smem_bytes(D, M).
template <typename T, bool Additive>
FS2S_DEVICE void fwd_split(AttentionFwdParams<T> p, int row, int b, int split) {
  const int S = p.S, D = p.D, M = p.M;
  float* smem = fs2s_dynamic_smem<float>();
  const float* q_s = smem;                 // [D]
  float* tile_s = smem + D;                // [kAttnTile] scores, then probabilities
  float* ctx_s = tile_s + kAttnTile;       // [M] unnormalised context; element m only ever touched by one thread
  float* stats = ctx_s + M;                // [4] alpha, final max, final sum
  const int warp = static_cast<int>(threadIdx.x / 32), warps = static_cast<int>(blockDim.x / 32);
  const int lane = fs2s_lane_id(), tid = static_cast<int>(threadIdx.x), nthreads = static_cast<int>(blockDim.x);
  const int len = p.lengths != nullptr ? static_cast<int>(p.lengths[b]) : S;
  const int s_begin = split * p.chunk;
  const int s_end = s_begin + p.chunk < len ? s_begin + p.chunk : len;  // padding is never read
  const T* keys = p.keys + static_cast<int64_t>(b) * S * D;
  const T* values = p.values + static_cast<int64_t>(b) * S * M;
  float* scores = p.weights != nullptr ? p.scores + static_cast<int64_t>(row) * S : nullptr;

  for (int m = tid; m < M; m += nthreads) ctx_s[m] = 0.0f;
  // Held by warp 0 only (every lane the same value): the online softmax's running max and sum.
  float run_max = -INFINITY, run_sum = 0.0f;

  for (int t0 = s_begin; t0 < s_end; t0 += kAttnTile) {
    const int n = s_end - t0 < kAttnTile ? s_end - t0 : kAttnTile;
    for (int i = warp; i < n; i += warps) {  // warp-uniform bounds: every lane joins the shuffles
      const float sc = score<T, Additive>(q_s, keys + static_cast<int64_t>(t0 + i) * D, p.v, D, p.scale);
      if (lane == 0) {
        tile_s[i] = sc;
        if (scores != nullptr) scores[t0 + i] = sc;
      }
    }
    __syncthreads();  // tile_s scores written -> read by warp 0
    if (warp == 0) {
      float mx = -INFINITY;
      for (int i = lane; i < n; i += 32) mx = fmaxf(mx, tile_s[i]);
      const float new_max = fmaxf(run_max, warp_max(mx));
      float sum = 0.0f;
      for (int i = lane; i < n; i += 32) {
        const float pr = expf(tile_s[i] - new_max);
        tile_s[i] = pr;
        sum += pr;
      }
      // A NaN score leaves new_max finite (fmaxf drops NaN) but makes pr and the sum NaN: the row's outputs
      // become NaN, as torch's softmax makes them.
      const float alpha = expf(run_max - new_max);  // 0 at the first tile (run_max = -inf)
      run_sum = run_sum * alpha + warp_sum(sum);
      run_max = new_max;
      if (lane == 0) stats[0] = alpha;
    }
    __syncthreads();  // probabilities in tile_s and alpha -> read by every thread
    const float alpha = stats[0];
    for (int m = tid; m < M; m += nthreads) {
      float acc = ctx_s[m] * alpha;
      const T* vcol = values + static_cast<int64_t>(t0) * M + m;
      for (int i = 0; i < n; ++i) acc = fmaf(tile_s[i], to_float(vcol[static_cast<int64_t>(i) * M]), acc);
      ctx_s[m] = acc;
    }
    __syncthreads();  // tile_s and stats[0] read -> overwritten by the next tile
  }
  if (threadIdx.x == 0) {
    stats[1] = run_max;
    stats[2] = run_sum;
  }
  __syncthreads();  // the final max and sum -> every thread (and, for splits = 1, `scores` of every warp -> all)
  const float mx = stats[1], sum = stats[2];
  if (p.splits == 1) {
    const float inv = div_sum(1.0f, sum);
    const float lse = mx + logf(sum);
    for (int m = tid; m < M; m += nthreads) p.context[row * p.ldc + m] = from_float<T>(ctx_s[m] * inv);
    if (tid == 0) p.lse[row] = lse;
    if (p.weights != nullptr) {
      T* w = p.weights + static_cast<int64_t>(row) * S;
      for (int s = tid; s < S; s += nthreads) w[s] = from_float<T>(s < len ? expf(scores[s] - lse) : 0.0f);
    }
  } else {
    const int64_t part = static_cast<int64_t>(row) * p.splits + split;
    if (tid == 0) {
      p.part_ml[2 * part] = mx;     // -inf for a split wholly in the padding ...
      p.part_ml[2 * part + 1] = sum;  // ... with sum 0 and context 0: it adds nothing in the combine
    }
    for (int m = tid; m < M; m += nthreads) p.part_ctx[part * M + m] = ctx_s[m];
  }
}

}  // namespace attn
}  // namespace fused_s2s::cuda
