// The harness' C entry points (harness_api.h): argument checks, then the kernels through harness::launch.
// Built only with -DFS2S_CPU_HARNESS (g++ -std=c++20), linked with csrc/cuda/lstm_persistent.cu compiled as C++.
#include "harness_api.h"

#include <cstdio>
#include <cstring>
#include <vector>

#include "../lstm_persistent.cuh"
#include "../mma_fragments.cuh"

namespace fs2s = fused_s2s::cuda;
using fused_s2s::harness::launch;

namespace {

int bad(const char* what) {
  std::fprintf(stderr, "fs2s harness: %s\n", what);
  return 1;
}

bool shape_ok(int T, int B, int H, int units_per_cta, int threads) {
  return T >= 0 && B >= 1 && H >= 1 && units_per_cta >= 1 && threads >= 32 && threads % 32 == 0;
}

// Calls f(S*) with a null pointer of the storage type named by dtype; 1 for an unknown code.
template <typename F>
int with_dtype(int dtype, F f) {
  switch (dtype) {
    case FS2S_HARNESS_F32: f(static_cast<float*>(nullptr)); return 0;
    case FS2S_HARNESS_BF16: f(static_cast<__nv_bfloat16*>(nullptr)); return 0;
    case FS2S_HARNESS_F16: f(static_cast<__half*>(nullptr)); return 0;
    default: return bad("dtype must be 0 (float), 1 (bf16) or 2 (fp16)");
  }
}

// The test's own tiled product through the fragment helpers, straight from global memory: one warp per
// 16x8 output tile.
template <typename S>
void mma_tiles_kernel(const S* a, const S* bt, float* c, int M, int N, int K) {
  const int warp = static_cast<int>(threadIdx.x / 32), warps = static_cast<int>(blockDim.x / 32);
  const int n_tiles = N / 8;
  for (int tile = warp; tile < (M / 16) * n_tiles; tile += warps) {
    const int m0 = (tile / n_tiles) * 16, n0 = (tile % n_tiles) * 8;
    fs2s::FragC acc{{0.0f, 0.0f, 0.0f, 0.0f}};
    for (int k0 = 0; k0 < K; k0 += 16) {
      acc = fs2s::mma_16x8x16<S>(fs2s::load_a_frag(a + m0 * K + k0, K), fs2s::load_b_frag(bt + n0 * K + k0, K), acc);
    }
    fs2s::store_c_frag(c + m0 * N + n0, N, acc);
  }
}

}  // namespace

extern "C" int fs2s_harness_lstm_fwd(int dtype, const float* gx, const void* w_hh, const float* h0, const float* c0,
                                     const int64_t* lengths, float* y, float* h_n, float* c_n, float* gates,
                                     float* c, int T, int B, int H, int units_per_cta, int threads, int reverse) {
  if (!shape_ok(T, B, H, units_per_cta, threads)) return bad("fwd: bad T, B, H, units_per_cta or threads");
  std::vector<float> h_buf(2 * static_cast<size_t>(B) * H);  // exactly [2, B, H]: ASan sees an overrun
  const fs2s::LstmPersistentFwdParams p{gx,    w_hh, h0, c0,          lengths, y,      h_n, c_n,
                                        gates, c,    h_buf.data(), T, B,       H,      units_per_cta,
                                        reverse};
  const dim3 grid((H + units_per_cta - 1) / units_per_cta), block(threads);
  return with_dtype(dtype, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    const size_t smem = fs2s::persistent_smem_layout(false, B, H, units_per_cta, sizeof(S)).bytes;
    launch(grid, block, smem, [&] { fs2s::lstm_persistent_fwd_kernel<S>(p); });
  });
}

extern "C" int fs2s_harness_lstm_bwd(int dtype, const float* dy, const float* dh_n, const float* dc_n,
                                     const float* gates, const float* c, const float* c0, const void* w_hh,
                                     const int64_t* lengths, float* dgates, float* dh0, float* dc0, int T, int B,
                                     int H, int units_per_cta, int threads, int reverse) {
  if (!shape_ok(T, B, H, units_per_cta, threads)) return bad("bwd: bad T, B, H, units_per_cta or threads");
  const fs2s::LstmPersistentBwdParams p{dy,     dh_n, dc_n, gates, c, c0, w_hh, lengths, dgates, dh0, dc0, T, B, H,
                                        units_per_cta, reverse};
  const dim3 grid((H + units_per_cta - 1) / units_per_cta), block(threads);
  return with_dtype(dtype, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    const size_t smem = fs2s::persistent_smem_layout(true, B, H, units_per_cta, sizeof(S)).bytes;
    launch(grid, block, smem, [&] { fs2s::lstm_persistent_bwd_kernel<S>(p); });
  });
}

