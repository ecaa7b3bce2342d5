// One GRU, Elman RNN or peephole-LSTM layer, one direction, on the CPU: forward and backward drivers.
//
// Forward: the input projection for all steps is one GEMM (b_ih folded in; for the RNN b_hh too); then the GRU
// and RNN run the fused recurrence (cell_recurrence.cpp: every step in one parallel region, each thread's
// W_hh slice resident in its L2, finished rows skipped). The step path, which the peephole LSTM always takes,
// is per step one GEMM h·W_hhᵀ (small_gemm or oneDNN, as the LSTM's step path) and one fused pointwise pass
// of the cell (cell_kernels.cpp). Backward: a reverse loop of the cell's pointwise pass and one GEMM dG_h·W_hh per
// step, then dX, dW_ih, dW_hh and the biases as large GEMMs over all steps.
#include "cell_layer.h"

#include <ATen/ATen.h>

#include <cstring>
#include <string>
#include <vector>

#include "cell_kernels.h"
#include "fused_s2s/rnn_cell.h"
#include "gemm.h"
#include "layer_common.h"
#include "weight_cache.h"

namespace fused_s2s::cpu {
namespace {

// Checks of one layer's inputs; G gates per unit. `op` names the op in the message.
void check_inputs(const char* op, int64_t G, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
                  const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                  const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& lengths) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be [T, B, I], got ", x.sizes());
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % G == 0 && w_ih.size(1) == I, op, ": w_ih must be [", G, "H, ", I,
              "], got ", w_ih.sizes());
  const int64_t H = w_ih.size(0) / G;
  TORCH_CHECK(H > 0, op, ": hidden_size must be greater than zero");
  TORCH_CHECK(w_hh.sizes() == at::IntArrayRef({G * H, H}), op, ": w_hh must be [", G * H, ", ", H, "], got ",
              w_hh.sizes());
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({B, H}), op, ": h0 must be [", B, ", ", H, "], got ", h0.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": the CPU kernel takes float32 or float64, got ", x.scalar_type());
  std::vector<const at::Tensor*> tensors = {&h0, &w_ih, &w_hh};
  for (const std::optional<at::Tensor>* b : {&b_ih, &b_hh}) {
    if (!b->has_value()) continue;
    TORCH_CHECK((*b)->dim() == 1 && (*b)->size(0) == G * H, op, ": biases must be [", G * H, "], got ",
                (*b)->sizes());
    tensors.push_back(&**b);
  }
  for (const at::Tensor* t : tensors)
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(), op,
                ": every tensor must match x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
                t->scalar_type(), ", ", t->device());
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B, op, ": lengths must be [", B, "], got ",
                lengths->sizes());
    TORCH_CHECK(at::isIntegralType(lengths->scalar_type(), /*includeBool=*/false), op,
                ": lengths must be an integer tensor, got ", lengths->scalar_type());
    const at::Tensor l = lengths->to(at::kCPU, at::kLong).contiguous();
    const int64_t* lp = l.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK(lp[b] >= 1 && lp[b] <= T, op, ": every length must be in [1, ", T, "], got lengths[", b, "] = ",
                  lp[b]);
  }
}

// The backward's gradient inputs and saved tensors: shapes, dtypes and devices the kernels index.
void check_grads(const char* op, const at::Tensor& x, int64_t H, const at::Tensor& dy, const at::Tensor& dh_n,
                 const at::Tensor& y, const at::Tensor* saved, int64_t saved_width) {
  const int64_t T = x.size(0), B = x.size(1);
  TORCH_CHECK(dy.sizes() == at::IntArrayRef({T, B, H}) && y.sizes() == dy.sizes(), op, ": dy and y must be [", T,
              ", ", B, ", ", H, "], got ", dy.sizes(), " and ", y.sizes());
  TORCH_CHECK(dh_n.sizes() == at::IntArrayRef({B, H}), op, ": dh_n must be [", B, ", ", H, "], got ", dh_n.sizes());
  if (saved != nullptr)
    TORCH_CHECK(saved->sizes() == at::IntArrayRef({T, B, saved_width}), op, ": saved must be [", T, ", ", B, ", ",
                saved_width, "], got ", saved->sizes());
  for (const at::Tensor* t : {&dy, &dh_n, &y, saved})
    if (t != nullptr)
      TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(), op,
                  ": every tensor must match x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
                  t->scalar_type(), ", ", t->device());
}

