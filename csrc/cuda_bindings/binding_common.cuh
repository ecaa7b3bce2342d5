// What the attention and decoder-step bindings share: the launch callable that attention.cuh's and
// decoder_step.cuh's launch sequences call, the device limits their plans need, the storage-type switch and the
// lengths check. Torch headers: include only from csrc/cuda_bindings/*.cu (built with a CUDA torch, and compiled
// against torch's headers by cuda_compile_check on CPU machines). Only c10/cuda headers, as lstm_cuda.cu
// explains (ATen/cuda pulls in cuBLAS headers the CPU machines' toolkit lacks).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <cstddef>
#include <optional>
#include <tuple>

#include "cuda/cuda_compat.cuh"

namespace fused_s2s::cuda::binding {

// The current device's SM count and opt-in shared memory per block (attention_plan's inputs).
struct DeviceLimits {
  int index = 0;
  int sm_count = 0;
  int max_smem_per_cta = 0;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
};

inline DeviceLimits current_device_limits() {
  DeviceLimits d;
  d.index = c10::cuda::current_device();
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, d.index));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.max_smem_per_cta, cudaDevAttrMaxSharedMemoryPerBlockOptin, d.index));
  return d;
}

// The `launch(kernel, grid, threads, smem_bytes, params)` of attention_fwd_launch, attention_bwd_launch and
// decoder_cell_attention_launch: one kernel on the current stream, with its error checked. Above the 48 KB
// default the kernel's dynamic shared-memory limit is raised to the device's opt-in limit (not to this launch's
// size: a call from another host thread with a smaller shape could otherwise lower it between this call's
// attribute and its launch; lstm_cuda.cu does the same).
struct StreamLaunch {
  cudaStream_t stream;
  int max_smem_per_cta;

  // Any kernel signature: the arguments are converted to the kernel's parameter types and passed by address.
  template <typename... KArgs, typename... Args>
  void operator()(void (*kernel)(KArgs...), int grid, int threads, std::size_t smem_bytes, const Args&... args) const {
    static_assert(sizeof...(KArgs) == sizeof...(Args), "launch: argument count differs from the kernel's");
    if (grid <= 0) return;
    TORCH_CHECK(smem_bytes <= static_cast<std::size_t>(max_smem_per_cta), "fused_s2s CUDA launch: ", smem_bytes,
                " bytes of shared memory per block, the device allows ", max_smem_per_cta);
    if (smem_bytes > 48 * 1024)
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem_per_cta));
    std::tuple<KArgs...> values(args...);
    std::apply(
        [&](auto&... v) {
          void* addresses[] = {static_cast<void*>(&v)...};
          C10_CUDA_CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(kernel), dim3(static_cast<unsigned>(grid)),
                                          dim3(static_cast<unsigned>(threads)), addresses, smem_bytes, stream));
        },
        values);
  }
};

inline StreamLaunch current_stream_launch(const DeviceLimits& dev) {
  return StreamLaunch{c10::cuda::getCurrentCUDAStream().stream(), dev.max_smem_per_cta};
}

// Calls f with a value of the storage type: float, __nv_bfloat16 or __half (the kernels' T).
template <typename F>
void dispatch_storage(at::ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    case at::kHalf: f(__half{}); break;
    default: TORCH_CHECK(false, op, ": the CUDA kernels take float32, bfloat16 or float16, got ", dtype);
  }
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}
template <typename T>
const T* cptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}

// lengths [B] as int64 on `device` (the kernels' layout), checked to lie in [1, S]: read directly when they
// are on the CPU (no device sync), else a queued device-side assert (torch._assert_async), as
// fused_s2s/lengths_check.py does on a GPU. The kernels trust them: a length past S would read past the keys.
inline std::optional<at::Tensor> device_lengths(const std::optional<at::Tensor>& lengths, int64_t B, int64_t S,
                                                const at::Device& device, const char* op) {
  if (!lengths.has_value()) return std::nullopt;
  TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B, op, ": memory_lengths must be [", B, "], got ",
              lengths->sizes());
  TORCH_CHECK(at::isIntegralType(lengths->scalar_type(), /*includeBool=*/false), op,
              ": memory_lengths must be an integer tensor, got ", lengths->scalar_type());
  TORCH_CHECK(lengths->device().is_cpu() || lengths->device() == device, op,
              ": memory_lengths must be on the CPU or on the inputs' device (", device, "), got ", lengths->device());
  if (lengths->device().is_cpu()) {
    if (B > 0) {
      const at::Tensor l = lengths->to(at::kLong);
      const int64_t lo = l.min().item<int64_t>(), hi = l.max().item<int64_t>();
      TORCH_CHECK(lo >= 1 && hi <= S, op, ": every memory length must be in [1, ", S, "], got values in [", lo, ", ",
                  hi, "]");
    }
    return lengths->to(device, at::kLong).contiguous();
  }
  at::Tensor l = lengths->to(at::kLong).contiguous();
  if (B > 0) at::_assert_async(((l >= 1) & (l <= S)).all(), "every memory length must be in [1, S]");
  return l;
}

}  // namespace fused_s2s::cuda::binding
