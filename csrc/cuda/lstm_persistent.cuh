// Persistent LSTM recurrence kernels: one layer, one direction, every time step in one cooperative launch.
//
// The input projection gx = x·W_ihᵀ + b_ih + b_hh (all steps at once) and the weight and input gradients
// (dW_ih, dW_hh, db, dx from dgates) are large GEMMs the caller runs outside these kernels; only the
// sequential part is here. proj_size is not supported (the op layer falls back to another backend).
//
// Work split: CTA j owns hidden units [j·U, min((j+1)·U, H)) (U = units_per_cta, the last slice may be short)
// and keeps its slice of W_hh in shared memory for the whole sequence:
//   forward:  the 4 gate rows of its units, W_hh[g·H + u, :] (4U x H), and each step computes
//             h_{t-1}·W_hh_sliceᵀ for all B rows, adds gx, runs the cell, writes h_t to a global double buffer;
//   backward: the columns of its units, W_hh[:, u] (4H x U), and each step computes
//             dh_rec[:, u] = dgates_{t+1}·W_hh[:, u], runs the cell backward, writes dgates_t.
// One grid barrier per step: it publishes h_t (forward) or dgates_t (backward) to every CTA.
// bf16/fp16 W_hh: the per-step product runs on tensor cores (mma.m16n8k16, fp32 accumulate) with the other
// operand (h or dgates) rounded to the same 16-bit type, as a 16-bit cuBLAS GEMM would; fp32 W_hh: FMA.
// The cell state, gates and every output stay fp32.
//
// Launch (the binding's job): cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
// plan.smem_bytes), then cudaLaunchCooperativeKernel(kernel, plan.grid, plan.threads, args, plan.smem_bytes,
// stream): the grid must be co-resident (one CTA per SM) or the barrier deadlocks; the cooperative launch
// refuses a grid that is not. The plan below picks U and says when a shape does not fit.
//
// Lengths (as fused_s2s.reference.lstm.lstm_layer): row b is active at step t iff t < lengths[b], in both
// directions. An inactive step keeps the row's h and c, writes y = 0, saved gates = 0 and saved c = the kept
// c (so the backward's c_{t-1} is always the saved c of the forward's previous step, or c0), and in backward
// writes dgates = 0 and passes dh and dc through unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "cuda_compat.cuh"
#include "fused_s2s/lstm_cell.h"

