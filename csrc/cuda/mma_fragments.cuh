// Tensor-core fragments for mma.sync.aligned.m16n8k16 (bf16 or fp16 inputs, fp32 accumulate):
//   D[16x8] = A[16x16] · B[16x8] + C[16x8], one warp, every lane holding a fixed piece of each matrix.
//
// The per-lane layout is the PTX ISA's ("Matrix fragments for mma.m16n8k16 with floating point type"), with
// groupID = lane / 4 and tig = lane % 4 (threadID_in_group):
//   A (row-major 16x16, 4 x .b32 = 8 halves a0..a7):  row = groupID + 8 * ((i / 2) % 2)
//                                                     col = 2 * tig + (i % 2) + 8 * (i / 4)
//   B (16x8, "col": element (k, n) at n * ldb + k, 2 x .b32 = b0..b3):  k = 2 * tig + (i % 2) + 8 * (i / 2)
//                                                                     n = groupID
//   C, D (16x8 fp32, c0..c3):  row = groupID + 8 * (i / 2),  col = 2 * tig + (i % 2)
// Each .b32 register holds two consecutive elements, the lower-indexed one in the low 16 bits.
//
// On sm_80+ the mma is inline PTX. In the CPU harness the same fragments go through a scalar body that
// gathers the whole warp's registers and reassembles A and B through the ISA's layout read the other way
// (which lane and register hold element (row, k)); a mistake in a load's index arithmetic then gives a wrong
// product on the CPU too. Lanes must be converged (all 32 call each function together).
#pragma once

#include <type_traits>

#include "cuda_compat.cuh"

namespace fused_s2s::cuda {

struct FragA {
  uint32_t r[4];
};
struct FragB {
  uint32_t r[2];
};
struct FragC {
  float r[4];
};

// The ISA's layout as functions (used by the loads, the stores and the harness' scalar mma).
FS2S_DEVICE int frag_a_row(int lane, int i) { return (lane >> 2) + 8 * ((i >> 1) & 1); }
FS2S_DEVICE int frag_a_col(int lane, int i) { return 2 * (lane & 3) + (i & 1) + 8 * (i >> 2); }
FS2S_DEVICE int frag_b_k(int lane, int i) { return 2 * (lane & 3) + (i & 1) + 8 * (i >> 1); }
FS2S_DEVICE int frag_b_n(int lane, int /*i*/) { return lane >> 2; }
FS2S_DEVICE int frag_c_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
FS2S_DEVICE int frag_c_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }

// Two consecutive 16-bit elements (p 4-byte aligned) as one register.
template <typename S>
FS2S_DEVICE uint32_t load_pair(const S* p) {
  static_assert(sizeof(S) == 2, "mma fragments hold 16-bit elements");
#if defined(FS2S_CPU_HARNESS)
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
#else
  return *reinterpret_cast<const uint32_t*>(p);
#endif
}

// A 16x16 tile of a row-major matrix: element (row, k) at a[row * lda + k]; lda even, a 4-byte aligned.
template <typename S>
FS2S_DEVICE FragA load_a_frag(const S* a, int lda) {
  const int lane = fs2s_lane_id();
  FragA f;
  for (int reg = 0; reg < 4; ++reg) {  // register reg holds elements 2*reg and 2*reg + 1
    f.r[reg] = load_pair(a + frag_a_row(lane, 2 * reg) * lda + frag_a_col(lane, 2 * reg));
  }
  return f;
}

// A 16x8 (K x N) tile stored N-major: element (k, n) at bt[n * ldb + k] (an [N, K] row-major matrix, as
// h[b, k] is); ldb even, bt 4-byte aligned.
template <typename S>
FS2S_DEVICE FragB load_b_frag(const S* bt, int ldb) {
  const int lane = fs2s_lane_id();
  FragB f;
  for (int reg = 0; reg < 2; ++reg) {
    f.r[reg] = load_pair(bt + frag_b_n(lane, 2 * reg) * ldb + frag_b_k(lane, 2 * reg));
  }
  return f;
}

// The 16x8 fp32 tile into a row-major matrix: element (row, n) to c[row * ldc + n].
FS2S_DEVICE void store_c_frag(float* c, int ldc, const FragC& f) {
  const int lane = fs2s_lane_id();
  for (int i = 0; i < 4; ++i) c[frag_c_row(lane, i) * ldc + frag_c_col(lane, i)] = f.r[i];
}

#if defined(FS2S_CPU_HARNESS)
namespace harness_detail {
inline float half_of(uint32_t reg, int i, __nv_bfloat16*) {
  return harness::bf16_bits_to_float(static_cast<uint16_t>(i & 1 ? reg >> 16 : reg & 0xFFFFu));
}
inline float half_of(uint32_t reg, int i, __half*) {
  return harness::half_bits_to_float(static_cast<uint16_t>(i & 1 ? reg >> 16 : reg & 0xFFFFu));
}
}  // namespace harness_detail
#endif

// d = a · b + c for bf16 or fp16 a, b (S picks the PTX type), fp32 c and d.
template <typename S>
FS2S_DEVICE FragC mma_16x8x16(const FragA& a, const FragB& b, const FragC& c) {
  static_assert(sizeof(S) == 2, "mma_16x8x16 takes bf16 or fp16 inputs");
  FragC d;
#if defined(FS2S_CPU_HARNESS)
  // Reassemble A and B from the whole warp's registers: A(row, k) lives in the lane and register that
  // frag_a_row/col map to (row, k), i.e. lane = 4 * (row % 8) + (k % 8) / 2, element
  // i = k % 2 + 2 * (row / 8) + 4 * (k / 8); B(k, n) in lane 4 * n + (k % 8) / 2, element k % 2 + 2 * (k / 8).
  uint32_t all_a[32][8], all_b[32][8];
  harness::warp_allgather(a.r, 4, all_a);
  harness::warp_allgather(b.r, 2, all_b);
  const int lane = fs2s_lane_id();
  for (int i = 0; i < 4; ++i) {
    const int row = frag_c_row(lane, i), n = frag_c_col(lane, i);
    float acc = c.r[i];
    for (int k = 0; k < 16; ++k) {
      const int ai = k % 2 + 2 * (row / 8) + 4 * (k / 8);
      const int bi = k % 2 + 2 * (k / 8);
      const float av = harness_detail::half_of(all_a[4 * (row % 8) + (k % 8) / 2][ai / 2], ai, static_cast<S*>(nullptr));
      const float bv = harness_detail::half_of(all_b[4 * n + (k % 8) / 2][bi / 2], bi, static_cast<S*>(nullptr));
      acc += av * bv;  // a product of two 16-bit values is exact in fp32
    }
    d.r[i] = acc;
  }
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<S, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d.r[0]), "=f"(d.r[1]), "=f"(d.r[2]), "=f"(d.r[3])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]), "f"(c.r[0]), "f"(c.r[1]),
          "f"(c.r[2]), "f"(c.r[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d.r[0]), "=f"(d.r[1]), "=f"(d.r[2]), "=f"(d.r[3])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]), "f"(c.r[0]), "f"(c.r[1]),
          "f"(c.r[2]), "f"(c.r[3]));
  }
#else
  // Host pass of nvcc, or a device target below sm_80 (not built): no tensor cores.
  (void)a;
  (void)b;
  d = c;
  __trap();
#endif
  return d;
}

}  // namespace fused_s2s::cuda
