// Which capability build (DEFAULT, AVX2, AVX512) of the kernel files compiled per CPU capability runs on this
// machine: ATen's own choice (at::get_cpu_capability(), which honours ATEN_CPU_CAPABILITY=default|avx2|avx512).
#pragma once

#include <ATen/Version.h>

#include <string>

namespace fused_s2s::cpu {

enum class Capability { kDefault, kAvx2, kAvx512 };

inline Capability capability() {
  static const Capability cap = [] {
    const std::string name = at::get_cpu_capability();
    if (name == "AVX512") return Capability::kAvx512;
    if (name == "AVX2") return Capability::kAvx2;
    return Capability::kDefault;
  }();
  return cap;
}

}  // namespace fused_s2s::cpu

// Calls NS::FN(ARGS) for the namespace NS (AVX512, AVX2, DEFAULT) of this machine's capability.
#define FS2S_DISPATCH(FN, ARGS)                                       \
  switch (::fused_s2s::cpu::capability()) {                           \
    case ::fused_s2s::cpu::Capability::kAvx512: return AVX512::FN(ARGS); \
    case ::fused_s2s::cpu::Capability::kAvx2: return AVX2::FN(ARGS);     \
    default: return DEFAULT::FN(ARGS);                                \
  }
