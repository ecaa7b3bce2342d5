// What every recurrent layer driver on the CPU shares (lstm_layer.cpp, cell_layer.cpp): buffers the kernels
// fill, the per-step recurrent GEMM with its weight packed once per call, and the lengths as row masks.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace fused_s2s::cpu {

// Up to this many rows the LSTM's step-by-step path uses small_gemm (lstm_kernels.cpp): a GEMM library's
// per-call cost (~10 µs) is larger than the arithmetic of a few rows. FUSED_S2S_SMALL_BATCH overrides it.
int64_t small_batch_limit();

// The same limit for the GRU/RNN layers' step GEMM, whose N is 3H or H rather than 4H: measured here
// (T100 H256), small_gemm beat oneDNN up to B64 (RNN forward B16: 3.5 against 6.0 ms). FUSED_S2S_SMALL_BATCH
// overrides it too.
int64_t cell_small_batch_limit();

// The fused recurrences (lstm_recurrence.cpp for LSTM layers without projection, cell_recurrence.cpp for the
// GRU and Elman RNN forward) run unless FUSED_S2S_FUSED_RECURRENCE=0, which selects the step-by-step path
// (GEMM library + pointwise pass) instead, for comparison and for the tests of that path.
bool use_fused_recurrence();

// A new tensor for a kernel to fill. Under FUSED_S2S_POISON_BUFFERS=1 (set by the tests) it starts as NaN,
// so an element that a kernel forgets to write shows up in the results instead of passing by luck.
at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& options);

// A weight w [N, K] used by every step, packed once per call: into small_gemm's panels for at most `limit`
// rows, into oneDNN's layout otherwise.
struct StepWeight {
  int64_t N, K;
  bool small;  // small_gemm's panels (else oneDNN's layout)
  at::Tensor packed;
  StepWeight(const at::Tensor& w, int64_t rows, int64_t limit = small_batch_limit());
};

// x [M, I]·w_ihᵀ (+ bias): a layer's input projection for all its steps (or a chunk of them). On the oneDNN
// path w_ih is reordered into oneDNN's blocked layout once and reused across calls (weight_cache.h): a plain
// weight is reordered inside every call, 7-12% of the GEMM here (M = 64..3200, I = 256..512; the layout
// packed for any M in that range ran as fast at every other).
at::Tensor input_projection(const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& bias);

// dG [M, G]·w_ih [G, I]: a layer's input gradient, as one GEMM on w_ih as it is (no transposed copy of w_ih
// per call; at::mm ran this as fast as oneDNN on the copy, which cost 0.17 ms at H256, 0.9 ms at H512).
at::Tensor input_grad(const at::Tensor& dg, const at::Tensor& w_ih);

// rows·wᵀ for the recurrent step, into a new [B, N] tensor.
at::Tensor step_gemm(const at::Tensor& rows, const StepWeight& w);

// The lengths as contiguous int64 on the CPU, where the kernels read them (nullptr: every row has T steps).
struct CpuLengths {
  at::Tensor values;
  explicit CpuLengths(const std::optional<at::Tensor>& lengths)
      : values(lengths.has_value() ? lengths->to(at::kCPU, at::kLong).contiguous() : at::Tensor()) {}
  const int64_t* data() const { return values.defined() ? values.data_ptr<int64_t>() : nullptr; }
};

// Per-step activity of each sequence, from the lengths tensor.
struct ActiveRows {
  std::vector<int64_t> lengths;  // empty: every sequence has every step
  std::vector<uint8_t> mask;

  ActiveRows(const std::optional<at::Tensor>& lengths_opt, int64_t B) {
    if (!lengths_opt.has_value()) return;
    at::Tensor l = lengths_opt->to(at::kCPU, at::kLong).contiguous();
    lengths.assign(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + B);
    mask.resize(B);
  }
  // The mask for step t, or nullptr when every row is active at t.
  const uint8_t* at_step(int64_t t) {
    if (lengths.empty()) return nullptr;
    bool all = true;
    for (size_t b = 0; b < lengths.size(); ++b) {
      mask[b] = t < lengths[b];
      all = all && mask[b];
    }
    return all ? nullptr : mask.data();
  }
};

// Rows b with !mask[b] (sequences past their end at this step) of `from` [B, N] copied into `to` [B, N]: such
// a step passes the state gradient through unchanged. No-op for a null mask (every row active).
void keep_finished_rows(const at::Tensor& to, const at::Tensor& from, const uint8_t* mask);

}  // namespace fused_s2s::cpu
