// Schemas and CPU bindings of the fused attention ops (fake kernels, autograd and dispatch:
// fused_s2s/ops/attention.py).
#include <torch/library.h>

#include "cpu/attention.h"

TORCH_LIBRARY_FRAGMENT(fused_s2s, m) {
  m.def(
      "attention_fwd(Tensor query, Tensor keys, Tensor values, Tensor? lengths, Tensor? v, float scale, "
      "bool return_weights) -> (Tensor context, Tensor lse, Tensor weights)");
  m.def(
      "attention_bwd(Tensor d_context, Tensor query, Tensor keys, Tensor values, Tensor? lengths, Tensor? v, "
      "float scale, Tensor context, Tensor lse) -> (Tensor d_query, Tensor d_keys, Tensor d_values, Tensor d_v)");
}

TORCH_LIBRARY_IMPL(fused_s2s, CPU, m) {
  m.impl("attention_fwd", &fused_s2s::cpu::attention_fwd);
  m.impl("attention_bwd", &fused_s2s::cpu::attention_bwd);
}