int parse_nonlinearity(c10::string_view nonlinearity) {
  if (nonlinearity == "tanh") return static_cast<int>(RnnActivation::kTanh);
  if (nonlinearity == "relu") return static_cast<int>(RnnActivation::kRelu);
  TORCH_CHECK(false, "rnn_layer: Unknown nonlinearity '", std::string(nonlinearity), "'. Select from 'tanh' or 'relu'.");
}

std::optional<at::Tensor> sum_of(const std::optional<at::Tensor>& a, const std::optional<at::Tensor>& b) {
  if (a.has_value() && b.has_value()) return *a + *b;
  if (a.has_value()) return a->contiguous();
  if (b.has_value()) return b->contiguous();
  return std::nullopt;
}

// h_{t-1} of every row at every step [T, B, H]: the previous processed step's output, or h0 at each
// sequence's first step (t = 0 forward; t = length - 1 reverse). Rows past a sequence's end get the zeros
// of y there, and meet a zero gradient.
at::Tensor previous_states(const at::Tensor& y, const at::Tensor& h0, const std::optional<at::Tensor>& lengths,
                           bool reverse) {
  const int64_t T = y.size(0), B = y.size(1);
  at::Tensor h_prev = empty_buffer(y.sizes(), y.options());
  const int64_t first = reverse ? T - 1 : 0;
  h_prev[first].copy_(h0);
  if (T > 1) {
    if (reverse) h_prev.narrow(0, 0, T - 1).copy_(y.narrow(0, 1, T - 1));
    else h_prev.narrow(0, 1, T - 1).copy_(y.narrow(0, 0, T - 1));
  }
  if (reverse && lengths.has_value()) {
    const at::Tensor l = lengths->to(at::kCPU, at::kLong).contiguous();
    for (int64_t b = 0; b < B; ++b) h_prev[l.data_ptr<int64_t>()[b] - 1][b].copy_(h0[b]);
  }
  return h_prev;
}

// The checks the peephole LSTM adds to check_inputs: c0 and the peephole weights (of x's dtype, device).
void check_peephole(const at::Tensor& x, int64_t H, const at::Tensor& c0, const at::Tensor& w_c) {
  const int64_t B = x.size(1);
  TORCH_CHECK(c0.sizes() == at::IntArrayRef({B, H}), "peephole_lstm_layer: c0 must be [", B, ", ", H, "], got ",
              c0.sizes());
  TORCH_CHECK(w_c.sizes() == at::IntArrayRef({3 * H}), "peephole_lstm_layer: w_c must be [", 3 * H,
              "] (w_ci, w_cf, w_co), got ", w_c.sizes());
  for (const at::Tensor* t : {&c0, &w_c})
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(),
                "peephole_lstm_layer: every tensor must match x's dtype and device (", x.scalar_type(), ", ",
                x.device(), "), got ", t->scalar_type(), ", ", t->device());
}

// c_{t-1} of every row at every step [T, B, H] from the saved cells: the previous processed step's, or c0 at
// the first step. Rows before a reverse sequence's start froze at c0, so no per-row case is needed.
at::Tensor previous_cells(const at::Tensor& cells, const at::Tensor& c0, bool reverse) {
  const int64_t T = cells.size(0);
  at::Tensor c_prev = empty_buffer(cells.sizes(), cells.options());
  c_prev[reverse ? T - 1 : 0].copy_(c0);
  if (T > 1) {
    if (reverse) c_prev.narrow(0, 0, T - 1).copy_(cells.narrow(0, 1, T - 1));
    else c_prev.narrow(0, 1, T - 1).copy_(cells.narrow(0, 0, T - 1));
  }
  return c_prev;
}

