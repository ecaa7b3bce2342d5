// Fused attention (see attention.h): score, source-padding mask, softmax and context in one pass over the
// source per query, with an online softmax (running max and sum); backward recomputes the probabilities
// from the saved log-sum-exp (flash-attention style), so nothing of size [B, T, S] is saved.
#include "attention.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

namespace fused_s2s::cpu {
namespace {

void check_inputs(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                  const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& v) {
  TORCH_CHECK(query.dim() == 3 && keys.dim() == 3 && values.dim() == 3,
              "attention: query, keys and values must be 3-D ([B, T, D], [B, S, D], [B, S, M]), got ", query.sizes(),
              ", ", keys.sizes(), ", ", values.sizes());
  const int64_t B = query.size(0), D = query.size(2), S = keys.size(1);
  TORCH_CHECK(keys.size(0) == B && values.size(0) == B, "attention: batch sizes disagree: query ", B, ", keys ",
              keys.size(0), ", values ", values.size(0));
  TORCH_CHECK(keys.size(2) == D, "attention: keys must have the query's feature size ", D, ", got ", keys.size(2));
  TORCH_CHECK(values.size(1) == S, "attention: values must have ", S, " source positions, got ", values.size(1));
  TORCH_CHECK(S > 0, "attention: the source must have at least one position");
  TORCH_CHECK(query.scalar_type() == at::kFloat || query.scalar_type() == at::kDouble,
              "attention: the CPU kernel takes float32 or float64, got ", query.scalar_type());
  for (const at::Tensor* t : {&keys, &values})
    TORCH_CHECK(t->scalar_type() == query.scalar_type() && t->device() == query.device(),
                "attention: every tensor must match query's dtype and device");
  if (v.has_value())
    TORCH_CHECK(v->dim() == 1 && v->size(0) == D && v->scalar_type() == query.scalar_type(),
                "attention: v must be [", D, "] of query's dtype, got ", v->sizes());
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B, "attention: memory_lengths must be [", B, "], got ",
                lengths->sizes());
    TORCH_CHECK(at::isIntegralType(lengths->scalar_type(), /*includeBool=*/false),
                "attention: memory_lengths must be an integer tensor, got ", lengths->scalar_type());
    const at::Tensor l = lengths->to(at::kCPU, at::kLong);
    const int64_t lo = l.min().item<int64_t>(), hi = l.max().item<int64_t>();
    TORCH_CHECK(lo >= 1 && hi <= S, "attention: every memory length must be in [1, ", S, "], got values in [", lo,
                ", ", hi, "]");
  }
}

std::vector<int64_t> source_lengths(const std::optional<at::Tensor>& lengths, int64_t B, int64_t S) {
  if (!lengths.has_value()) return std::vector<int64_t>(B, S);
  const at::Tensor l = lengths->to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + B);
}

// score of one (query, key) pair
template <typename T>
inline T score(const T* q, const T* k, const T* v, int64_t D, T scale) {
  T s = 0;
  if (v == nullptr) {
    for (int64_t d = 0; d < D; ++d) s += q[d] * k[d];
    return s * scale;
  }
  for (int64_t d = 0; d < D; ++d) s += v[d] * std::tanh(q[d] + k[d]);
  return s;
}

