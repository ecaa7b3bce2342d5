// Persistent LSTM recurrence, forward and backward (design, shapes and launch in lstm_persistent.cuh).
//
// Per step, every CTA: (1) stages the step operand (h_{t-1} or dgates_{t+1}, written by all CTAs before the
// last grid barrier) into shared memory in the storage type; (2) multiplies it with its W_hh slice into an
// fp32 [rows x batch] product in shared memory; (3) runs the cell for its (row, unit) pairs; (4) waits at the
// grid barrier. Compiles under nvcc and, with FS2S_CPU_HARNESS, as C++20 for the CPU harness.
#include "lstm_persistent.cuh"
#include "mma_fragments.cuh"

#include <type_traits>

namespace fused_s2s::cuda {
namespace {

// C[m][n] = sum_k A[m][k] · Bt[n][k] over the whole block, for m < M, n < N (C row stride ldc).
// 16-bit S: tensor cores, one 16x8 output tile per warp at a time; M, N and K must be multiples of 16, 8, 16
// and the padding of A and Bt zero. float: one output per thread at a time, plain FMA.
template <typename S>
__device__ void block_gemm_nt(const S* a, const S* bt, int ld, float* c, int ldc, int M, int N, int K) {
  if constexpr (std::is_same_v<S, float>) {
    for (int idx = threadIdx.x; idx < M * N; idx += blockDim.x) {
      const int m = idx / N, n = idx % N;
      const float* ar = a + m * ld;
      const float* br = bt + n * ld;
      float acc = 0.0f;
      for (int k = 0; k < K; ++k) acc = fmaf(ar[k], br[k], acc);
      c[m * ldc + n] = acc;
    }
  } else {
    const int warp = static_cast<int>(threadIdx.x / 32), warps = static_cast<int>(blockDim.x / 32);
    const int n_tiles = N / 8;
    // The loop bounds depend only on the warp index, so all 32 lanes run every mma together.
    for (int tile = warp; tile < (M / 16) * n_tiles; tile += warps) {
      const int m0 = (tile / n_tiles) * 16, n0 = (tile % n_tiles) * 8;
      FragC acc{{0.0f, 0.0f, 0.0f, 0.0f}};
      for (int k0 = 0; k0 < K; k0 += 16) {
        const FragA fa = load_a_frag(a + m0 * ld + k0, ld);
        const FragB fb = load_b_frag(bt + n0 * ld + k0, ld);
        acc = mma_16x8x16<S>(fa, fb, acc);
      }
      store_c_frag(c + m0 * ldc + n0, ldc, acc);
    }
  }
}

// dst[r][k] (S, row stride ld) = src[r * ld_src + k] for r < rows, k < cols; zero for r < rows_pad,
// k < k_pad outside that. src was written by other CTAs before the last grid barrier.
// Each thread issues kLoadsInFlight independent L2 loads before it uses the first: with one load per
// iteration (load, convert, store) every element waited a full L2 round trip, which made staging the
// dominant cost of a step (B16 H768: 48 round trips per thread forward, 192 backward, each step); __ldcg is
// an `asm volatile`, so the compiler does not batch them itself. (r, k) advance by a precomputed step
// instead of a division per element. 8 loads fit __launch_bounds__(1024)'s 64 registers without spills
// (ptxas, sm_80 and sm_90); more would not.
template <typename S>
__device__ void stage_operand(S* dst, int ld, const float* src, int64_t ld_src, int rows, int cols, int rows_pad,
                              int k_pad) {
  constexpr int kLoadsInFlight = 8;
  const int stride = static_cast<int>(blockDim.x);
  const int dr = stride / k_pad, dk = stride % k_pad;  // idx += stride, as (r, k) with idx = r * k_pad + k
  int r = static_cast<int>(threadIdx.x) / k_pad, k = static_cast<int>(threadIdx.x) % k_pad;
  while (r < rows_pad) {  // r < rows_pad <=> idx < rows_pad * k_pad
    float v[kLoadsInFlight];
    int off[kLoadsInFlight];  // dst offset, or -1 past the end
    for (int i = 0; i < kLoadsInFlight; ++i) {
      off[i] = r < rows_pad ? r * ld + k : -1;
      v[i] = (r < rows && k < cols) ? fs2s_load_shared_global(src + r * ld_src + k) : 0.0f;
      r += dr;
      k += dk;
      if (k >= k_pad) {
        k -= k_pad;
        ++r;
      }
    }
    for (int i = 0; i < kLoadsInFlight; ++i)
      if (off[i] >= 0) dst[off[i]] = from_float<S>(v[i]);
  }
}

__device__ bool row_active(const int64_t* lengths, int b, int t) { return lengths == nullptr || t < lengths[b]; }

}  // namespace

template <typename S>
__global__ void __launch_bounds__(1024) lstm_persistent_fwd_kernel(LstmPersistentFwdParams p) {
  const int T = p.T, B = p.B, H = p.H, U = p.units_per_cta;
  const int64_t G = 4 * static_cast<int64_t>(H);  // gate row length of gx and gates
  const int j0 = static_cast<int>(blockIdx.x) * U;
  const int units = H - j0 < U ? H - j0 : U;  // the last slice may be short
  const PersistentSmem L = persistent_smem_layout(false, B, H, U, sizeof(S));
  unsigned char* smem = fs2s_dynamic_smem<unsigned char>();
  S* w_s = reinterpret_cast<S*>(smem + L.w_off);          // [L.rows][L.ld]: row g·U + u = W_hh[g·H + j0 + u, :]
  S* h_s = reinterpret_cast<S*>(smem + L.x_off);          // [L.n][L.ld]: h_{t-1}
  float* acc = reinterpret_cast<float*>(smem + L.acc_off);  // [L.rows][L.n]: h_{t-1}·W_sliceᵀ, transposed
  float* c_s = reinterpret_cast<float*>(smem + L.state_off);  // [B][U]: c of this CTA's units
  const S* w_hh = static_cast<const S*>(p.w_hh);

  for (int idx = threadIdx.x; idx < L.rows * L.k; idx += blockDim.x) {
    const int row = idx / L.k, k = idx % L.k;
    const int g = row / U, u = row % U;
    const bool real = g < 4 && u < units && k < H;
    w_s[row * L.ld + k] = real ? w_hh[(g * static_cast<int64_t>(H) + j0 + u) * H + k] : from_float<S>(0.0f);
  }
  for (int idx = threadIdx.x; idx < B * units; idx += blockDim.x) {
    const int b = idx / units, u = idx % units;
    c_s[b * U + u] = p.c0[static_cast<int64_t>(b) * H + j0 + u];
  }
  // No barrier needed here: the first __syncthreads of the loop orders the weight and c stores before use.

  const int64_t BH = static_cast<int64_t>(B) * H;
  for (int s = 0; s < T; ++s) {
    const int t = p.reverse ? T - 1 - s : s;
    const float* h_prev = s == 0 ? p.h0 : p.h_buf + (s & 1) * BH;
    float* h_next = p.h_buf + ((s + 1) & 1) * BH;

    stage_operand(h_s, L.ld, h_prev, H, B, H, L.n, L.k);
    __syncthreads();  // h_s (and at s = 0 the weights and c) written -> read by the product
    block_gemm_nt(w_s, h_s, L.ld, acc, L.n, L.rows, L.n, L.k);
    __syncthreads();  // acc written -> read by the cell

    for (int idx = threadIdx.x; idx < B * units; idx += blockDim.x) {
      const int b = idx / units, u = idx % units, j = j0 + u;
      const int64_t tb = static_cast<int64_t>(t) * B + b;
      float* gates = p.gates + tb * G;
      float& c_state = c_s[b * U + u];
      if (row_active(p.lengths, b, t)) {
        const float* gx = p.gx + tb * G;
        float i, f, g, o, c, h;
        lstm_cell_forward<float>(gx[j] + acc[(0 * U + u) * L.n + b], gx[H + j] + acc[(1 * U + u) * L.n + b],
                                 gx[2 * H + j] + acc[(2 * U + u) * L.n + b],
                                 gx[3 * H + j] + acc[(3 * U + u) * L.n + b], c_state, i, f, g, o, c, h);
        gates[j] = i;
        gates[H + j] = f;
        gates[2 * H + j] = g;
        gates[3 * H + j] = o;
        c_state = c;
        p.y[tb * H + j] = h;
        h_next[static_cast<int64_t>(b) * H + j] = h;
      } else {  // keep the row's state; outputs as documented in the header
        gates[j] = gates[H + j] = gates[2 * H + j] = gates[3 * H + j] = 0.0f;
        p.y[tb * H + j] = 0.0f;
        h_next[static_cast<int64_t>(b) * H + j] = fs2s_load_shared_global(h_prev + static_cast<int64_t>(b) * H + j);
      }
      p.c[tb * H + j] = c_state;
    }
    // Publishes h_next to every CTA (read at step s + 1). It also keeps h_s and acc from being overwritten
    // by step s + 1 while a slower thread of this CTA still reads them, and h_prev from being overwritten
    // (it becomes h_next of step s + 1) while another CTA still stages it.
    fs2s_grid_sync();
  }

  // The final h of this CTA's units was written by this CTA (h0 when T = 0); the last grid barrier ordered it.
  const float* h_last = T == 0 ? p.h0 : p.h_buf + (T & 1) * BH;
  if (T == 0) __syncthreads();  // c_s written above -> read below
  for (int idx = threadIdx.x; idx < B * units; idx += blockDim.x) {
    const int b = idx / units, u = idx % units;
    const int64_t bj = static_cast<int64_t>(b) * H + j0 + u;
    p.h_n[bj] = fs2s_load_shared_global(h_last + bj);
    p.c_n[bj] = c_s[b * U + u];
  }
}

template <typename S>
__global__ void __launch_bounds__(1024) lstm_persistent_bwd_kernel(LstmPersistentBwdParams p) {
  const int T = p.T, B = p.B, H = p.H, U = p.units_per_cta;
  const int64_t G = 4 * static_cast<int64_t>(H);
  const int j0 = static_cast<int>(blockIdx.x) * U;
  const int units = H - j0 < U ? H - j0 : U;
  const PersistentSmem L = persistent_smem_layout(true, B, H, U, sizeof(S));
  unsigned char* smem = fs2s_dynamic_smem<unsigned char>();
  S* wt_s = reinterpret_cast<S*>(smem + L.w_off);         // [L.rows][L.ld]: row u, col r = W_hh[r, j0 + u]
  S* dg_s = reinterpret_cast<S*>(smem + L.x_off);         // [L.n][L.ld]: dgates of the previously processed step
  float* acc = reinterpret_cast<float*>(smem + L.acc_off);  // [L.rows][L.n]: dh_rec, unit-major
  float* dh_s = reinterpret_cast<float*>(smem + L.state_off);  // [B][U]: dh reaching h_t from later steps
  float* dc_s = dh_s + B * U;                                   // [B][U]: dc reaching c_t from later steps
  const S* w_hh = static_cast<const S*>(p.w_hh);

  for (int idx = threadIdx.x; idx < L.rows * L.k; idx += blockDim.x) {
    const int u = idx / L.k, r = idx % L.k;
    const bool real = u < units && r < G;
    wt_s[u * L.ld + r] = real ? w_hh[static_cast<int64_t>(r) * H + j0 + u] : from_float<S>(0.0f);
  }
  for (int idx = threadIdx.x; idx < B * units; idx += blockDim.x) {
    const int b = idx / units, u = idx % units;
    const int64_t bj = static_cast<int64_t>(b) * H + j0 + u;
    dh_s[b * U + u] = p.dh_n[bj];
    dc_s[b * U + u] = p.dc_n[bj];
  }

  // Backward step s undoes forward step T-1-s: t runs T-1 .. 0 for a forward layer, 0 .. T-1 for a reverse one.
  // dh_rec of step s comes from dgates of step s-1 (time t_prev). Rows inactive at t_prev have dgates 0 there
  // and keep the dh they carried instead.
  for (int s = 0; s < T; ++s) {
    const int t = p.reverse ? s : T - 1 - s;
    const int t_prev = p.reverse ? t - 1 : t + 1;  // valid for s > 0
    if (s > 0) {
      stage_operand(dg_s, L.ld, p.dgates + static_cast<int64_t>(t_prev) * B * G, G, B, static_cast<int>(G), L.n,
                    L.k);
      __syncthreads();  // dg_s (and at s = 1 the weights) written -> read by the product
      block_gemm_nt(wt_s, dg_s, L.ld, acc, L.n, L.rows, L.n, L.k);
    }
    __syncthreads();  // acc (and at s = 0 dh_s, dc_s) written -> read by the cell

    for (int idx = threadIdx.x; idx < B * units; idx += blockDim.x) {
      const int b = idx / units, u = idx % units, j = j0 + u;
      const int64_t tb = static_cast<int64_t>(t) * B + b;
      float* dgates = p.dgates + tb * G;
      float dh = (s > 0 && row_active(p.lengths, b, t_prev)) ? acc[u * L.n + b] : dh_s[b * U + u];
      if (row_active(p.lengths, b, t)) {
        if (p.dy != nullptr) dh += p.dy[tb * H + j];
        // The forward step before t (t-1, or t+1 for reverse) saved c_{t-1}; c0 when t is the first step.
        const int t_fwd_prev = p.reverse ? t + 1 : t - 1;
        const bool first = p.reverse ? t_fwd_prev >= T : t_fwd_prev < 0;
        const float c_prev = first ? p.c0[static_cast<int64_t>(b) * H + j]
                                   : p.c[(static_cast<int64_t>(t_fwd_prev) * B + b) * H + j];
        const float* gates = p.gates + tb * G;
        float dc = dc_s[b * U + u];
        float dai, daf, dag, dao;
        lstm_cell_backward<float>(gates[j], gates[H + j], gates[2 * H + j], gates[3 * H + j], p.c[tb * H + j],
                                  c_prev, dh, dc, dai, daf, dag, dao);
        dgates[j] = dai;
        dgates[H + j] = daf;
        dgates[2 * H + j] = dag;
        dgates[3 * H + j] = dao;
        dc_s[b * U + u] = dc;
      } else {  // the forward kept the state here: dh and dc pass through
        dgates[j] = dgates[H + j] = dgates[2 * H + j] = dgates[3 * H + j] = 0.0f;
      }
      dh_s[b * U + u] = dh;  // the carried value for rows that stay inactive; replaced by acc otherwise
    }
    // Publishes dgates_t to every CTA (read at step s + 1); keeps dg_s and acc from being overwritten by step
    // s + 1 while a slower thread of this CTA still reads them.
    fs2s_grid_sync();
  }

  // dh0 = dgates of the last processed step · W_hh (rows active there), else the carried dh.
  const int t_last = p.reverse ? T - 1 : 0;
  if (T > 0) {
    stage_operand(dg_s, L.ld, p.dgates + static_cast<int64_t>(t_last) * B * G, G, B, static_cast<int>(G), L.n,
                  L.k);
    __syncthreads();  // dg_s written -> read by the product
    block_gemm_nt(wt_s, dg_s, L.ld, acc, L.n, L.rows, L.n, L.k);
  }
  __syncthreads();  // acc (and for T = 0 dh_s, dc_s) written -> read below
  for (int idx = threadIdx.x; idx < B * units; idx += blockDim.x) {
    const int b = idx / units, u = idx % units;
    const int64_t bj = static_cast<int64_t>(b) * H + j0 + u;
    p.dh0[bj] = (T > 0 && row_active(p.lengths, b, t_last)) ? acc[u * L.n + b] : dh_s[b * U + u];
    p.dc0[bj] = dc_s[b * U + u];
  }
}

template __global__ void lstm_persistent_fwd_kernel<float>(LstmPersistentFwdParams);
template __global__ void lstm_persistent_fwd_kernel<__nv_bfloat16>(LstmPersistentFwdParams);
template __global__ void lstm_persistent_fwd_kernel<__half>(LstmPersistentFwdParams);
template __global__ void lstm_persistent_bwd_kernel<float>(LstmPersistentBwdParams);
template __global__ void lstm_persistent_bwd_kernel<__nv_bfloat16>(LstmPersistentBwdParams);
template __global__ void lstm_persistent_bwd_kernel<__half>(LstmPersistentBwdParams);

}  // namespace fused_s2s::cuda
