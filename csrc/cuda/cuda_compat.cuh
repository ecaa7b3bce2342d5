// The one header that lets a kernel source compile both under nvcc and as plain C++20 for the CPU harness.
//
// Under nvcc it is a thin layer over the CUDA runtime: cooperative groups for the grid barrier, cuda_bf16.h /
// cuda_fp16.h for the 16-bit storage types, `extern __shared__` for dynamic shared memory.
//
// With FS2S_CPU_HARNESS defined (g++ -std=c++20), it defines what CUDA provides, so the same kernel text runs
// on the CPU: every CUDA thread of a launch is a std::thread; threadIdx/blockIdx/blockDim/gridDim are
// thread-locals; __syncthreads() is a std::barrier per block; fs2s_grid_sync() is a std::barrier over every
// thread of the grid; warp shuffles go through a per-warp array plus a 32-thread barrier; atomics are
// std::atomic_ref; dynamic shared memory is one heap buffer per block (exactly shmem_bytes long, so ASan
// catches an index past it, and filled with 0xFF bytes, so a float read before it is written is NaN).
//
// What the harness cannot model, so a harness pass says nothing about it:
//   - timing, throughput, occupancy, co-residency of a cooperative grid, register or shared-memory limits;
//   - weak memory ordering: std::barrier is a full synchronisation point and x86 is strongly ordered, so a
//     missing fence, a read through a non-coherent cache (L1, ld.global.nc) or a missing __syncwarp between
//     lanes never shows here;
//   - lock-step warp execution: lanes of a warp run as independent threads, meeting only in the shuffle and
//     fragment-exchange barriers; divergence inside those is a deadlock here, not undefined behaviour;
//   - hardware arithmetic: mma accumulation order, fast-math intrinsics, FMA contraction differ from the GPU.
// Constraints it does impose: 1-D blocks whose size is a multiple of 32; shuffles with the full mask; no
// static __shared__ arrays (take shared memory through fs2s_dynamic_smem, the one accessor).
#pragma once

#include <cstdint>
#include <cstring>

#if !defined(FS2S_CPU_HARNESS)
// ------------------------------------------------------------------------------------------------------------
// nvcc
// ------------------------------------------------------------------------------------------------------------
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define FS2S_DEVICE __device__ __forceinline__

// Every thread of the grid waits here. The kernel must be launched with cudaLaunchCooperativeKernel (which
// checks that the grid is co-resident); nvcc 13 compiles grid_group::sync() without -rdc.
FS2S_DEVICE void fs2s_grid_sync() { cooperative_groups::this_grid().sync(); }

// The block's dynamic shared memory (the launch's shmem_bytes), 16-byte aligned.
template <typename T>
FS2S_DEVICE T* fs2s_dynamic_smem() {
  extern __shared__ __align__(16) unsigned char fs2s_smem_bytes[];
  return reinterpret_cast<T*>(fs2s_smem_bytes);
}

FS2S_DEVICE int fs2s_lane_id() { return static_cast<int>(threadIdx.x & 31u); }

// A value another CTA wrote before the last grid barrier: read through L2 (ld.global.cg), never through the
// non-coherent L1 / read-only path.
FS2S_DEVICE float fs2s_load_shared_global(const float* p) { return __ldcg(p); }

#else
// ------------------------------------------------------------------------------------------------------------
// CPU harness
// ------------------------------------------------------------------------------------------------------------
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define FS2S_DEVICE inline
// __shared__ is deliberately left undefined: a static __shared__ array would be per thread here, so the
// harness refuses to compile one. Use fs2s_dynamic_smem.

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace fused_s2s::harness {

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda_compat harness: %s\n", what);
  std::abort();
}

// One warp's meeting point: shuffles and fragment exchanges write here, meet at the barrier, read, meet again.
struct Warp {
  std::barrier<> bar{32};
  uint64_t shfl[32];
  uint32_t gather[32][8];
};

