// Schema and CPU binding of the fused decoder step (fake kernel and dispatch: fused_s2s/ops/decoder_step.py).
#include <torch/library.h>

#include "cpu/decoder_step.h"

TORCH_LIBRARY_FRAGMENT(fused_s2s, m) {
  m.def(
      "decoder_step(Tensor x, Tensor? feed, Tensor h, Tensor c, Tensor[] w_cat, Tensor?[] b_cat, str score, "
      "Tensor keys, float scale, Tensor? w_query, Tensor? b_query, Tensor? v, Tensor memory, Tensor? lengths, "
      "Tensor w_out, Tensor? b_out) -> (Tensor out, Tensor h_new, Tensor c_new, Tensor attn)");
}

TORCH_LIBRARY_IMPL(fused_s2s, CPU, m) { m.impl("decoder_step", &fused_s2s::cpu::decoder_step); }
