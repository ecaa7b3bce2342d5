// Schema, CPU binding and autograd rule of the fused decoder step (fake kernel and dispatch:
// fused_s2s/ops/decoder_step.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "cpu/decoder_step.h"

namespace {

using StepOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The step is inference only. With grad mode on and any input that requires grad it raises, rather than
// return outputs with no graph (torch would only warn). Registered in C++, not with
// torch.library.register_autograd: a Python autograd kernel costs ~17 us per call, a tenth of a B1 step.
StepOutputs decoder_step_autograd(
    const at::Tensor& x, const std::optional<at::Tensor>& feed, const at::Tensor& h, const at::Tensor& c,
    at::TensorList w_cat, const c10::List<std::optional<at::Tensor>>& b_cat, c10::string_view score,
    const at::Tensor& keys, double scale, const std::optional<at::Tensor>& w_query,
    const std::optional<at::Tensor>& b_query, const std::optional<at::Tensor>& v, const at::Tensor& memory,
    const std::optional<at::Tensor>& lengths, const at::Tensor& w_out, const std::optional<at::Tensor>& b_out) {
  if (at::GradMode::is_enabled()) {
    auto needs = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->defined() && t->requires_grad(); };
    bool any = needs(x) || needs(feed) || needs(h) || needs(c) || needs(keys) || needs(w_query) || needs(b_query) ||
               needs(v) || needs(memory) || needs(w_out) || needs(b_out);
    for (const at::Tensor& w : w_cat) any = any || w.requires_grad();
    for (const std::optional<at::Tensor>& b : b_cat) any = any || needs(b);
    TORCH_CHECK(!any, "fused_s2s::decoder_step is inference only (no autograd formula); run it under "
                "torch.no_grad(), or train through FusedDecoder.forward or backend='reference'");
  }
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fused_s2s::decoder_step", "")
                             .typed<decltype(fused_s2s::cpu::decoder_step)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, feed, h, c, w_cat, b_cat, score, keys, scale, w_query, b_query, v, memory, lengths, w_out, b_out);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_s2s, m) {
  m.def(
      "decoder_step(Tensor x, Tensor? feed, Tensor h, Tensor c, Tensor[] w_cat, Tensor?[] b_cat, str score, "
      "Tensor keys, float scale, Tensor? w_query, Tensor? b_query, Tensor? v, Tensor memory, Tensor? lengths, "
      "Tensor w_out, Tensor? b_out) -> (Tensor out, Tensor h_new, Tensor c_new, Tensor attn)");
}

TORCH_LIBRARY_IMPL(fused_s2s, CPU, m) { m.impl("decoder_step", &fused_s2s::cpu::decoder_step); }

TORCH_LIBRARY_IMPL(fused_s2s, Autograd, m) { m.impl("decoder_step", &decoder_step_autograd); }