struct Block {
  explicit Block(unsigned threads, std::size_t shmem_bytes)
      : bar(threads), smem(new unsigned char[shmem_bytes > 0 ? shmem_bytes : 1]), warps(threads / 32) {
    std::memset(smem.get(), 0xFF, shmem_bytes);  // unwritten floats read as NaN
  }
  std::barrier<> bar;
  std::unique_ptr<unsigned char[]> smem;
  std::vector<Warp> warps;
};

struct ThreadState {
  Block* block = nullptr;
  Warp* warp = nullptr;
  std::barrier<>* grid = nullptr;
};
inline thread_local ThreadState tls;

}  // namespace fused_s2s::harness

inline void __syncthreads() { fused_s2s::harness::tls.block->bar.arrive_and_wait(); }
inline void fs2s_grid_sync() { fused_s2s::harness::tls.grid->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
T* fs2s_dynamic_smem() {
  return reinterpret_cast<T*>(fused_s2s::harness::tls.block->smem.get());
}

inline int fs2s_lane_id() { return static_cast<int>(threadIdx.x & 31u); }
inline float fs2s_load_shared_global(const float* p) { return *p; }

namespace fused_s2s::harness {
// Every lane publishes `value`, then reads lane src's: the body of the shuffles.
template <typename T>
T warp_exchange(unsigned mask, T value, int src) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 64 bits");
  if (mask != 0xffffffffu) fail("shuffle with a partial mask: the harness models full-warp shuffles only");
  Warp& w = *tls.warp;
  const int lane = fs2s_lane_id();
  std::memcpy(&w.shfl[lane], &value, sizeof(T));
  w.bar.arrive_and_wait();
  T out;
  std::memcpy(&out, &w.shfl[src & 31], sizeof(T));
  w.bar.arrive_and_wait();  // nobody overwrites a slot before every lane has read
  return out;
}

// Every lane publishes n <= 8 words; all_words[l * 8 + i] is lane l's word i. For the mma fragments' scalar
// body, which needs the whole warp's fragments (one exchange instead of 6 x 32 shuffles).
inline void warp_allgather(const uint32_t* words, int n, uint32_t (*all_words)[8]) {
  Warp& w = *tls.warp;
  const int lane = fs2s_lane_id();
  std::memcpy(w.gather[lane], words, sizeof(uint32_t) * n);
  w.bar.arrive_and_wait();
  std::memcpy(all_words, w.gather, sizeof(w.gather));
  w.bar.arrive_and_wait();
}
}  // namespace fused_s2s::harness

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  const int base = fs2s_lane_id() & ~(width - 1);
  return fused_s2s::harness::warp_exchange(mask, var, base + (src_lane & (width - 1)));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  const int lane = fs2s_lane_id();
  const int base = lane & ~(width - 1);
  return fused_s2s::harness::warp_exchange(mask, var, base + ((lane ^ lane_mask) & (width - 1)));
}

template <typename T>
T atomicAdd(T* address, T val) {
  return std::atomic_ref<T>(*address).fetch_add(val);
}
template <typename T>
T atomicExch(T* address, T val) {
  return std::atomic_ref<T>(*address).exchange(val);
}
template <typename T>
T atomicCAS(T* address, T compare, T val) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, val);
  return compare;  // the old value either way
}

// 16-bit storage types: the bits only, converted with round-to-nearest-even like __float2bfloat16_rn and
// __float2half_rn.
struct __nv_bfloat16 {
  uint16_t bits;
};
struct __half {
  uint16_t bits;
};

