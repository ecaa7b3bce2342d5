// Definitions of layer_common.h's shared helpers.
#include "layer_common.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "gemm.h"
#include "lstm_kernels.h"
#include "weight_cache.h"

namespace fused_s2s::cpu {

namespace {
int64_t limit_from_env(int64_t fallback) {
  const char* env = std::getenv("FUSED_S2S_SMALL_BATCH");
  return env != nullptr ? std::atoll(env) : fallback;
}
}  // namespace

int64_t small_batch_limit() {
  static const int64_t limit = limit_from_env(8);
  return limit;
}

int64_t cell_small_batch_limit() {
  static const int64_t limit = limit_from_env(64);
  return limit;
}

bool use_fused_recurrence() {
  static const bool on = [] {
    const char* env = std::getenv("FUSED_S2S_FUSED_RECURRENCE");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return on;
}

at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  static const bool poison = [] {
    const char* env = std::getenv("FUSED_S2S_POISON_BUFFERS");
    return env != nullptr && std::strcmp(env, "1") == 0;
  }();
  at::Tensor t = at::empty(sizes, options);
  if (poison) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

StepWeight::StepWeight(const at::Tensor& w, int64_t rows, int64_t limit)
    : N(w.size(0)), K(w.size(1)), small(rows <= limit) {
  // Reused across calls while w is unchanged (weight_cache.h).
  if (!small) {
    packed = cached_packing(w, Packing::kOneDnn, rows, [&] { return pack_weight(w.contiguous(), rows); });
    return;
  }
  packed = cached_packing(w, Packing::kSmallGemm, 0, [&] {
    at::Tensor p;
    AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "fused_s2s_small_gemm_pack", [&] {
      const int64_t width = small_gemm_panel_width<scalar_t>();
      p = empty_buffer({(N + width - 1) / width, K, width}, w.options());
      small_gemm_pack<scalar_t>({w.data_ptr<scalar_t>(), w.stride(0), w.stride(1), p.data_ptr<scalar_t>(), N, K});
    });
    return p;
  });
}

at::Tensor input_projection(const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& bias) {
  if (!onednn_linear_available(x.scalar_type()) || x.size(0) == 0) return fast_linear(x, w_ih, bias);
  constexpr int64_t kRowsHint = 1024;  // oneDNN's layout for this many rows (the same for 64..4096)
  const at::Tensor packed =
      cached_packing(w_ih, Packing::kOneDnnProjection, 0, [&] { return pack_weight(w_ih.contiguous(), kRowsHint); });
  return fast_linear(x, packed, bias);
}

at::Tensor input_grad(const at::Tensor& dg, const at::Tensor& w_ih) { return at::mm(dg, w_ih); }

at::Tensor step_gemm(const at::Tensor& rows, const StepWeight& w) {
  const int64_t B = rows.size(0);
  if (!w.small) return fast_linear(rows, w.packed);
  at::Tensor out = empty_buffer({B, w.N}, rows.options());
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "fused_s2s_small_gemm", [&] {
    small_gemm<scalar_t>(
        {rows.data_ptr<scalar_t>(), w.packed.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B, w.N, w.K});
  });
  return out;
}

void keep_finished_rows(const at::Tensor& to, const at::Tensor& from, const uint8_t* mask) {
  if (mask == nullptr) return;
  const int64_t B = to.size(0), row_bytes = to.numel() / std::max<int64_t>(B, 1) * to.element_size();
  char* dst = static_cast<char*>(to.data_ptr());
  const char* src = static_cast<const char*>(from.data_ptr());
  for (int64_t b = 0; b < B; ++b)
    if (!mask[b]) std::memcpy(dst + b * row_bytes, src + b * row_bytes, row_bytes);
}

}  // namespace fused_s2s::cpu
