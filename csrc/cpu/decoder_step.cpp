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
  at::Tensor out;
  if (B <= kMaxPanelBatch) {
    const at::Tensor xc = x.contiguous(), panels = panel_weight(w);
    out = at::empty({B, w.size(0)}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "decoder_step_small_gemm", [&] {
      small_gemm<scalar_t>({xc.data_ptr<scalar_t>(), panels.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B,
                            w.size(0), w.size(1)});
    });
    if (bias) out.add_(*bias);
  } else {
    out = fast_linear(x, packed_weight(w, B), bias);
  }
  return tanh_out ? out.tanh_() : out;
}

void check_2d(const at::Tensor& t, const char* name, int64_t rows, int64_t cols) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "decoder_step: expected ", name, " of size [",
              rows, ", ", cols, "], got ", t.sizes());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decoder_step(
    const at::Tensor& x, const std::optional<at::Tensor>& feed, const at::Tensor& h, const at::Tensor& c,
    at::TensorList w_cat, const c10::List<std::optional<at::Tensor>>& b_cat, c10::string_view score,
    const at::Tensor& keys, double scale, const std::optional<at::Tensor>& w_query,
    const std::optional<at::Tensor>& b_query, const std::optional<at::Tensor>& v, const at::Tensor& memory,
    const std::optional<at::Tensor>& lengths, const at::Tensor& w_out, const std::optional<at::Tensor>& b_out) {
  TORCH_CHECK(h.dim() == 3 && c.sizes() == h.sizes(), "decoder_step: expected h and c of the same size [L, B, H], got ",
              h.sizes(), " and ", c.sizes());
  const int64_t L = h.size(0), B = h.size(1), H = h.size(2);
  TORCH_CHECK(L >= 1, "decoder_step: needs at least one layer");
  TORCH_CHECK(x.dim() == 2 && x.size(0) == B, "decoder_step: expected x of size [", B, ", E], got ", x.sizes());
  TORCH_CHECK(memory.dim() == 3 && memory.size(0) == B, "decoder_step: expected memory of size [", B,
              ", S, M], got ", memory.sizes());
  const int64_t S = memory.size(1), M = memory.size(2);
  TORCH_CHECK(S >= 1, "decoder_step: memory must have at least one source position");
  TORCH_CHECK(static_cast<int64_t>(w_cat.size()) == L && static_cast<int64_t>(b_cat.size()) == L,
              "decoder_step: expected ", L, " layer weights and biases, got ", w_cat.size(), " and ", b_cat.size());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "decoder_step: CPU kernel supports float32 and float64, got ",
              dtype);
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == dtype, "decoder_step: ", name, " must have the type ", dtype, ", got type ",
                t.scalar_type());
    TORCH_CHECK(t.device().is_cpu(), "decoder_step: ", name, " must be a CPU tensor, got ", t.device());
  };
  for (auto& [t, n] : {std::pair<const at::Tensor&, const char*>{h, "h"}, {c, "c"}, {memory, "memory"},
                       {keys, "keys"}, {w_out, "w_out"}, {x, "x"}})
    same(t, n);
  if (feed) {
    same(*feed, "feed");
    check_2d(*feed, "feed", B, H);
  }
  TORCH_CHECK(keys.dim() == 3 && keys.size(0) == B && keys.size(1) == S, "decoder_step: expected keys of size [", B,
              ", ", S, ", K], got ", keys.sizes());
  const bool additive = score == "additive";
  TORCH_CHECK(additive || score == "dot", "decoder_step: score must be 'dot' or 'additive', got '", score, "'");
  if (additive) {
    TORCH_CHECK(w_query && v, "decoder_step: additive scores need w_query and v");
    same(*w_query, "w_query");
    same(*v, "v");
    const int64_t A = keys.size(2);
    check_2d(*w_query, "w_query", A, H);
    TORCH_CHECK(v->dim() == 1 && v->size(0) == A, "decoder_step: expected v of size [", A, "], got ", v->sizes());
    if (b_query) {
      same(*b_query, "b_query");
      TORCH_CHECK(b_query->dim() == 1 && b_query->size(0) == A, "decoder_step: expected b_query of size [", A,
                  "], got ", b_query->sizes());
    }
  } else if (w_query) {
    // general attention scored as (W h)·m_s: keys is memory itself and w_query = W [M, H] projects the query
    same(*w_query, "w_query");
    check_2d(*w_query, "w_query", keys.size(2), H);
  } else {
    TORCH_CHECK(keys.size(2) == H, "decoder_step: dot scores need keys of size [", B, ", ", S, ", ", H, "], got ",
                keys.sizes());
  }
  check_2d(w_out, "w_out", H, M + H);
  if (b_out) {
    same(*b_out, "b_out");
    TORCH_CHECK(b_out->dim() == 1 && b_out->size(0) == H, "decoder_step: expected b_out of size [", H, "], got ",
                b_out->sizes());
  }
  at::Tensor len;
  if (lengths) {
    TORCH_CHECK(lengths->device().is_cpu(), "decoder_step: memory_lengths must be on the CPU like memory, got ",
                lengths->device());
    TORCH_CHECK(!at::isFloatingType(lengths->scalar_type()) && lengths->scalar_type() != at::kBool,
                "decoder_step: memory_lengths must be an integer tensor, got ", lengths->scalar_type());
    TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B, "decoder_step: expected memory_lengths of size [", B,
                "], got ", lengths->sizes());
    len = lengths->to(at::kLong).contiguous();
    if (B > 0) {
      auto [lo, hi] = at::aminmax(len);
      TORCH_CHECK(lo.item<int64_t>() >= 1 && hi.item<int64_t>() <= S,
                  "decoder_step: every memory length must be in [1, ", S, "], got ", len);
    }
  }

  auto h_new = at::empty({L, B, H}, x.options());
  auto c_new = at::empty({L, B, H}, x.options());
  // ---- LSTM stack: one GEMM per layer over [input; h_l] against [w_ih | w_hh] ----
  c_new.copy_(c);  // the cell kernel updates c in place
  at::Tensor inp = x;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& w = w_cat[l];
    same(w, "w_cat");
    const int64_t in = inp.size(1) + (l == 0 && feed ? H : 0);
    TORCH_CHECK(w.dim() == 2 && w.size(0) == 4 * H && w.size(1) == in + H, "decoder_step: expected layer ", l,
                " weight [w_ih | w_hh] of size [", 4 * H, ", ", in + H, "], got ", w.sizes(),
                l == 0 ? " (input size E, plus H with input feeding)" : "");
    std::optional<at::Tensor> bias = b_cat.get(l);
    if (bias) {
      same(*bias, "b_cat");
      TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 4 * H, "decoder_step: expected layer ", l,
                  " bias of size [", 4 * H, "], got ", bias->sizes());
    }
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
                                 attn.data_ptr<scalar_t>(), context.data_ptr<scalar_t>(), B, S, keys.size(2), M});
  });
  // ---- combine: h̃ = tanh(w_out · [context; h_top] + b_out) ----
  at::Tensor out = step_linear(at::cat({context, top}, 1), w_out, b_out, /*tanh_out=*/true);
  return {out, h_new, c_new, attn};
}

}  // namespace fused_s2s::cpu