namespace fused_s2s::harness {
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t u = float_bits(f);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN, sign kept
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

// F. Giesen's float -> half with round-to-nearest-even (subnormals through a float add that rounds for us).
inline uint16_t float_to_half_bits(float f) {
  uint32_t u = float_bits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint16_t out;
  if (u >= (143u << 23)) {  // >= 65536 (or inf/NaN): inf, or a quiet NaN
    out = u > (255u << 23) ? 0x7E00 : 0x7C00;
  } else if (u < (113u << 23)) {  // below 2^-14: a half subnormal or zero
    const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    out = static_cast<uint16_t>(float_bits(bits_float(u) + bits_float(denorm_magic)) - denorm_magic);
  } else {
    const uint32_t mant_odd = (u >> 13) & 1u;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu + mant_odd;
    out = static_cast<uint16_t>(u >> 13);  // a carry past 65504 lands on 0x7C00 (inf), as it should
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}
inline float half_bits_to_float(uint16_t h) {
  const float sign = (h & 0x8000u) ? -1.0f : 1.0f;
  const int exp = (h >> 10) & 0x1F;
  const int mant = h & 0x3FF;
  if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -24);
  if (exp == 31) return mant ? bits_float(0x7FC00000u | (h & 0x8000u ? 0x80000000u : 0u)) : sign * INFINITY;
  return sign * std::ldexp(static_cast<float>(mant | 0x400), exp - 25);
}

// Runs fn() on every thread of a grid x block launch (1-D blocks, blockDim a multiple of 32) and returns when
// all have finished. A thread that returns early drops out of its block's, warp's and the grid's barriers,
// as an exited CUDA thread stops counting.
template <typename Fn>
void launch(dim3 grid, dim3 block, std::size_t shmem_bytes, Fn fn) {
  if (block.y != 1 || block.z != 1 || grid.y != 1 || grid.z != 1) fail("only 1-D grids and blocks are modelled");
  if (block.x == 0 || block.x % 32 != 0) fail("blockDim.x must be a positive multiple of 32");
  const unsigned total = grid.x * block.x;
  std::barrier<> grid_bar(total);
  std::vector<std::unique_ptr<Block>> blocks;
  for (unsigned b = 0; b < grid.x; ++b) blocks.push_back(std::make_unique<Block>(block.x, shmem_bytes));
  std::vector<std::thread> threads;
  threads.reserve(total);
  for (unsigned b = 0; b < grid.x; ++b) {
    for (unsigned t = 0; t < block.x; ++t) {
      threads.emplace_back([&, b, t] {
        threadIdx = dim3(t);
        blockIdx = dim3(b);
        blockDim = block;
        gridDim = grid;
        Block* blk = blocks[b].get();
        tls = ThreadState{blk, &blk->warps[t / 32], &grid_bar};
        fn();
        tls.warp->bar.arrive_and_drop();
        blk->bar.arrive_and_drop();
        grid_bar.arrive_and_drop();
      });
    }
  }
  for (auto& th : threads) th.join();
}
}  // namespace fused_s2s::harness

#endif  // FS2S_CPU_HARNESS

// ------------------------------------------------------------------------------------------------------------
// Both: conversions between the storage types and float, and their raw bits (for packing mma fragments).
// ------------------------------------------------------------------------------------------------------------
namespace fused_s2s::cuda {

#if !defined(FS2S_CPU_HARNESS)
FS2S_DEVICE float to_float(float v) { return v; }
FS2S_DEVICE float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
FS2S_DEVICE float to_float(__half v) { return __half2float(v); }

template <typename S>
FS2S_DEVICE S from_float(float v);
template <>
FS2S_DEVICE float from_float<float>(float v) { return v; }
template <>
FS2S_DEVICE __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
FS2S_DEVICE __half from_float<__half>(float v) { return __float2half_rn(v); }
#else
inline float to_float(float v) { return v; }
inline float to_float(__nv_bfloat16 v) { return harness::bf16_bits_to_float(v.bits); }
inline float to_float(__half v) { return harness::half_bits_to_float(v.bits); }

template <typename S>
S from_float(float v);
template <>
inline float from_float<float>(float v) { return v; }
template <>
inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __nv_bfloat16{harness::float_to_bf16_bits(v)}; }
template <>
inline __half from_float<__half>(float v) { return __half{harness::float_to_half_bits(v)}; }
#endif

}  // namespace fused_s2s::cuda
