// The fused decoder step on CPU: every sub-step in C++, no Python in between. The GEMMs (one per layer
// over [input; h] against the pre-concatenated [w_ih | w_hh], and the combine) go through step_linear: a
// matrix-vector kernel that streams the weight once for up to 4 rows, small_gemm's panels up to 32 rows and
// oneDNN above that, each with the weight packed once and cached. The cell (lstm_kernels.h), the attention and that kernel (decoder_kernels.h) are vectorised
// and compiled per CPU capability.
#include "decoder_step.h"

#include <algorithm>
#include <mutex>
#include <vector>

#include "decoder_kernels.h"
#include "decoder_step_checks.h"
#include "gemm.h"
#include "lstm_kernels.h"

namespace fused_s2s::cpu {
namespace {

// w packed once and then reused: a decoder calls the step with the same weights every step, and unpacked
// weights get reordered by oneDNN on every call (at H512 that reorder costs more than the GEMM at B8). The
// cache holds the packed copy only (the weight itself is held weakly), is keyed on (weight, version counter,
// rows), so an in-place update of the weight repacks it, and keeps the 16 most recent entries. (Not the
// layers' weight_cache.h: its byte-for-byte check reads the whole weight, which here would double a step's
// memory traffic.)
template <typename PackFn>
at::Tensor cached_weight(const at::Tensor& w, int64_t rows, const PackFn& pack) {
  struct Entry {
    c10::weak_intrusive_ptr<c10::TensorImpl> weight;
    uint32_t version;
    int64_t rows;
    at::Tensor packed;
  };
  static std::mutex mu;
  static std::vector<Entry> cache;
  const uint32_t version = w.is_inference() ? 0 : w._version();
  std::lock_guard<std::mutex> lock(mu);
  for (size_t i = 0; i < cache.size(); ++i) {
    Entry& e = cache[i];
    if (e.rows == rows && e.version == version && !e.weight.expired() && e.weight.lock().get() == w.unsafeGetTensorImpl()) {
      if (i != 0) std::swap(cache[0], cache[i]);
      return cache[0].packed;
    }
  }
  at::Tensor packed = pack();
  cache.insert(cache.begin(), Entry{c10::weak_intrusive_ptr<c10::TensorImpl>(w.getIntrusivePtr()), version, rows, packed});
  if (cache.size() > 16) cache.pop_back();
  return packed;
}

// w in oneDNN's blocked layout for `rows`-row inputs.
at::Tensor packed_weight(const at::Tensor& w, int64_t rows) {
  if (!onednn_linear_available(w.scalar_type())) return w;
  return cached_weight(w, rows, [&] { return pack_weight(w.contiguous(), rows); });
}

// w in small_gemm's panels (lstm_kernels.h), under the key rows = 0 (oneDNN packings have more rows).
at::Tensor panel_weight(const at::Tensor& w) {
  return cached_weight(w, 0, [&] {
    at::Tensor p;
    AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "decoder_step_panel_pack", [&] {
      const int64_t width = small_gemm_panel_width<scalar_t>(), N = w.size(0), K = w.size(1);
      p = at::empty({(N + width - 1) / width, K, width}, w.options());
      small_gemm_pack<scalar_t>({w.data_ptr<scalar_t>(), w.stride(0), w.stride(1), p.data_ptr<scalar_t>(), N, K});
    });
    return p;
  });
}

// One step's GEMM. Up to kMaxRowwiseBatch rows it is bound by reading w, and rowwise_linear streams the
// plain weight over both cores; above that oneDNN's GEMM with the weight packed for this batch size once
// (packed_weight), except for small weights, where a oneDNN call's ~15 us overhead costs more than the
// GEMM. Measured 2026-11-23, fp32, two threads, weights hot in L3 (us, at::linear / oneDNN packed):
//   [64, 48]      B8 4.7 / 14.0
//   [512, 512]    B8 70 / 51
//   [2048, 1536]  B1 212 / 103    B8 694 / 242
// and a whole H512 B1 step: 165 us with rowwise_linear, 245 us with oneDNN.
// (with tanh_out: tanh of it, in the same pass on the rowwise path)
// From kMaxRowwiseBatch + 1 to this many rows, small_gemm's panels (packed once, cached) instead of oneDNN: one
// pass over the weight with the rows in registers. Measured here (H512 E512 S50 general, fp32, per step):
// B5 520 -> 436-484 us, B8 620 -> 545-594 us, B16 805 -> 796, B32 1285 -> 1256, B64 equal.
constexpr int64_t kMaxPanelBatch = 32;

at::Tensor step_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                       bool tanh_out = false) {
  const int64_t B = x.size(0);
  if (B <= kMaxRowwiseBatch) {
    at::Tensor xc = x.contiguous(), wc = w.contiguous();
    std::optional<at::Tensor> bc = bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
    at::Tensor out = at::empty({B, w.size(0)}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "decoder_step_rowwise_linear", [&] {
      rowwise_linear<scalar_t>({xc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(),
                                bc ? bc->data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), B, w.size(0),
                                w.size(1), tanh_out});
    });
    return out;
  }
  constexpr int64_t kMinOneDnnWeight = 1 << 18;
  if (w.numel() < kMinOneDnnWeight) {
    at::Tensor out = at::linear(x, w, bias);
    return tanh_out ? out.tanh_() : out;
  }
  if (B <= kMaxPanelBatch) {  // bias and tanh in the GEMM's stores (two ATen calls fewer a step)
    const at::Tensor xc = x.contiguous(), panels = panel_weight(w);
    const std::optional<at::Tensor> bc = bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
    at::Tensor out = at::empty({B, w.size(0)}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "decoder_step_small_gemm", [&] {
      small_gemm<scalar_t>({xc.data_ptr<scalar_t>(), panels.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B,
                            w.size(0), w.size(1), /*streamed=*/true, bc ? bc->data_ptr<scalar_t>() : nullptr,
                            tanh_out});
    });
    return out;
  }
  at::Tensor out = fast_linear(x, packed_weight(w, B), bias);
  return tanh_out ? out.tanh_() : out;
}


}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decoder_step(
    const at::Tensor& x, const std::optional<at::Tensor>& feed, const at::Tensor& h, const at::Tensor& c,
    at::TensorList w_cat, const c10::List<std::optional<at::Tensor>>& b_cat, c10::string_view score,
    const at::Tensor& keys, double scale, const std::optional<at::Tensor>& w_query,
    const std::optional<at::Tensor>& b_query, const std::optional<at::Tensor>& v, const at::Tensor& memory,
    const std::optional<at::Tensor>& lengths, const at::Tensor& w_out, const std::optional<at::Tensor>& b_out) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "decoder_step: CPU kernel supports float32 and float64, got ",
              dtype);
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == dtype, "decoder_step: ", name, " must have the type ", dtype, ", got type ",
                t.scalar_type());
    TORCH_CHECK(t.device().is_cpu(), "decoder_step: ", name, " must be a CPU tensor, got ", t.device());
  };
  const DecoderStepSizes sizes =
      check_decoder_step(x, feed, h, c, w_cat, b_cat, score, keys, w_query, b_query, v, memory, w_out, b_out, same);
  const int64_t L = sizes.L, B = sizes.B, H = sizes.H, S = sizes.S, M = sizes.M, K = sizes.K;
  const bool additive = sizes.additive;
  at::Tensor len;
  if (lengths) {
    TORCH_CHECK(lengths->device().is_cpu(), "decoder_step: memory_lengths must be on the CPU like memory, got ",
                lengths->device());
    TORCH_CHECK(!at::isFloatingType(lengths->scalar_type()) && lengths->scalar_type() != at::kBool,
                "decoder_step: memory_lengths must be an integer tensor, got ", lengths->scalar_type());
    TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B, "decoder_step: expected memory_lengths of size [", B,
                "], got ", lengths->sizes());
    len = lengths->to(at::kLong).contiguous();
    // B values on the CPU, read in place: every step checks them (a reduction op and two .item() cost more)
    const int64_t* l = len.data_ptr<int64_t>();
    TORCH_CHECK(std::all_of(l, l + B, [&](int64_t n) { return n >= 1 && n <= S; }),
                "decoder_step: every memory length must be in [1, ", S, "], got ", len);
  }

  auto h_new = at::empty({L, B, H}, x.options());
  auto c_new = at::empty({L, B, H}, x.options());
  // ---- LSTM stack: one GEMM per layer over [input; h_l] against [w_ih | w_hh] ----
  c_new.copy_(c);  // the cell kernel updates c in place
  at::Tensor inp = x;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& w = w_cat[l];
    const std::optional<at::Tensor> bias = b_cat.get(l);
    at::Tensor xh = l == 0 && feed ? at::cat({x, *feed, h[0]}, 1) : at::cat({inp, h[l]}, 1);  // [input; h_l]
    at::Tensor gates = step_linear(xh, w, bias).contiguous();  // [B, 4H]
    AT_DISPATCH_FLOATING_TYPES(dtype, "decoder_step_cell", [&] {
      scalar_t* c_state = c_new.data_ptr<scalar_t>() + l * B * H;
      fwd_pointwise<scalar_t>({gates.data_ptr<scalar_t>(), /*rec=*/nullptr, c_state, /*c_saved=*/c_state,
                               h_new.data_ptr<scalar_t>() + l * B * H, /*y=*/nullptr, /*active=*/nullptr, B, H});
    });
    inp = h_new[l];
  }
  at::Tensor top = h_new[L - 1];  // [B, H]
  // ---- attention: scores, masked softmax and context in one pass per row ----
  // [B, K]: additive's w_query·h + b_query, general's projected query (dot with w_query), or h itself
  at::Tensor query = w_query ? step_linear(top, w_query->contiguous(), additive ? b_query : std::nullopt) : top;
  at::Tensor k = keys.contiguous(), mem = memory.contiguous();
  at::Tensor vv = additive ? v->contiguous() : at::Tensor();
  at::Tensor attn = at::empty({B, S}, x.options());
  at::Tensor context = at::empty({B, M}, x.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "decoder_step_attention", [&] {
    decoder_attention<scalar_t>({query.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), mem.data_ptr<scalar_t>(),
                                 lengths ? len.data_ptr<int64_t>() : nullptr,
                                 additive ? vv.data_ptr<scalar_t>() : nullptr, static_cast<scalar_t>(scale),
                                 attn.data_ptr<scalar_t>(), context.data_ptr<scalar_t>(), B, S, K, M});
  });
  // ---- combine: h̃ = tanh(w_out · [context; h_top] + b_out) ----
  at::Tensor out = step_linear(at::cat({context, top}, 1), w_out, b_out, /*tanh_out=*/true);
  return {out, h_new, c_new, attn};
}

}  // namespace fused_s2s::cpu