// dL/dx and the weight gradients from the gate gradients of all steps: dgi [T, B, G·H] (of x·W_ihᵀ + b_ih)
// and dgh (of h·W_hhᵀ + b_hh). Padding steps have zero gradients, but whatever x holds there (NaN, inf) must
// not reach dW_ih as 0 · NaN.
struct WeightGrads {
  at::Tensor dx, dw_ih, dw_hh, db_ih, db_hh;
};
WeightGrads weight_grads(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& dgi, const at::Tensor& dgh,
                         const at::Tensor& h_prev, const std::optional<at::Tensor>& lengths, bool need_dx,
                         bool need_dw) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), GH = dgi.size(2), H = h_prev.size(2);
  const auto none = [&] { return at::empty({0}, x.options()); };  // distinct tensors: outputs must not alias
  const at::Tensor dgi2 = dgi.view({T * B, GH});
  WeightGrads g;
  g.dx = need_dx ? input_grad(dgi2, w_ih).view({T, B, I}) : none();
  if (!need_dw) {
    g.dw_ih = none(), g.dw_hh = none(), g.db_ih = none(), g.db_hh = none();
    return g;
  }
  at::Tensor x_valid = x;
  if (lengths.has_value()) {
    const at::Tensor t_index = at::arange(T, lengths->options().dtype(at::kLong).device(at::kCPU)).view({T, 1});
    const at::Tensor padding = t_index >= lengths->to(at::kCPU, at::kLong).view({1, B});
    x_valid = x.masked_fill(padding.unsqueeze(-1), 0);
  }
  const at::Tensor dgh2 = dgh.view({T * B, GH});
  g.dw_ih = at::mm(dgi2.t(), x_valid.view({T * B, I}));
  g.dw_hh = at::mm(dgh2.t(), h_prev.view({T * B, H}));
  g.db_ih = dgi2.sum(0);
  g.db_hh = dgh.data_ptr() == dgi.data_ptr() ? g.db_ih.clone() : dgh2.sum(0);
  return g;
}