extern "C" int fs2s_harness_mma(int dtype, const void* a, const void* bt, float* c, int M, int N, int K,
                                int threads) {
  if (M <= 0 || N <= 0 || K <= 0 || M % 16 || N % 8 || K % 16) return bad("mma: M, N, K must be multiples of 16, 8, 16");
  if (threads < 32 || threads % 32) return bad("mma: threads must be a multiple of 32");
  if (dtype == FS2S_HARNESS_F32) return bad("mma: dtype must be 1 (bf16) or 2 (fp16)");
  return with_dtype(dtype, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    if constexpr (sizeof(S) == 2) {
      launch(dim3(1), dim3(threads), 0,
             [&] { mma_tiles_kernel<S>(static_cast<const S*>(a), static_cast<const S*>(bt), c, M, N, K); });
    }
  });
}

extern "C" int fs2s_harness_fragment_layout(int* out) {
  for (int lane = 0; lane < 32; ++lane) {
    int* o = out + lane * 32;
    for (int i = 0; i < 8; ++i) {
      o[2 * i] = fs2s::frag_a_row(lane, i);
      o[2 * i + 1] = fs2s::frag_a_col(lane, i);
    }
    for (int i = 0; i < 4; ++i) {
      o[16 + 2 * i] = fs2s::frag_b_k(lane, i);
      o[16 + 2 * i + 1] = fs2s::frag_b_n(lane, i);
      o[24 + 2 * i] = fs2s::frag_c_row(lane, i);
      o[24 + 2 * i + 1] = fs2s::frag_c_col(lane, i);
    }
  }
  return 0;
}

extern "C" int fs2s_harness_round(int dtype, const float* x, float* out, int64_t n) {
  return with_dtype(dtype, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    for (int64_t i = 0; i < n; ++i) out[i] = fs2s::to_float(fs2s::from_float<S>(x[i]));
  });
}

extern "C" int fs2s_harness_plan(int backward, int B, int H, int elem_bytes, int sm_count,
                                 long long max_smem_per_cta, int threads, int* units_per_cta, int* grid,
                                 long long* smem_bytes, char* reason, int reason_len) {
  const fs2s::LstmPersistentPlan plan = fs2s::lstm_persistent_plan(
      backward != 0, B, H, elem_bytes, sm_count, static_cast<size_t>(max_smem_per_cta), threads);
  *units_per_cta = plan.units_per_cta;
  *grid = plan.grid;
  *smem_bytes = static_cast<long long>(plan.smem_bytes);
  if (reason_len > 0) {
    std::strncpy(reason, plan.reason.c_str(), static_cast<size_t>(reason_len) - 1);
    reason[reason_len - 1] = '\0';
  }
  return 0;
}

extern "C" int fs2s_harness_compat_selftest(int* out) {
  int counter = 0;
  for (int i = 0; i < 128 * 3; ++i) out[i] = -1;
  launch(dim3(2), dim3(64), 0, [&] {
    if (blockIdx.x == 1 && threadIdx.x >= 32) return;
    const int g = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    int sum = g;
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    const int lane3 = __shfl_sync(0xffffffffu, g, 3);
    atomicAdd(&counter, 1);
    __syncthreads();
    fs2s_grid_sync();
    out[g * 3] = sum;
    out[g * 3 + 1] = lane3;
    out[g * 3 + 2] = std::atomic_ref<int>(counter).load();
  });
  return 0;
}

extern "C" int fs2s_harness_oob_selftest(void) {
  volatile float sink = 0.0f;
  launch(dim3(1), dim3(32), 32 * sizeof(float), [&] {
    const float* smem = fs2s_dynamic_smem<float>();
    if (threadIdx.x == 0) sink = sink + smem[32];  // one past the end
  });
  return 0;  // not reached under ASan
}
