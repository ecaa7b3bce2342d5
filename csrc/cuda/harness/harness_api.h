// C entry points of the CPU harness: run the CUDA C++ kernels of csrc/cuda on the CPU through
// cuda_compat.cuh's launch (one std::thread per CUDA thread). Raw contiguous host pointers, shapes as in
// lstm_persistent.cuh. Every function returns 0, or 1 after printing why to stderr (bad arguments).
//
// dtype codes for the storage type of W_hh / the fragment operands: 0 float, 1 bf16, 2 fp16; 16-bit
// arrays are passed as their raw bits (torch's bfloat16/float16 tensor memory).
#pragma once

#include <cstdint>

extern "C" {

enum { FS2S_HARNESS_F32 = 0, FS2S_HARNESS_BF16 = 1, FS2S_HARNESS_F16 = 2 };

// lstm_persistent_fwd_kernel<S> on grid ceil(H / units_per_cta) x threads. lengths may be null.
// gx [T,B,4H], w_hh [4H,H] (dtype), h0 [B,H], c0 [B,H], lengths [B]; out y [T,B,H], h_n [B,H], c_n [B,H],
// gates [T,B,4H], c [T,B,H]. The [2,B,H] exchange buffer is allocated here.
int fs2s_harness_lstm_fwd(int dtype, const float* gx, const void* w_hh, const float* h0, const float* c0,
                          const int64_t* lengths, float* y, float* h_n, float* c_n, float* gates, float* c, int T,
                          int B, int H, int units_per_cta, int threads, int reverse);

// lstm_persistent_bwd_kernel<S>. dy and lengths may be null.
// dy [T,B,H], dh_n [B,H], dc_n [B,H], gates [T,B,4H], c [T,B,H], c0 [B,H], w_hh [4H,H] (dtype), lengths [B];
// out dgates [T,B,4H], dh0 [B,H], dc0 [B,H].
int fs2s_harness_lstm_bwd(int dtype, const float* dy, const float* dh_n, const float* dc_n, const float* gates,
                          const float* c, const float* c0, const void* w_hh, const int64_t* lengths, float* dgates,
                          float* dh0, float* dc0, int T, int B, int H, int units_per_cta, int threads, int reverse);

// c [M,N] = a [M,K] · bt [N,K]ᵀ through load_a_frag / load_b_frag / mma_16x8x16 / store_c_frag on one block
// (dtype 1 or 2; M, N, K multiples of 16, 8, 16).
int fs2s_harness_mma(int dtype, const void* a, const void* bt, float* c, int M, int N, int K, int threads);

// The fragment layout as the helpers compute it, out [32 lanes][16][2]: per lane A's 8 (row, col), then B's
// 4 (k, n), then C's 4 (row, col).
int fs2s_harness_fragment_layout(int* out);

// out[i] = to_float(from_float<S>(x[i])): the harness' 16-bit rounding (dtype 1 or 2).
int fs2s_harness_round(int dtype, const float* x, float* out, int64_t n);

// lstm_persistent_plan for a made-up device: units_per_cta, grid and smem_bytes out; reason (NUL-terminated,
// truncated to reason_len) empty when the shape fits.
int fs2s_harness_plan(int backward, int B, int H, int elem_bytes, int sm_count, long long max_smem_per_cta,
                      int threads, int* units_per_cta, int* grid, long long* smem_bytes, char* reason,
                      int reason_len);

// cuda_compat's own primitives on a 2 x 64 grid whose block 1, warp 1 returns at once (an exited warp
// must not hold up the barriers). For every other thread g = blockIdx.x * 64 + threadIdx.x, out [128, 3]:
// the sum of g over its warp (__shfl_xor_sync butterfly), lane 3's g (__shfl_sync), and after
// fs2s_grid_sync the value of a counter every running thread atomicAdd-ed 1 to (96). Exited threads: -1.
int fs2s_harness_compat_selftest(int* out);

// Reads one element past the block's shared memory: the sanitizer must stop the program (the tests check
// that the build catches an out-of-bounds index).
int fs2s_harness_oob_selftest(void);

}  // extern "C"

// ---- attention.cuh and decoder_step.cuh (attention_harness.cpp) ----------------------------------------------
// Storage-typed arrays (dtype) are void pointers; lse is fp32. Workspaces are allocated inside, exactly sized and
// NaN-filled (a read past or before a write shows). splits: CTAs per row, chunk = ceil(S / splits) (splits > S
// leaves splits with no positions, on purpose).
extern "C" {

// attention_fwd_kernel<S, additive> then, when splits > 1, attention_fwd_combine_kernel.
// query [B,Tq,D], keys [B,S,D], values [B,S,M], lengths [B] or null, v [D] (additive) or null;
// out context [B,Tq,M], lse [B,Tq] (float), weights [B,Tq,S] or null.
int fs2s_harness_attention_fwd(int dtype, int additive, const void* query, const void* keys, const void* values,
                               const int64_t* lengths, const void* v, float scale, void* context, float* lse,
                               void* weights, int B, int Tq, int S, int D, int M, int splits, int threads);

// attention_bwd_kernel<S, additive> then attention_bwd_reduce_kernel. d_context, context [B,Tq,M], lse [B,Tq];
// out d_query [B,Tq,D], d_keys [B,S,D], d_values [B,S,M], d_v [D] (additive) or null.
int fs2s_harness_attention_bwd(int dtype, int additive, const void* d_context, const void* query, const void* keys,
                               const void* values, const int64_t* lengths, const void* v, float scale,
                               const void* context, const float* lse, void* d_query, void* d_keys, void* d_values,
                               void* d_v, int B, int Tq, int S, int D, int M, int splits, int threads);

// decoder_lstm_cell_kernel<S> on `blocks` x `threads`: gates [B,4H], c [B,H]; out h_new, c_new [B,H], h_copy
// [B, ld_h_copy] (columns [0, H)) or null.
int fs2s_harness_decoder_cell(int dtype, const void* gates, const void* c, void* h_new, void* c_new, void* h_copy,
                              long long ld_h_copy, int B, int H, int blocks, int threads);

// decoder_cell_attention_kernel<S> then, when splits > 1, attention_fwd_combine_kernel. gates [B,4H], c [B,H],
// keys [B,S,H], values [B,S,M], lengths [B] or null; out h_new, c_new [B,H], ctx_h [B, M+H] (context, h'),
// weights [B,S] or null, lse [B] (float).
int fs2s_harness_decoder_step(int dtype, const void* gates, const void* c, const void* keys, const void* values,
                              const int64_t* lengths, float scale, void* h_new, void* c_new, void* ctx_h,
                              void* weights, float* lse, int B, int S, int H, int M, int splits, int threads);

// decoder_combine_tanh_kernel<S>: out [B,H] in place, b_out [H] or null.
int fs2s_harness_decoder_combine_tanh(int dtype, void* out, const void* b_out, int B, int H, int blocks,
                                      int threads);

// attention_plan: out ints [splits, chunk], sizes [fwd_smem, bwd_smem, fwd_ws_floats, bwd_ws_floats]; reason
// (NUL-terminated, truncated to reason_len) empty when the shape fits.
int fs2s_harness_attention_plan(int B, int Tq, int S, int D, int M, int sm_count, long long max_smem_per_cta,
                                int threads, int* ints, long long* sizes, char* reason, int reason_len);

// The harness program's commands for the functions above (attn_fwd, attn_bwd, dec_cell, dec_step, dec_tanh,
// attn_plan), with main.cpp's file conventions; returns -1 when `cmd` is none of them.
int fs2s_harness_attention_command(const char* cmd, const char* dir);

}  // extern "C"
