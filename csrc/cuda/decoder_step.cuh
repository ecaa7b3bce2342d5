// Fused attention-decoder step (inference): the CUDA C++ counterpart of csrc/cpu/decoder_step.cpp.
//
// What the CPU step computes (L layers, B rows, H hidden, S source positions, M memory features):
//   for l in 0..L-1:  gates_l = [inp_l; h_l]·w_cat_lᵀ + b_l          (inp_0 = x, or [x; feed] with input feeding)
//                     h_l', c_l' = lstm_cell(gates_l, c_l)            (gate order i, f, g, o)
//                     inp_{l+1} = h_l'
//   attention of h_top = h_{L-1}' over memory [B, S, M], masked by lengths:
//     dot:      score_s = scale · h_top·keys_s, keys [B, S, H] = memory (dot, scaled_dot) or memory·w (general)
//     additive: score_s = v·tanh(q + keys_s), q = w_query·h_top + b_query, keys = memory·w_memoryᵀ [B, S, A]
//   out = tanh(w_out·[context; h_top] + b_out)                       (Luong combine, w_out [H, M + H])
//   -> out [B, H], h' [L, B, H], c' [L, B, H], attn weights [B, S]
//
// How it runs on the GPU (the launcher's sequence; GEMMs are cuBLAS through torch, in the storage type T):
//   1. each layer l < L-1:  GEMM gates_l; decoder_lstm_cell_kernel                          -> h_l', c_l'
//   2. top layer, dot scores (dot, scaled_dot, general):
//        GEMM gates_top; decoder_cell_attention_kernel (grid B·splits): every CTA (b, split) runs the cell for
//        row b (4H reads: cheaper than another launch and a round trip of h_top through memory), split 0
//        stores h', c' and h_top into ctx_h[:, M:]; then the CTA runs its attention split (attention.cuh's
//        attn::fwd_split) with h_top as the query, writing context into ctx_h[:, :M] and the weights;
//        then attention_fwd_combine_kernel when splits > 1.
//      top layer with a query projection (additive; or general scored as (W h)·m_s, the CPU step's w_query
//      without b_query and v): the projection needs h_top first, so
//        GEMM gates_top; decoder_lstm_cell_kernel (h_copy = ctx_h + M); GEMM q = h_top·w_queryᵀ (+ b_query);
//        attention_fwd_kernel<T, additive> (+ combine) with Tq = 1, context = ctx_h, ldc = M + H.
//   3. GEMM pre = ctx_h·w_outᵀ ([context; h_top] is already contiguous in ctx_h: no concat);
//      decoder_combine_tanh_kernel: out = tanh(pre + b_out), in place.
// The pointwise cell is fused into the kernel that consumes it; the GEMMs are not (cuBLAS does them better than
// a hand-written matrix-vector product would at these sizes, and B·splits CTAs would each re-read the weights).
//
// Storage type T (float, __nv_bfloat16, __half) for every tensor; the cell, scores and sums run in fp32, and
// h' is rounded to T before it is used as the attention query (as the unfused composition, which stores h' in
// T and reads it back, would do). Inference only: the training path is the composition of the LSTM and
// attention ops, whose backward kernels exist.
#pragma once

#include <cstdint>

#include "attention.cuh"
#include "cuda_compat.cuh"
#include "fused_s2s/lstm_cell.h"

namespace fused_s2s::cuda {

template <typename T>
struct DecoderCellParams {
  const T* gates;    // [B, 4H] pre-activations x·W_ihᵀ + h·W_hhᵀ + b_ih + b_hh (i, f, g, o), from the GEMM
  const T* c;        // [B, H] the layer's c before the step
  T* h_new;          // [B, H] out
  T* c_new;          // [B, H] out
  T* h_copy;         // [B, ld_h_copy] out, columns [0, H): a second copy of h' (ctx_h + M), or nullptr
  int64_t ld_h_copy; // row stride of h_copy (M + H for ctx_h)
  int B, H;
};

template <typename T>
struct DecoderStepParams {
  DecoderCellParams<T> cell;    // the top layer's cell
  AttentionFwdParams<T> attn;   // attention with the cell's h' as query: attn.query unused (may be null),
                                // attn.Tq = 1, attn.D = H, attn.keys [B, S, H], attn.context = ctx_h [B, M + H]
                                // with attn.ldc = M + H; attn.scale; attn.lse [B] (written: the attention's
                                // log-sum-exp, kept by a caller that wants it); weights, scores, part_* as in
                                // attention.cuh
};

// One thread per (b, unit), grid-stride: grid = ceil(B·H / blockDim.x) (any), blockDim.x any multiple of 32.
template <typename T>
__global__ void decoder_lstm_cell_kernel(DecoderCellParams<T> p);

// grid = B·splits (splits and chunk from attention_plan(B, 1, S, H, M, ...)), blockDim.x a multiple of 32 up to
// kAttnMaxThreads, dynamic shared memory attention_fwd_smem_bytes(H, M). Dot scores only (see above).
template <typename T>
__global__ void decoder_cell_attention_kernel(DecoderStepParams<T> p);

// out [B, H] in: ctx_h·w_outᵀ; out: tanh(out + b_out). b_out [H] or nullptr. Grid-stride, any grid.
template <typename T>
__global__ void decoder_combine_tanh_kernel(T* out, const T* b_out, int B, int H);

// The dot-score top layer's launches (step 2 above): decoder_cell_attention_kernel, then the combine when
// p.attn.splits > 1. `launch` as for attention_fwd_launch (attention.cuh).
template <typename T, typename Launch>
void decoder_cell_attention_launch(const DecoderStepParams<T>& p, int threads, Launch&& launch) {
  launch(&decoder_cell_attention_kernel<T>, p.cell.B * p.attn.splits, threads,
         attention_fwd_smem_bytes(p.cell.H, p.attn.M), p);
  if (p.attn.splits > 1) {
    launch(&attention_fwd_combine_kernel<T>, p.cell.B, threads, attention_combine_smem_bytes(p.attn.splits), p.attn);
  }
}

namespace decoder {

// The cell of unit j of row b: stores h', c' (and the copy) when `store`, returns h' as stored (rounded to T).
template <typename T>
FS2S_DEVICE float cell_unit(const DecoderCellParams<T>& p, int b, int j, bool store) {
  const int64_t H = p.H;
  const T* g = p.gates + static_cast<int64_t>(b) * 4 * H;
  float i, f, gg, o, c, h;
  lstm_cell_forward<float>(to_float(g[j]), to_float(g[H + j]), to_float(g[2 * H + j]), to_float(g[3 * H + j]),
                           to_float(p.c[b * H + j]), i, f, gg, o, c, h);
  const T h_t = from_float<T>(h);
  if (store) {
    p.h_new[b * H + j] = h_t;
    p.c_new[b * H + j] = from_float<T>(c);
    if (p.h_copy != nullptr) p.h_copy[b * p.ld_h_copy + j] = h_t;
  }
  return to_float(h_t);
}

}  // namespace decoder
}  // namespace fused_s2s::cuda
