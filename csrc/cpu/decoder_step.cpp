// The fused decoder step on CPU: every sub-step in C++, no Python in between. The GEMMs (one per layer
// over [input; h] against the pre-concatenated [w_ih | w_hh], and the combine) go through oneDNN
// (gemm.h); the cell pointwise pass, the masked softmax and the additive score are plain loops here.
#include "decoder_step.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <vector>

#include "gemm.h"

namespace fused_s2s::cpu {
namespace {

template <typename T>
inline T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

// gates [B, 4H] (i, f, g, o, biases already added), c [B, H] (row stride c_stride) -> h_out, c_out [B, H]
template <typename T>
void cell_pointwise(const T* gates, const T* c, T* h_out, T* c_out, int64_t B, int64_t H) {
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / std::max<int64_t>(H, 1)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* g = gates + b * 4 * H;
      for (int64_t j = 0; j < H; ++j) {
        T i = sigmoid(g[j]), f = sigmoid(g[H + j]), gg = std::tanh(g[2 * H + j]), o = sigmoid(g[3 * H + j]);
        T cn = f * c[b * H + j] + i * gg;
        c_out[b * H + j] = cn;
        h_out[b * H + j] = o * std::tanh(cn);
      }
    }
  });
}

// scores [B, S] in place -> softmax over the first len_b entries, exact zeros after.
template <typename T>
void masked_softmax(T* scores, const int64_t* lengths, int64_t B, int64_t S) {
  at::parallel_for(0, B, std::max<int64_t>(16, 16384 / std::max<int64_t>(S, 1)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* row = scores + b * S;
      int64_t n = lengths ? lengths[b] : S;
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t s = 0; s < n; ++s) mx = std::max(mx, row[s]);
      T sum = 0;
      for (int64_t s = 0; s < n; ++s) {
        row[s] = std::exp(row[s] - mx);
        sum += row[s];
      }
      T inv = T(1) / sum;
      for (int64_t s = 0; s < n; ++s) row[s] *= inv;
      for (int64_t s = n; s < S; ++s) row[s] = 0;
    }
  });
}

// scores[b, s] = v · tanh(keys[b, s] + q[b]) for s < len_b; keys [B, S, A], q [B, A], v [A]
template <typename T>
void additive_scores(const T* keys, const T* q, const T* v, const int64_t* lengths, T* scores, int64_t B,
                     int64_t S, int64_t A) {
  at::parallel_for(0, B * S, std::max<int64_t>(8, 16384 / std::max<int64_t>(A, 1)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      int64_t b = i / S, s = i % S;
      if (lengths && s >= lengths[b]) continue;  // masked anyway
      const T* k = keys + i * A;
      const T* qb = q + b * A;
      T acc = 0;
      for (int64_t a = 0; a < A; ++a) acc += v[a] * std::tanh(k[a] + qb[a]);
      scores[i] = acc;
    }
  });
}

// w in oneDNN's blocked layout for `rows`-row inputs, packed once and then reused: a decoder calls the step
// with the same weights every step, and unpacked weights get reordered by oneDNN on every call (at H512 that
// reorder costs more than the GEMM at B8). The cache holds the packed copy only (the weight itself is held
// weakly), is keyed on (weight, version counter, rows), so an in-place update of the weight repacks it, and
// keeps the 16 most recent entries.
at::Tensor packed_weight(const at::Tensor& w, int64_t rows) {
  if (!onednn_linear_available(w.scalar_type())) return w;
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
  at::Tensor packed = pack_weight(w.contiguous(), rows);
  cache.insert(cache.begin(), Entry{c10::weak_intrusive_ptr<c10::TensorImpl>(w.getIntrusivePtr()), version, rows, packed});
  if (cache.size() > 16) cache.pop_back();
  return packed;
}

// One step's GEMM. At B = 1 it is a matrix-vector product, bandwidth bound: ATen's (MKL) gemv reads the
// plain weight as fast as oneDNN reads the packed one (~220 us for [2048, 1536] fp32, one thread), and it
// does not fork an OpenMP team, whose barrier costs milliseconds when the other core is busy (measured
// 2026-11-23 with both cores loaded: gemv 250 us, oneDNN packed 12 ms). Above B = 1 the packed oneDNN
// GEMM wins (B8: ~550 us packed vs ~1.1 ms MKL, one thread).
at::Tensor step_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  if (x.size(0) == 1) return at::linear(x, w, bias);
  return fast_linear(x, packed_weight(w, x.size(0)), bias);
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
  at::Tensor inp = feed ? at::cat({x, *feed}, 1) : x;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& w = w_cat[l];
    same(w, "w_cat");
    const int64_t in = inp.size(1);
    TORCH_CHECK(w.dim() == 2 && w.size(0) == 4 * H && w.size(1) == in + H, "decoder_step: expected layer ", l,
                " weight [w_ih | w_hh] of size [", 4 * H, ", ", in + H, "], got ", w.sizes(),
                l == 0 ? " (input size E, plus H with input feeding)" : "");
    std::optional<at::Tensor> bias = b_cat.get(l);
    if (bias) {
      same(*bias, "b_cat");
      TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 4 * H, "decoder_step: expected layer ", l,
                  " bias of size [", 4 * H, "], got ", bias->sizes());
    }
    at::Tensor gates = step_linear(at::cat({inp, h[l]}, 1), w, bias);  // [B, 4H]
    at::Tensor c_l = c[l].contiguous();
    AT_DISPATCH_FLOATING_TYPES(dtype, "decoder_step_cell", [&] {
      cell_pointwise<scalar_t>(gates.data_ptr<scalar_t>(), c_l.data_ptr<scalar_t>(), h_new[l].data_ptr<scalar_t>(),
                               c_new[l].data_ptr<scalar_t>(), B, H);
    });
    inp = h_new[l];
  }
  at::Tensor top = h_new[L - 1];  // [B, H]
  // ---- attention ----
  at::Tensor attn;
  const int64_t* lp = lengths ? len.data_ptr<int64_t>() : nullptr;
  if (additive) {
    at::Tensor q = fast_linear(top, w_query->contiguous(), b_query);  // [B, A]
    at::Tensor k = keys.contiguous(), vv = v->contiguous();
    attn = at::empty({B, S}, x.options());
    AT_DISPATCH_FLOATING_TYPES(dtype, "decoder_step_additive", [&] {
      additive_scores<scalar_t>(k.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), vv.data_ptr<scalar_t>(), lp,
                                attn.data_ptr<scalar_t>(), B, S, keys.size(2));
    });
  } else {
    attn = at::bmm(keys, top.unsqueeze(2)).squeeze(2);  // [B, S]
    if (scale != 1.0) attn.mul_(scale);
    attn = attn.contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(dtype, "decoder_step_softmax",
                             [&] { masked_softmax<scalar_t>(attn.data_ptr<scalar_t>(), lp, B, S); });
  at::Tensor context = at::bmm(attn.unsqueeze(1), memory).squeeze(1);  // [B, M]
  // ---- combine: h̃ = tanh(w_out · [context; h_top] + b_out) ----
  at::Tensor out = step_linear(at::cat({context, top}, 1), w_out, b_out);
  out.tanh_();
  return {out, h_new, c_new, attn};
}

}  // namespace fused_s2s::cpu