template <typename T>
void forward_kernel(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values, const T* v,
                    const std::vector<int64_t>& lens, T scale, at::Tensor& context, at::Tensor& lse,
                    at::Tensor& weights) {
  const int64_t B = query.size(0), Tq = query.size(1), D = query.size(2), S = keys.size(1), M = values.size(2);
  const T* qp = query.data_ptr<T>();
  const T* kp = keys.data_ptr<T>();
  const T* vp = values.data_ptr<T>();
  T* cp = context.data_ptr<T>();
  T* lp = lse.data_ptr<T>();
  T* wp = weights.numel() ? weights.data_ptr<T>() : nullptr;
  at::parallel_for(0, B * Tq, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / Tq, len = lens[b];
      const T* q = qp + bt * D;
      T* ctx = cp + bt * M;
      for (int64_t m = 0; m < M; ++m) ctx[m] = 0;
      T run_max = -std::numeric_limits<T>::infinity(), run_sum = 0;
      bool nan = false;
      for (int64_t s = 0; s < len; ++s) {
        const T sc = score(q, kp + (b * S + s) * D, v, D, scale);
        if (std::isnan(sc)) nan = true;
        const T new_max = std::max(run_max, sc);
        const T rescale = std::exp(run_max - new_max);  // exp(-inf) = 0 at the first position
        const T p = std::exp(sc - new_max);
        run_sum = run_sum * rescale + p;
        const T* val = vp + (b * S + s) * M;
        for (int64_t m = 0; m < M; ++m) ctx[m] = ctx[m] * rescale + p * val[m];
        run_max = new_max;
      }
      const T inv = T(1) / run_sum;
      for (int64_t m = 0; m < M; ++m) ctx[m] = nan ? std::numeric_limits<T>::quiet_NaN() : ctx[m] * inv;
      const T row_lse = nan ? std::numeric_limits<T>::quiet_NaN() : run_max + std::log(run_sum);
      lp[bt] = row_lse;
      if (wp != nullptr) {
        T* w = wp + bt * S;
        for (int64_t s = 0; s < S; ++s)
          w[s] = s < len ? std::exp(score(q, kp + (b * S + s) * D, v, D, scale) - row_lse) : T(0);
      }
    }
  });
}