namespace fused_s2s::cuda {

// All tensors are contiguous and on the device; sizes are T steps, B batch rows, H hidden units.
struct LstmPersistentFwdParams {
  const float* gx;          // [T, B, 4H] x·W_ihᵀ + b_ih + b_hh, gate order i, f, g, o
  const void* w_hh;         // [4H, H] in the storage type S of the kernel (float, bf16 or half)
  const float* h0;          // [B, H]
  const float* c0;          // [B, H]
  const int64_t* lengths;   // [B], each in [1, T], or nullptr (every row runs T steps)
  float* y;                 // [T, B, H] out (0 where a row is inactive)
  float* h_n;               // [B, H] out
  float* c_n;               // [B, H] out
  float* gates;             // [T, B, 4H] out, activated i, f, g, o (saved for backward)
  float* c;                 // [T, B, H] out, c_t (saved for backward)
  float* h_buf;             // [2, B, H] workspace: h_t exchanged between CTAs, double-buffered
  int T, B, H;
  int units_per_cta;        // U, from the plan
  int reverse;              // 0: t = 0 .. T-1; 1: t = T-1 .. 0
};

struct LstmPersistentBwdParams {
  const float* dy;          // [T, B, H] or nullptr (no output gradient)
  const float* dh_n;        // [B, H]
  const float* dc_n;        // [B, H]
  const float* gates;       // [T, B, 4H] the forward's saved activated gates
  const float* c;           // [T, B, H] the forward's saved c
  const float* c0;          // [B, H]
  const void* w_hh;         // [4H, H] in the storage type S
  const int64_t* lengths;   // [B] or nullptr, as in forward
  float* dgates;            // [T, B, 4H] out: gradients of the gate pre-activations (i, f, g, o)
  float* dh0;               // [B, H] out
  float* dc0;               // [B, H] out
  int T, B, H;
  int units_per_cta;        // U, from the plan
  int reverse;              // the forward's direction
};

// S: float, __nv_bfloat16 or __half (the storage type of W_hh). blockDim.x: a multiple of 32;
// gridDim.x = ceil(H / units_per_cta); dynamic shared memory: persistent_smem_layout(...).bytes.
template <typename S>
__global__ void lstm_persistent_fwd_kernel(LstmPersistentFwdParams p);
template <typename S>
__global__ void lstm_persistent_bwd_kernel(LstmPersistentBwdParams p);

// ------------------------------------------------------------------------------------------------------------
// Shared-memory layout of one CTA, computed the same way by the kernels and the host plan.
// ------------------------------------------------------------------------------------------------------------
FS2S_HD int round_up(int x, int m) { return (x + m - 1) / m * m; }
FS2S_HD std::size_t align16(std::size_t x) { return (x + 15) / 16 * 16; }

struct PersistentSmem {
  int rows;              // weight rows held: forward 4U (row g·U + u is gate g of unit u), backward U
  int k;                 // reduction length: forward H, backward 4H
  int n;                 // batch rows B
  int ld;                // leading dimension (elements) of the weight and operand tiles
  std::size_t w_off;     // S [rows][ld]     the W_hh slice (zero past the real rows and k)
  std::size_t x_off;     // S [n][ld]        this step's operand: h_{t-1} (fwd) or dgates_{t+1} (bwd)
  std::size_t acc_off;   // float [rows][n]  the product, rows x batch
  std::size_t state_off; // float [B][U]     c (fwd); then dh, dc (bwd): state carried across steps
  std::size_t bytes;
};

// elem_bytes 2 (bf16/fp16): rows, k and n are padded to the mma tile (16, 16, 8) with zeros, and ld has 8
// extra elements so the 8 rows a fragment load touches fall in different banks. elem_bytes 4: no padding
// but one extra float per row.
FS2S_HD PersistentSmem persistent_smem_layout(bool backward, int B, int H, int U, int elem_bytes) {
  const bool mma = elem_bytes == 2;
  PersistentSmem L{};
  L.rows = round_up(backward ? U : 4 * U, mma ? 16 : 1);
  L.k = round_up(backward ? 4 * H : H, mma ? 16 : 1);
  L.n = round_up(B, mma ? 8 : 1);
  L.ld = L.k + (mma ? 8 : 1);
  L.w_off = 0;
  L.x_off = align16(L.w_off + static_cast<std::size_t>(L.rows) * L.ld * elem_bytes);
  L.acc_off = align16(L.x_off + static_cast<std::size_t>(L.n) * L.ld * elem_bytes);
  L.state_off = align16(L.acc_off + static_cast<std::size_t>(L.rows) * L.n * sizeof(float));
  L.bytes = L.state_off + static_cast<std::size_t>(backward ? 2 : 1) * B * U * sizeof(float);
  return L;
}

// ------------------------------------------------------------------------------------------------------------
// Host-side plan: slice size, grid and shared memory for a shape on a device, or why it does not fit.
// ------------------------------------------------------------------------------------------------------------
struct LstmPersistentPlan {
  int units_per_cta = 0;        // U
  int grid = 0;                 // CTAs, ceil(H / U), at most one per SM
  int threads = 0;              // blockDim.x
  std::size_t smem_bytes = 0;   // dynamic shared memory per CTA
  std::string reason;           // empty when the kernel can run this shape; else why the launcher falls back
  bool fits() const { return reason.empty(); }
};

// backward: plan lstm_persistent_bwd_kernel (else the forward). elem_bytes: sizeof(S), 4 or 2.
// sm_count: cudaDevAttrMultiProcessorCount. max_smem_per_cta: cudaDevAttrMaxSharedMemoryPerBlockOptin (one
// CTA per SM, so this is the SM's shared memory less what the runtime reserves). threads: blockDim.x.
// U is the smallest multiple of 4 that gives at most one CTA per SM: the most CTAs (so the least work per
// step on each) and the least shared memory per CTA.
inline LstmPersistentPlan lstm_persistent_plan(bool backward, int B, int H, int elem_bytes, int sm_count,
                                               std::size_t max_smem_per_cta, int threads = 256) {
  LstmPersistentPlan plan;
  plan.threads = threads;
  if (B < 1 || H < 1) {
    plan.reason = "persistent LSTM: needs B >= 1 and H >= 1, got B=" + std::to_string(B) + " H=" + std::to_string(H);
    return plan;
  }
  if (elem_bytes != 2 && elem_bytes != 4) {
    plan.reason = "persistent LSTM: W_hh must be fp32, bf16 or fp16, got " + std::to_string(elem_bytes) + "-byte elements";
    return plan;
  }
  if (threads < 32 || threads % 32 != 0 || threads > 1024) {
    plan.reason = "persistent LSTM: threads must be a multiple of 32 in [32, 1024], got " + std::to_string(threads);
    return plan;
  }
  if (sm_count < 1) {
    plan.reason = "persistent LSTM: sm_count must be >= 1, got " + std::to_string(sm_count);
    return plan;
  }
  plan.units_per_cta = round_up((H + sm_count - 1) / sm_count, 4);
  plan.grid = (H + plan.units_per_cta - 1) / plan.units_per_cta;
  const PersistentSmem L = persistent_smem_layout(backward, B, H, plan.units_per_cta, elem_bytes);
  plan.smem_bytes = L.bytes;
  if (L.bytes > max_smem_per_cta) {
    plan.reason = std::string("persistent LSTM ") + (backward ? "backward" : "forward") + ": B=" + std::to_string(B) +
                  " H=" + std::to_string(H) + " needs " + std::to_string(L.bytes) +
                  " bytes of shared memory per CTA (W_hh slice " + std::to_string(L.x_off - L.w_off) +
                  ", step operand " + std::to_string(L.acc_off - L.x_off) + ", product and state " +
                  std::to_string(L.bytes - L.acc_off) + ") with " + std::to_string(plan.grid) + " CTAs of " +
                  std::to_string(plan.units_per_cta) + " units; the device allows " +
                  std::to_string(max_smem_per_cta);
  }
  return plan;
}

}  // namespace fused_s2s::cuda
