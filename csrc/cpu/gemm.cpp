#include "gemm.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdlib>
#include <cstring>
#include <string_view>

namespace fused_s2s::cpu {
namespace {

using LinearPointwiseFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                     c10::string_view, c10::List<std::optional<c10::Scalar>>,
                                     std::optional<c10::string_view>);

// Looked up once: an internal op of torch's CPU backend, absent from builds without oneDNN.
const c10::TypedOperatorHandle<LinearPointwiseFn>* onednn_linear_op() {
  static const std::optional<c10::TypedOperatorHandle<LinearPointwiseFn>> op =
      []() -> std::optional<c10::TypedOperatorHandle<LinearPointwiseFn>> {
    const char* off = std::getenv("FUSED_S2S_DISABLE_ONEDNN");
    if (off != nullptr && std::strcmp(off, "1") == 0) return std::nullopt;
    auto handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    if (!handle.has_value()) return std::nullopt;
    return handle->typed<LinearPointwiseFn>();
  }();
  return op.has_value() ? &*op : nullptr;
}

using ReorderLinearWeightFn = at::Tensor(const at::Tensor&, std::optional<int64_t>);

const c10::TypedOperatorHandle<ReorderLinearWeightFn>* onednn_reorder_op() {
  static const std::optional<c10::TypedOperatorHandle<ReorderLinearWeightFn>> op =
      []() -> std::optional<c10::TypedOperatorHandle<ReorderLinearWeightFn>> {
    auto handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""});
    if (!handle.has_value()) return std::nullopt;
    return handle->typed<ReorderLinearWeightFn>();
  }();
  return op.has_value() ? &*op : nullptr;
}

}  // namespace

at::Tensor pack_weight(const at::Tensor& w, int64_t rows) {
  if (!onednn_linear_available(w.scalar_type()) || onednn_reorder_op() == nullptr || w.numel() == 0) return w;
  return onednn_reorder_op()->call(w.contiguous(), rows);
}

bool onednn_linear_available(at::ScalarType dtype) {
  return dtype == at::kFloat && onednn_linear_op() != nullptr;
}

at::Tensor fast_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  if (w.is_mkldnn() || (onednn_linear_available(x.scalar_type()) && x.size(0) > 0)) {
    return onednn_linear_op()->call(x, w, bias, "none", c10::List<std::optional<c10::Scalar>>(), "");
  }
  return at::linear(x, w, bias);
}

}  // namespace fused_s2s::cpu