template <typename T>
void backward_kernel(const at::Tensor& d_context, const at::Tensor& query, const at::Tensor& keys,
                     const at::Tensor& values, const T* v, const std::vector<int64_t>& lens, T scale,
                     const at::Tensor& context, const at::Tensor& lse, at::Tensor& d_query, at::Tensor& d_keys,
                     at::Tensor& d_values, at::Tensor& d_v_rows) {
  const int64_t B = query.size(0), Tq = query.size(1), D = query.size(2), S = keys.size(1), M = values.size(2);
  const T *dcp = d_context.data_ptr<T>(), *qp = query.data_ptr<T>(), *kp = keys.data_ptr<T>();
  const T *vp = values.data_ptr<T>(), *cp = context.data_ptr<T>(), *lp = lse.data_ptr<T>();
  T *dqp = d_query.data_ptr<T>(), *dkp = d_keys.data_ptr<T>(), *dvalp = d_values.data_ptr<T>();
  T* dvp = v != nullptr ? d_v_rows.data_ptr<T>() : nullptr;  // [B, D]: one row per batch entry, summed after
  // Parallel over the batch: d_keys, d_values and d_v rows of one b are written by one thread only.
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t len = lens[b];
      for (int64_t t = 0; t < Tq; ++t) {
        const int64_t bt = b * Tq + t;
        const T* q = qp + bt * D;
        const T* dctx = dcp + bt * M;
        T delta = 0;  // dctx · context = Σ_s p_s (dctx · values_s)
        for (int64_t m = 0; m < M; ++m) delta += dctx[m] * cp[bt * M + m];
        T* dq = dqp + bt * D;
        for (int64_t s = 0; s < len; ++s) {
          const T* k = kp + (b * S + s) * D;
          const T* val = vp + (b * S + s) * M;
          const T p = std::exp(score(q, k, v, D, scale) - lp[bt]);
          T dp = 0;
          T* dval = dvalp + (b * S + s) * M;
          for (int64_t m = 0; m < M; ++m) {
            dp += dctx[m] * val[m];
            dval[m] += p * dctx[m];
          }
          const T ds = p * (dp - delta);  // d score
          T* dk = dkp + (b * S + s) * D;
          if (v == nullptr) {
            for (int64_t d = 0; d < D; ++d) {
              dq[d] += ds * scale * k[d];
              dk[d] += ds * scale * q[d];
            }
          } else {
            T* dv = dvp + b * D;
            for (int64_t d = 0; d < D; ++d) {
              const T u = std::tanh(q[d] + k[d]);
              const T g = ds * v[d] * (T(1) - u * u);
              dq[d] += g;
              dk[d] += g;
              dv[d] += ds * u;
            }
          }
        }
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_fwd(const at::Tensor& query_in, const at::Tensor& keys_in,
                                                             const at::Tensor& values_in,
                                                             const std::optional<at::Tensor>& lengths,
                                                             const std::optional<at::Tensor>& v_in, double scale,
                                                             bool return_weights) {
  check_inputs(query_in, keys_in, values_in, lengths, v_in);
  const at::Tensor query = query_in.contiguous(), keys = keys_in.contiguous(), values = values_in.contiguous();
  const int64_t B = query.size(0), Tq = query.size(1), S = keys.size(1), M = values.size(2);
  at::Tensor context = at::empty({B, Tq, M}, query.options());
  at::Tensor lse = at::empty({B, Tq}, query.options());
  at::Tensor weights = return_weights ? at::empty({B, Tq, S}, query.options()) : at::empty({0}, query.options());
  const std::vector<int64_t> lens = source_lengths(lengths, B, S);
  const std::optional<at::Tensor> v = v_in.has_value() ? std::optional<at::Tensor>(v_in->contiguous()) : std::nullopt;
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "attention_fwd", [&] {
    forward_kernel<scalar_t>(query, keys, values, v.has_value() ? v->data_ptr<scalar_t>() : nullptr, lens,
                             static_cast<scalar_t>(scale), context, lse, weights);
  });
  return {context, lse, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_bwd(
    const at::Tensor& d_context_in, const at::Tensor& query_in, const at::Tensor& keys_in,
    const at::Tensor& values_in, const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& v_in,
    double scale, const at::Tensor& context_in, const at::Tensor& lse_in) {
  check_inputs(query_in, keys_in, values_in, lengths, v_in);
  // The kernel indexes these by query's and values' sizes: a mismatch would read or write out of bounds.
  // Owned storage: an IntArrayRef over a braced list would dangle once the statement ends.
  const std::vector<int64_t> context_dims{query_in.size(0), query_in.size(1), values_in.size(2)};
  const at::IntArrayRef context_size(context_dims);
  TORCH_CHECK(d_context_in.sizes() == context_size && context_in.sizes() == context_size,
              "attention_bwd: d_context and context must be ", context_size, ", got ", d_context_in.sizes(), " and ",
              context_in.sizes());
  TORCH_CHECK(lse_in.sizes() == context_size.slice(0, 2), "attention_bwd: lse must be ", context_size.slice(0, 2),
              ", got ", lse_in.sizes());
  for (const at::Tensor* t : {&d_context_in, &context_in, &lse_in})
    TORCH_CHECK(t->scalar_type() == query_in.scalar_type() && t->device() == query_in.device(),
                "attention_bwd: d_context, context and lse must match query's dtype and device (",
                query_in.scalar_type(), ", ", query_in.device(), "), got ", t->scalar_type(), ", ", t->device());
  const at::Tensor query = query_in.contiguous(), keys = keys_in.contiguous(), values = values_in.contiguous();
  const at::Tensor d_context = d_context_in.contiguous(), context = context_in.contiguous(), lse = lse_in.contiguous();
  const int64_t B = query.size(0), S = keys.size(1), D = query.size(2);
  at::Tensor d_query = at::zeros_like(query), d_keys = at::zeros_like(keys), d_values = at::zeros_like(values);
  const std::optional<at::Tensor> v = v_in.has_value() ? std::optional<at::Tensor>(v_in->contiguous()) : std::nullopt;
  at::Tensor d_v_rows = v.has_value() ? at::zeros({B, D}, query.options()) : at::empty({0}, query.options());
  const std::vector<int64_t> lens = source_lengths(lengths, B, S);
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "attention_bwd", [&] {
    backward_kernel<scalar_t>(d_context, query, keys, values, v.has_value() ? v->data_ptr<scalar_t>() : nullptr,
                              lens, static_cast<scalar_t>(scale), context, lse, d_query, d_keys, d_values, d_v_rows);
  });
  at::Tensor d_v = v.has_value() ? d_v_rows.sum(0) : at::empty({0}, query.options());
  return {d_query, d_keys, d_values, d_v};
}

}  // namespace fused_s2s::cpu