// W_hh [G·H, H] packed into the fused recurrence's panels (cell_kernels.h, CellPanelPackArgs).
template <typename scalar_t>
at::Tensor pack_cell_panels(const at::Tensor& w_hh, int64_t gates) {
  return cached_packing(w_hh, Packing::kCellPanels, 0, [&] {
    const int64_t H = w_hh.size(1), U = cell_panel_units<scalar_t>(gates);
    at::Tensor panels = empty_buffer({(H + U - 1) / U, H, gates * U}, w_hh.options());
    cell_pack_panels<scalar_t>(
        {w_hh.data_ptr<scalar_t>(), w_hh.stride(0), w_hh.stride(1), panels.data_ptr<scalar_t>(), gates, H});
    return panels;
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_fwd(
    const at::Tensor& x_in, const at::Tensor& h0, const at::Tensor& w_ih_in, const at::Tensor& w_hh_in,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse, bool save) {
  check_inputs("gru_layer", 3, x_in, h0, w_ih_in, w_hh_in, b_ih, b_hh, lengths);
  const at::Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  // b_hh stays out of the input projection: its n-part sits inside the reset product.
  const at::Tensor gi = input_projection(x.view({T * B, I}), w_ih, b_ih.has_value() ? std::optional<at::Tensor>(b_ih->contiguous()) : std::nullopt).view({T, B, 3 * H});
  const std::optional<at::Tensor> bias_hh = b_hh.has_value() ? std::optional<at::Tensor>(b_hh->contiguous()) : std::nullopt;
  at::Tensor y = empty_buffer({T, B, H}, x.options());
  at::Tensor saved = save ? empty_buffer({T, B, 4 * H}, x.options()) : at::empty({0}, x.options());
  // The fused recurrence, except for dense batches above 32 rows: there oneDNN's step GEMM beat it (T100
  // H256 fp32 on the 2-core Xeon: B64 21.5 against 23.9 ms; B32 13.9 against 12.1 ms the other way). With
  // lengths it skips finished rows, which the step path cannot, and wins at B64 too (1.27 against 1.20x nn.GRU).
  constexpr int64_t kFusedDenseBatchLimit = 32;
  if (use_fused_recurrence() && (lengths.has_value() || B <= kFusedDenseBatchLimit)) {
    at::Tensor h_buf = empty_buffer({2, B, H}, x.options());
    h_buf[0].copy_(h0);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_gru_fwd", [&] {
      const at::Tensor panels = pack_cell_panels<scalar_t>(w_hh, 3);
      const CpuLengths lengths_cpu(lengths);
      gru_recurrence<scalar_t>({panels.data_ptr<scalar_t>(), gi.data_ptr<scalar_t>(),
                                bias_hh.has_value() ? bias_hh->data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
                                save ? saved.data_ptr<scalar_t>() : nullptr, h_buf.data_ptr<scalar_t>(),
                                lengths_cpu.data(), T, B, H, reverse});
    });
    return {y, h_buf[T % 2].clone(), saved};
  }
  at::Tensor h = h0.contiguous().clone();
  ActiveRows active(lengths, B);
  const StepWeight w_step(w_hh, B, cell_small_batch_limit());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_gru_fwd", [&] {
    const scalar_t* bh = bias_hh.has_value() ? bias_hh->data_ptr<scalar_t>() : nullptr;
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const at::Tensor gh = step_gemm(h, w_step);
      gru_fwd_pointwise<scalar_t>({gi[t].data_ptr<scalar_t>(), gh.data_ptr<scalar_t>(), bh, h.data_ptr<scalar_t>(),
                                   y[t].data_ptr<scalar_t>(), save ? saved[t].data_ptr<scalar_t>() : nullptr,
                                   active.at_step(t), B, H});
    }
  });
  return {y, h, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_bwd(
    const at::Tensor& dy_in, const at::Tensor& dh_n, const at::Tensor& x_in, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& lengths, bool reverse,
    const at::Tensor& y_in, const at::Tensor& saved_in, bool need_dx, bool need_dw) {
  check_inputs("gru_layer_bwd", 3, x_in, h0, w_ih, w_hh, std::nullopt, std::nullopt, lengths);
  const int64_t T = x_in.size(0), B = x_in.size(1), H = w_hh.size(1);
  check_grads("gru_layer_bwd", x_in, H, dy_in, dh_n, y_in, &saved_in, 4 * H);
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous(), y = y_in.contiguous(), saved = saved_in.contiguous();
  const at::Tensor h_prev = previous_states(y, h0.contiguous(), lengths, reverse);
  at::Tensor dgi = empty_buffer({T, B, 3 * H}, x.options());
  at::Tensor dgh = empty_buffer({T, B, 3 * H}, x.options());
  at::Tensor dh = dh_n.contiguous().clone();
  ActiveRows active(lengths, B);
  const StepWeight w_t(w_hh.t(), B, cell_small_batch_limit());  // [H, 3H]: rows·w_tᵀ = dgh·W_hh
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_gru_bwd", [&] {
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = reverse ? T - 1 - s : s;
      gru_bwd_pointwise<scalar_t>({saved[t].data_ptr<scalar_t>(), h_prev[t].data_ptr<scalar_t>(),
                                   dy[t].data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(), dgi[t].data_ptr<scalar_t>(),
                                   dgh[t].data_ptr<scalar_t>(), active.at_step(t), B, H});
      dh.add_(step_gemm(dgh[t], w_t));  // inactive rows: dgh = 0, dh passes through
    }
  });
  WeightGrads g = weight_grads(x, w_ih, dgi, dgh, h_prev, lengths, need_dx, need_dw);
  return {g.dx, dh, g.dw_ih, g.dw_hh, g.db_ih, g.db_hh};
}

