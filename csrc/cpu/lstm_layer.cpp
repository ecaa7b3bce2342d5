// One LSTM layer, one direction, on the CPU: forward and backward drivers.
//
// Forward: the input projection for all steps is one GEMM (biases folded in); each step is one GEMM
// h·W_hhᵀ and one fused pointwise pass (lstm_kernels.cpp), plus the projection GEMM when proj_size > 0.
// Backward: a reverse loop of fused pointwise gate gradients and one GEMM dG·W_hh per step, then dX, dW_ih,
// dW_hh, the bias and dW_hr as large GEMMs over all steps.
//
// Lengths: sequence b is active at step t iff t < lengths[b]; an inactive step keeps b's state and writes
// y[t, b] = 0, so h_n, c_n come from the last valid step (pad_packed_sequence's semantics).
#include "lstm_layer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "gemm.h"
#include "layer_common.h"
#include "lstm_bf16_layer.h"
#include "lstm_kernels.h"
#include "weight_cache.h"

namespace fused_s2s::cpu {
namespace {

// W_hh [4H, H] or W_ih [4H, I] packed into gate-interleaved panels for fused_recurrence (reused across calls:
// weight_cache.h).
template <typename scalar_t>
at::Tensor gate_panels(const at::Tensor& w) {
  return cached_packing(w, Packing::kGatePanels, 0, [&] {
    const int64_t H = w.size(0) / 4, K = w.size(1);
    const int64_t width = small_gemm_panel_width<scalar_t>(), units = width / 4;
    at::Tensor panels = empty_buffer({(H + units - 1) / units, K, width}, w.options());
    small_gemm_pack<scalar_t>(
        {w.data_ptr<scalar_t>(), w.stride(0), w.stride(1), panels.data_ptr<scalar_t>(), 4 * H, K, H});
    return panels;
  });
}

// Whether the fused recurrence also computes the input projection (FusedRecurrenceArgs::x): on unless
// FUSED_S2S_FUSED_PROJECTION=0, which restores the oneDNN projection ahead of the recurrence (for A/B runs
// and its tests); never for I = 0, where there is nothing to project.
bool fused_projection(int64_t I) {
  static const bool on = [] {
    const char* env = std::getenv("FUSED_S2S_FUSED_PROJECTION");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return on && I > 0;
}

void check_inputs(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
                  const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
                  const std::optional<at::Tensor>& lengths) {
  TORCH_CHECK(x.dim() == 3, "lstm_layer: x must be [T, B, I], got ", x.sizes());
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % 4 == 0 && w_ih.size(1) == I, "lstm_layer: w_ih must be [4H, ", I,
              "], got ", w_ih.sizes());
  const int64_t H = w_ih.size(0) / 4;
  const int64_t P = w_hr.has_value() ? w_hr->size(0) : H;
  TORCH_CHECK(w_hh.sizes() == at::IntArrayRef({4 * H, P}), "lstm_layer: w_hh must be [", 4 * H, ", ", P, "], got ",
              w_hh.sizes());
  if (w_hr.has_value())
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == H, "lstm_layer: w_hr must be [P, ", H, "], got ", w_hr->sizes());
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({B, P}), "lstm_layer: h0 must be [", B, ", ", P, "], got ", h0.sizes());
  TORCH_CHECK(c0.sizes() == at::IntArrayRef({B, H}), "lstm_layer: c0 must be [", B, ", ", H, "], got ", c0.sizes());
  if (x.scalar_type() == at::kBFloat16) {  // the native bf16 kernel (lstm_bf16_layer.h)
    TORCH_CHECK(bf16_native_enabled(), "lstm_layer: bf16 on the CPU needs the native bf16 kernel, which is off "
                "here (fused_s2s.ops.lstm_layer runs bf16 through the fp32 kernel instead)");
    TORCH_CHECK(!w_hr.has_value(), "lstm_layer: the native bf16 kernel has no projection (proj_size)");
    TORCH_CHECK(T > 0, "lstm_layer: the native bf16 kernel needs at least one step");
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                "lstm_layer: the CPU kernel takes float32, float64 or (natively, where supported) bfloat16, got ",
                x.scalar_type());
  }
  TORCH_CHECK(H > 0, "lstm_layer: hidden_size must be greater than zero");
  std::vector<const at::Tensor*> tensors = {&h0, &c0, &w_ih, &w_hh};
  if (w_hr.has_value()) tensors.push_back(&*w_hr);
  for (const at::Tensor* t : tensors)
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(),
                "lstm_layer: every tensor must match x's dtype and device (", x.scalar_type(), ", ", x.device(),
                "), got ", t->scalar_type(), ", ", t->device());
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B, "lstm_layer: lengths must be [", B, "], got ",
                lengths->sizes());
    TORCH_CHECK(at::isIntegralType(lengths->scalar_type(), /*includeBool=*/false),
                "lstm_layer: lengths must be an integer tensor, got ", lengths->scalar_type());
    at::Tensor l = lengths->to(at::kCPU, at::kLong).contiguous();
    const int64_t* lp = l.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK(lp[b] >= 1 && lp[b] <= T, "lstm_layer: every length must be in [1, ", T, "], got lengths[", b,
                  "] = ", lp[b]);
  }
}