std::tuple<at::Tensor, at::Tensor> rnn_layer_fwd(
    const at::Tensor& x_in, const at::Tensor& h0, const at::Tensor& w_ih_in, const at::Tensor& w_hh_in,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse, c10::string_view nonlinearity) {
  const int activation = parse_nonlinearity(nonlinearity);
  check_inputs("rnn_layer", 1, x_in, h0, w_ih_in, w_hh_in, b_ih, b_hh, lengths);
  const at::Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  const at::Tensor gi = input_projection(x.view({T * B, I}), w_ih, sum_of(b_ih, b_hh)).view({T, B, H});
  at::Tensor y = empty_buffer({T, B, H}, x.options());
  if (use_fused_recurrence()) {
    at::Tensor h_buf = empty_buffer({2, B, H}, x.options());
    h_buf[0].copy_(h0);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_rnn_fwd", [&] {
      const at::Tensor panels = pack_cell_panels<scalar_t>(w_hh, 1);
      const CpuLengths lengths_cpu(lengths);
      rnn_recurrence<scalar_t>({panels.data_ptr<scalar_t>(), gi.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                h_buf.data_ptr<scalar_t>(), lengths_cpu.data(), T, B, H, reverse, activation});
    });
    return {y, h_buf[T % 2].clone()};
  }
  at::Tensor h = h0.contiguous().clone();
  ActiveRows active(lengths, B);
  const StepWeight w_step(w_hh, B, cell_small_batch_limit());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_rnn_fwd", [&] {
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const at::Tensor gh = step_gemm(h, w_step);
      rnn_fwd_pointwise<scalar_t>({gi[t].data_ptr<scalar_t>(), gh.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                                   y[t].data_ptr<scalar_t>(), active.at_step(t), B, H, activation});
    }
  });
  return {y, h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer_bwd(
    const at::Tensor& dy_in, const at::Tensor& dh_n, const at::Tensor& x_in, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& lengths, bool reverse,
    const at::Tensor& y_in, c10::string_view nonlinearity, bool need_dx, bool need_dw) {
  const int activation = parse_nonlinearity(nonlinearity);
  check_inputs("rnn_layer_bwd", 1, x_in, h0, w_ih, w_hh, std::nullopt, std::nullopt, lengths);
  const int64_t T = x_in.size(0), B = x_in.size(1), H = w_hh.size(1);
  check_grads("rnn_layer_bwd", x_in, H, dy_in, dh_n, y_in, nullptr, 0);
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous(), y = y_in.contiguous();
  at::Tensor da = empty_buffer({T, B, H}, x.options());  // gradient of the pre-activation: dgi = dgh
  at::Tensor dh = dh_n.contiguous().clone();
  ActiveRows active(lengths, B);
  const StepWeight w_t(w_hh.t(), B, cell_small_batch_limit());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_rnn_bwd", [&] {
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const uint8_t* mask = active.at_step(t);
      rnn_bwd_pointwise<scalar_t>({y[t].data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(), dy[t].data_ptr<scalar_t>(),
                                   da[t].data_ptr<scalar_t>(), mask, B, H, activation});
      at::Tensor dh_next = step_gemm(da[t], w_t);
      keep_finished_rows(dh_next, dh, mask);
      dh = dh_next;
    }
  });
  const at::Tensor h_prev = need_dw ? previous_states(y, h0.contiguous(), lengths, reverse) : y;
  WeightGrads g = weight_grads(x, w_ih, da, da, h_prev, lengths, need_dx, need_dw);
  return {g.dx, dh, g.dw_ih, g.dw_hh, g.db_ih};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> peephole_lstm_layer_fwd(
    const at::Tensor& x_in, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih_in,
    const at::Tensor& w_hh_in, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& w_c_in, const std::optional<at::Tensor>& lengths, bool reverse, bool save) {
  check_inputs("peephole_lstm_layer", 4, x_in, h0, w_ih_in, w_hh_in, b_ih, b_hh, lengths);
  const int64_t T = x_in.size(0), B = x_in.size(1), I = x_in.size(2), H = w_hh_in.size(1);
  check_peephole(x_in, H, c0, w_c_in);
  const at::Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const at::Tensor w_c = w_c_in.contiguous();
  const at::Tensor gi = input_projection(x.view({T * B, I}), w_ih, sum_of(b_ih, b_hh)).view({T, B, 4 * H});
  at::Tensor y = empty_buffer({T, B, H}, x.options());
  at::Tensor gates = save ? empty_buffer({T, B, 4 * H}, x.options()) : at::empty({0}, x.options());
  at::Tensor cells = save ? empty_buffer({T, B, H}, x.options()) : at::empty({0}, x.options());
  at::Tensor h = h0.contiguous().clone(), c = c0.contiguous().clone();
  ActiveRows active(lengths, B);
  const StepWeight w_step(w_hh, B, cell_small_batch_limit());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_peephole_fwd", [&] {
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const at::Tensor gh = step_gemm(h, w_step);
      peephole_fwd_pointwise<scalar_t>({gi[t].data_ptr<scalar_t>(), gh.data_ptr<scalar_t>(), w_c.data_ptr<scalar_t>(),
                                        h.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), y[t].data_ptr<scalar_t>(),
                                        save ? gates[t].data_ptr<scalar_t>() : nullptr,
                                        save ? cells[t].data_ptr<scalar_t>() : nullptr, active.at_step(t), B, H});
    }
  });
  return {y, h, c, gates, cells};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> peephole_lstm_layer_bwd(
    const at::Tensor& dy_in, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& x_in,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& w_c_in, const std::optional<at::Tensor>& lengths, bool reverse, const at::Tensor& y_in,
    const at::Tensor& gates_in, const at::Tensor& cells_in, bool need_dx, bool need_dw) {
  const char* op = "peephole_lstm_layer_bwd";
  check_inputs(op, 4, x_in, h0, w_ih, w_hh, std::nullopt, std::nullopt, lengths);
  const int64_t T = x_in.size(0), B = x_in.size(1), H = w_hh.size(1);
  check_peephole(x_in, H, c0, w_c_in);
  check_grads(op, x_in, H, dy_in, dh_n, y_in, &gates_in, 4 * H);
  check_grads(op, x_in, H, dy_in, dc_n, y_in, &cells_in, H);
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous(), y = y_in.contiguous();
  const at::Tensor gates = gates_in.contiguous(), cells = cells_in.contiguous(), w_c = w_c_in.contiguous();
  const at::Tensor c_prev = previous_cells(cells, c0.contiguous(), reverse);
  at::Tensor dgates = empty_buffer({T, B, 4 * H}, x.options());
  at::Tensor dh = dh_n.contiguous().clone(), dc = dc_n.contiguous().clone();
  ActiveRows active(lengths, B);
  const StepWeight w_t(w_hh.t(), B, cell_small_batch_limit());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_s2s_peephole_bwd", [&] {
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const uint8_t* mask = active.at_step(t);
      peephole_bwd_pointwise<scalar_t>({gates[t].data_ptr<scalar_t>(), cells[t].data_ptr<scalar_t>(),
                                        c_prev[t].data_ptr<scalar_t>(), w_c.data_ptr<scalar_t>(),
                                        dh.data_ptr<scalar_t>(), dy[t].data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(),
                                        dgates[t].data_ptr<scalar_t>(), mask, B, H});
      at::Tensor dh_next = step_gemm(dgates[t], w_t);
      keep_finished_rows(dh_next, dh, mask);
      dh = dh_next;
    }
  });
  const at::Tensor h_prev = need_dw ? previous_states(y, h0.contiguous(), lengths, reverse) : y;
  WeightGrads g = weight_grads(x, w_ih, dgates, dgates, h_prev, lengths, need_dx, need_dw);
  at::Tensor dw_c = at::empty({0}, x.options());
  if (need_dw) {  // sums over steps and rows (zero gradients where inactive)
    const at::Tensor dg = dgates.view({T * B, 4 * H}), cp = c_prev.view({T * B, H}), c = cells.view({T * B, H});
    dw_c = at::cat({(dg.narrow(1, 0, H) * cp).sum(0), (dg.narrow(1, H, H) * cp).sum(0),
                    (dg.narrow(1, 3 * H, H) * c).sum(0)});
  }
  return {g.dx, dh, dc, g.dw_ih, g.dw_hh, g.db_ih, dw_c};
}

}  // namespace fused_s2s::cpu