void check_biases(const at::Tensor& x, int64_t H, const std::optional<at::Tensor>& b_ih,
                  const std::optional<at::Tensor>& b_hh) {
  for (const std::optional<at::Tensor>* b : {&b_ih, &b_hh})
    if (b->has_value())
      TORCH_CHECK((*b)->dim() == 1 && (*b)->size(0) == 4 * H && (*b)->scalar_type() == x.scalar_type() &&
                      (*b)->device() == x.device(),
                  "lstm_layer: biases must be [", 4 * H, "] of x's dtype and device, got ", (*b)->sizes(), " ",
                  (*b)->scalar_type(), " on ", (*b)->device());
}

std::optional<at::Tensor> combined_bias(const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  if (b_ih.has_value() && b_hh.has_value()) return *b_ih + *b_hh;
  if (b_ih.has_value()) return b_ih->contiguous();
  if (b_hh.has_value()) return b_hh->contiguous();
  return std::nullopt;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_fwd(
    const at::Tensor& x_in, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih_in,
    const at::Tensor& w_hh_in, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr_in, const std::optional<at::Tensor>& lengths, bool reverse) {
  check_inputs(x_in, h0, c0, w_ih_in, w_hh_in, w_hr_in, lengths);
  check_biases(x_in, w_ih_in.size(0) / 4, b_ih, b_hh);
  if (x_in.scalar_type() == at::kBFloat16)
    return lstm_bf16_fwd(x_in, h0, c0, w_ih_in, w_hh_in, b_ih, b_hh, lengths, reverse, /*save=*/true);
  const at::Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const std::optional<at::Tensor> w_hr =
      w_hr_in.has_value() ? std::optional<at::Tensor>(w_hr_in->contiguous()) : std::nullopt;
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_ih.size(0) / 4;
  const int64_t P = w_hr.has_value() ? w_hr->size(0) : H;

  at::Tensor y = empty_buffer({T, B, P}, x.options());
  at::Tensor cells = empty_buffer({T, B, H}, x.options());
  const std::optional<at::Tensor> bias = combined_bias(b_ih, b_hh);
  if (!w_hr.has_value() && use_fused_recurrence()) {
    const bool project = fused_projection(I);
    // gates: the activated i, f, g, o of every step; without `project` it first holds x_t·W_ihᵀ + biases
    at::Tensor gates = project ? empty_buffer({T, B, 4 * H}, x.options())
                               : input_projection(x.view({T * B, I}), w_ih, bias).view({T, B, 4 * H});
    at::Tensor h_buf = empty_buffer({2, B, H}, x.options());
    h_buf[0].copy_(h0);
    at::Tensor c_state = c0.contiguous().clone();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_lstm_fwd", [&] {
      const at::Tensor panels = gate_panels<scalar_t>(w_hh);
      const at::Tensor ih_panels = project ? gate_panels<scalar_t>(w_ih) : at::Tensor();
      const CpuLengths lengths_cpu(lengths);
      fused_recurrence<scalar_t>({panels.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), cells.data_ptr<scalar_t>(),
                                  y.data_ptr<scalar_t>(), h_buf.data_ptr<scalar_t>(), c_state.data_ptr<scalar_t>(),
                                  lengths_cpu.data(), T, B, H, reverse, 0,
                                  project ? x.data_ptr<scalar_t>() : nullptr,
                                  project ? ih_panels.data_ptr<scalar_t>() : nullptr,
                                  project && bias ? bias->data_ptr<scalar_t>() : nullptr, I});
    });
    return {y, h_buf[T % 2].clone(), c_state, gates, cells};
  }
  // gates[t] holds x_t·W_ihᵀ + b_ih + b_hh, then (after step t) the activated i, f, g, o.
  at::Tensor gates = input_projection(x.view({T * B, I}), w_ih, bias).view({T, B, 4 * H});
  at::Tensor h_state = h0.contiguous().clone();
  at::Tensor c_state = c0.contiguous().clone();
  at::Tensor h_raw = w_hr.has_value() ? empty_buffer({B, H}, x.options()) : h_state;
  ActiveRows active(lengths, B);
  const StepWeight w_hh_step(w_hh, B);
  const std::optional<StepWeight> w_hr_step =
      w_hr.has_value() ? std::optional<StepWeight>(StepWeight(*w_hr, B)) : std::nullopt;

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_lstm_fwd", [&] {
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const uint8_t* mask = active.at_step(t);
      const at::Tensor rec = step_gemm(h_state, w_hh_step);
      fwd_pointwise<scalar_t>({gates[t].data_ptr<scalar_t>(), rec.data_ptr<scalar_t>(), c_state.data_ptr<scalar_t>(),
                               cells[t].data_ptr<scalar_t>(), h_raw.data_ptr<scalar_t>(),
                               w_hr.has_value() ? nullptr : y[t].data_ptr<scalar_t>(), mask, B, H});
      if (w_hr.has_value()) {
        const at::Tensor r = step_gemm(h_raw, *w_hr_step);  // [B, P]
        scalar_t* y_t = y[t].data_ptr<scalar_t>();
        scalar_t* h_s = h_state.data_ptr<scalar_t>();
        const scalar_t* r_p = r.data_ptr<scalar_t>();
        for (int64_t b = 0; b < B; ++b) {
          if (mask == nullptr || mask[b]) {
            std::memcpy(y_t + b * P, r_p + b * P, P * sizeof(scalar_t));
            std::memcpy(h_s + b * P, r_p + b * P, P * sizeof(scalar_t));
          } else {
            std::memset(y_t + b * P, 0, P * sizeof(scalar_t));
          }
        }
      }
    }
  });
  return {y, h_state, c_state, gates, cells};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer_infer(
    const at::Tensor& x_in, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih_in,
    const at::Tensor& w_hh_in, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& lengths, bool reverse) {
  if (w_hr.has_value() || !use_fused_recurrence() || x_in.dim() != 3 || x_in.size(0) == 0) {
    auto [y, h_n, c_n, gates, cells] = lstm_layer_fwd(x_in, h0, c0, w_ih_in, w_hh_in, b_ih, b_hh, w_hr, lengths, reverse);
    return {y, h_n, c_n};
  }
  check_inputs(x_in, h0, c0, w_ih_in, w_hh_in, w_hr, lengths);
  check_biases(x_in, w_ih_in.size(0) / 4, b_ih, b_hh);
  if (x_in.scalar_type() == at::kBFloat16) {
    auto [y, h_n, c_n, gates, cells] =
        lstm_bf16_fwd(x_in, h0, c0, w_ih_in, w_hh_in, b_ih, b_hh, lengths, reverse, /*save=*/false);
    return {y, h_n, c_n};
  }
  const at::Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_ih.size(0) / 4;
  const std::optional<at::Tensor> bias = combined_bias(b_ih, b_hh);
  at::Tensor y = empty_buffer({T, B, H}, x.options());
  at::Tensor h_buf = empty_buffer({2, B, H}, x.options());
  h_buf[0].copy_(h0);
  at::Tensor c_state = c0.contiguous().clone();
  const CpuLengths lengths_cpu(lengths);
  if (fused_projection(I)) {  // the projection inside the recurrence; nothing saved
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_lstm_infer", [&] {
      const at::Tensor panels = gate_panels<scalar_t>(w_hh), ih_panels = gate_panels<scalar_t>(w_ih);
      fused_recurrence<scalar_t>({panels.data_ptr<scalar_t>(), nullptr, nullptr, y.data_ptr<scalar_t>(),
                                  h_buf.data_ptr<scalar_t>(), c_state.data_ptr<scalar_t>(), lengths_cpu.data(), T, B,
                                  H, reverse, 0, x.data_ptr<scalar_t>(), ih_panels.data_ptr<scalar_t>(),
                                  bias ? bias->data_ptr<scalar_t>() : nullptr, I});
    });
    return {y, h_buf[T % 2].clone(), c_state};
  }
  // Nothing is saved for backward, so the input projection is computed a chunk of steps at a time into
  // one small buffer (about 512 rows: still an efficient GEMM, and it stays in cache for the recurrence)
  // instead of a [T, B, 4H] tensor whose fresh pages cost more than the GEMM gains.
  const int64_t chunk = std::min(T, std::max<int64_t>(2, (512 / std::max<int64_t>(B, 1) + 1) / 2 * 2));
  at::Tensor cells = empty_buffer({chunk, B, H}, x.options());  // written by the kernel, not kept
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_lstm_infer", [&] {
    const at::Tensor panels = gate_panels<scalar_t>(w_hh);
    for (int64_t done = 0; done < T; done += chunk) {
      const int64_t n = std::min(chunk, T - done);
      const int64_t t0 = reverse ? T - done - n : done;  // first time index of this chunk
      at::Tensor gates = input_projection(x.narrow(0, t0, n).view({n * B, I}), w_ih, bias);
      fused_recurrence<scalar_t>({panels.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), cells.data_ptr<scalar_t>(),
                                  y[t0].data_ptr<scalar_t>(), h_buf.data_ptr<scalar_t>(), c_state.data_ptr<scalar_t>(),
                                  lengths_cpu.data(), n, B, H, reverse,
                                  t0});
      if (n % 2 == 1) h_buf[0].copy_(h_buf[1]);  // the next chunk starts from h_buf[0]
    }
  });
  return {y, h_buf[0].clone(), c_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_bwd(
    const at::Tensor& dy_in, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& x_in,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih_in, const at::Tensor& w_hh_in,
    const std::optional<at::Tensor>& w_hr_in, const std::optional<at::Tensor>& lengths, bool reverse,
    const at::Tensor& y, const at::Tensor& gates, const at::Tensor& cells, bool need_dx, bool need_dw) {
  check_inputs(x_in, h0, c0, w_ih_in, w_hh_in, w_hr_in, lengths);
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_ih_in.size(0) / 4;
  const bool proj = w_hr_in.has_value();
  const int64_t P = proj ? w_hr_in->size(0) : H;
  TORCH_CHECK(dy.sizes() == at::IntArrayRef({T, B, P}) && gates.sizes() == at::IntArrayRef({T, B, 4 * H}) &&
                  cells.sizes() == at::IntArrayRef({T, B, H}) && y.sizes() == dy.sizes(),
              "lstm_layer_bwd: saved tensors do not match the layer's shapes");
  // The kernels write B x P and B x H rows of copies of these: a smaller tensor would be overrun.
  TORCH_CHECK(dh_n.sizes() == at::IntArrayRef({B, P}), "lstm_layer_bwd: dh_n must be [", B, ", ", P, "], got ",
              dh_n.sizes());
  TORCH_CHECK(dc_n.sizes() == at::IntArrayRef({B, H}), "lstm_layer_bwd: dc_n must be [", B, ", ", H, "], got ",
              dc_n.sizes());
  const bool bf16 = x.scalar_type() == at::kBFloat16;  // saves fp32 cells (lstm_bf16_layer.h)
  for (const at::Tensor* t : {&dy_in, &dh_n, &dc_n, &y, &gates, &cells})
    TORCH_CHECK(t->scalar_type() == (bf16 && t == &cells ? at::kFloat : x.scalar_type()) && t->device() == x.device(),
                "lstm_layer_bwd: every tensor must match x's dtype and device (", x.scalar_type(), ", ", x.device(),
                "), got ", t->scalar_type(), ", ", t->device());
  // The backward products are x·W with W untransposed: transpose once so every GEMM is x·wᵀ.

  at::Tensor dgates, dh, dc;  // dh: gradient reaching the recurrent state h_t (P wide)
  at::Tensor dgates_f32;      // bf16 layers over few rows: dG in fp32 as well, for the weight gradients
  if (bf16) {
    // dX and the weight gradients sum dG over 4H and T·B. Over few rows the bf16 rounding of dG dominates
    // their error (T7 B1: up to 3.6x nn.LSTM's own error on dW_ih), so there the kernel also writes dG in
    // fp32 and those GEMMs run in fp32 (cheap at that size); over many rows the roundings average out (T50
    // B16: 1.0-1.12x nn.LSTM's error) and the bf16 GEMMs, ~4x faster here, take them.
    constexpr int64_t kFp32WeightGradRows = 256;
    std::tie(dgates, dgates_f32, dh, dc) = lstm_bf16_bwd_recurrence(
        dy, dh_n, dc_n, c0, w_hh_in, lengths, reverse, gates, cells,
        (need_dw || need_dx) && T * B <= kFp32WeightGradRows);
  } else {
    dgates = empty_buffer({T, B, 4 * H}, x.options());
    dh = dh_n.contiguous().clone();
    dc = dc_n.contiguous().clone();
  }
  at::Tensor dr_all = proj ? empty_buffer({T, B, P}, x.options()) : at::Tensor();  // gradient at y[t]+recurrence
  // o*tanh(c) before the projection, kept only for dW_hr
  at::Tensor h_raw = proj && need_dw ? empty_buffer({T, B, H}, x.options()) : at::Tensor();
  const at::Tensor c0c = c0.contiguous();
  ActiveRows active(lengths, B);

  if (bf16) {
    // the recurrence ran above; the GEMMs below take the bf16 dgates (fp32 accumulation inside oneDNN)
  } else if (!proj && use_fused_recurrence()) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_lstm_bwd", [&] {
      const at::Tensor w_hh = w_hh_in.contiguous();  // packed as W_hhᵀ: element (n, k) = w_hh[k, n]
      const at::Tensor panels = cached_packing(w_hh, Packing::kLstmBwdPanels, 0, [&] {
        const int64_t width = small_gemm_panel_width<scalar_t>();
        at::Tensor p = empty_buffer({(H + width - 1) / width, 4 * H, width}, x.options());
        small_gemm_pack<scalar_t>({w_hh.data_ptr<scalar_t>(), 1, H, p.data_ptr<scalar_t>(), H, 4 * H, 0});
        return p;
      });
      const CpuLengths lengths_cpu(lengths);
      fused_recurrence_bwd<scalar_t>({panels.data_ptr<scalar_t>(), gates.contiguous().data_ptr<scalar_t>(),
                                      cells.contiguous().data_ptr<scalar_t>(), c0c.data_ptr<scalar_t>(),
                                      dy.data_ptr<scalar_t>(), dgates.data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(),
                                      dc.data_ptr<scalar_t>(),
                                      lengths_cpu.data(), T, B, H,
                                      reverse});
    });
  } else AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_lstm_bwd", [&] {
    // The step products are x·W with W untransposed: transpose once so every GEMM is x·wᵀ.
    const StepWeight w_hh_t(w_hh_in.t(), B);  // [P, 4H]
    const std::optional<StepWeight> w_hr_t =
        proj ? std::optional<StepWeight>(StepWeight(w_hr_in->t(), B)) : std::nullopt;  // [H, P]
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const int64_t t_prev = reverse ? t + 1 : t - 1;  // the step processed before t
      const bool first = s == 0;
      const uint8_t* mask = active.at_step(t);
      const scalar_t* c_prev = first ? c0c.data_ptr<scalar_t>() : cells[t_prev].data_ptr<scalar_t>();
      at::Tensor dh_unit;  // gradient at o*tanh(c_t)
      const scalar_t* dy_t = nullptr;
      if (proj) {
        // dr = dy[t] + dh for active rows (0 otherwise); the projection's backward gives dh_unit = dr·W_hr.
        at::Tensor dr = dr_all[t];
        at::add_out(dr, dy[t], dh);
        if (mask != nullptr)
          for (int64_t b = 0; b < B; ++b)
            if (!mask[b]) dr[b].zero_();
        dh_unit = step_gemm(dr, *w_hr_t);
      } else {
        dh_unit = dh;
        dy_t = dy[t].data_ptr<scalar_t>();
      }
      bwd_pointwise<scalar_t>({gates[t].data_ptr<scalar_t>(), cells[t].data_ptr<scalar_t>(), c_prev,
                               dh_unit.data_ptr<scalar_t>(), dy_t, dc.data_ptr<scalar_t>(),
                               dgates[t].data_ptr<scalar_t>(),
                               h_raw.defined() ? h_raw[t].data_ptr<scalar_t>() : nullptr,
                               mask, B, H});
      at::Tensor dh_next = step_gemm(dgates[t], w_hh_t);  // [B, P]
      keep_finished_rows(dh_next, dh, mask);
      dh = dh_next;
    }
  });

  const at::Tensor dg2 = dgates.view({T * B, 4 * H});
  at::Tensor dx;
  if (!need_dx) {
    dx = at::empty({0}, x.options());
  } else if (dgates_f32.defined()) {  // few rows: dX from the fp32 dG too (T1 B1: 5.8x nn.LSTM's error from bf16)
    dx = at::mm(dgates_f32.view({T * B, 4 * H}), w_ih_in.to(at::kFloat)).to(x.scalar_type()).view({T, B, I});
  } else {
    dx = input_grad(dg2, w_ih_in).view({T, B, I});
  }
  if (!need_dw) {  // frozen weights: skip the weight GEMMs, as cuDNN's backward does with its output mask
    const auto none = [&] { return at::empty({0}, x.options()); };  // distinct tensors: outputs must not alias
    return {dx, dh, dc, none(), none(), none(), none()};
  }
  // The weight gradients' operands: dG and x, y, h0 in the dtype they are summed in (x's, or fp32 above).
  const at::Tensor dgw = dgates_f32.defined() ? dgates_f32 : dgates;
  const at::Tensor xw = x.to(dgw.scalar_type()), yw = y.to(dgw.scalar_type()), h0w = h0.to(dgw.scalar_type());
  const at::Tensor dgw2 = dgw.view({T * B, 4 * H});
  // Padding steps have dG = 0, but whatever x holds there (NaN, inf) must not reach dW_ih as 0 * NaN.
  at::Tensor x_valid = xw;
  if (lengths.has_value()) {
    const at::Tensor t_index = at::arange(T, lengths->options().dtype(at::kLong).device(at::kCPU)).view({T, 1});
    const at::Tensor padding = t_index >= lengths->to(at::kCPU, at::kLong).view({1, B});  // [T, B]
    x_valid = xw.masked_fill(padding.unsqueeze(-1).to(x.device()), 0);
  }
  at::Tensor dw_ih = at::mm(dgw2.t(), x_valid.view({T * B, I}));
  // dW_hh = sum over steps of dG_t^T · h_{t-1}. For every step but each sequence's first, h_{t-1} is the
  // previous step's output y (y is 0 where the previous step was inactive, which only happens where the
  // step itself is a reverse sequence's first); the first steps take h0.
  at::Tensor dg_first;
  if (!reverse) {
    dg_first = dgw[0];
  } else if (active.lengths.empty()) {
    dg_first = dgw[T - 1];
  } else {
    at::Tensor first_t = lengths->to(at::kCPU, at::kLong) - 1;
    dg_first = dgw.permute({1, 0, 2})
                   .gather(1, first_t.view({B, 1, 1}).expand({B, 1, 4 * H}))
                   .view({B, 4 * H});
  }
  at::Tensor dw_hh = at::mm(dg_first.t(), h0w.contiguous());  // [4H, P]: a new tensor, no zero fill first
  if (T > 1) {
    const at::Tensor dg_rest = reverse ? dgw.narrow(0, 0, T - 1) : dgw.narrow(0, 1, T - 1);
    const at::Tensor y_prev = reverse ? yw.narrow(0, 1, T - 1) : yw.narrow(0, 0, T - 1);
    dw_hh.addmm_(dg_rest.reshape({(T - 1) * B, 4 * H}).t(), y_prev.reshape({(T - 1) * B, P}));
  }
  at::Tensor db = dgw2.sum(0);
  at::Tensor dw_hr = proj ? at::mm(dr_all.view({T * B, P}).t(), h_raw.view({T * B, H})) : at::empty({0}, x.options());
  const at::ScalarType dt = x.scalar_type();  // fp32 sums (bf16 layers over few rows) rounded once, here
  return {dx, dh, dc, dw_ih.to(dt), dw_hh.to(dt), db.to(dt), dw_hr};
}

}  // namespace fused_s2s::cpu
