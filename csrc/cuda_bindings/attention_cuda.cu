// Torch binding of the fused attention CUDA kernels (csrc/cuda/attention.cuh): the CUDA implementations of the
// existing ops fused_s2s::attention_fwd / attention_bwd (schemas in csrc/attention_ops.cpp), registered under
// the CUDA dispatch key. So the ops' fake kernels and autograd formula (fused_s2s/ops/attention.py) serve the
// CPU and CUDA kernels alike, and ops.attention(backend="cuda") calls the same op as backend="cpu": the
// tensors' device picks the kernel.
//
// Semantics are the CPU op's (csrc/cpu/attention.cpp), with two differences of dtype, both because the kernels
// hold 16-bit tensors natively (fp32 arithmetic inside):
//   - float32, bfloat16 and float16 (not float64: ops.attention routes float64 elsewhere);
//   - lse is float32 for every input dtype (for float32 inputs that is the CPU op's query dtype); the backward
//     takes it as float32. The fake kernel in fused_s2s/ops/attention.py says the same.
// The projections of general / additive attention run outside, in ops.attention (at::linear / F.linear),
// exactly as for the CPU op.
//
// Built only with a CUDA torch (CMakeLists.txt, FUSED_S2S_WITH_CUDA); cuda_compile_check compiles it here
// against torch's headers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>
#include <optional>
#include <tuple>

#include "cuda/attention.cuh"
#include "cuda_bindings/binding_common.cuh"

namespace fused_s2s::cuda {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

struct Sizes {
  int64_t B, Tq, S, D, M;
};

// The CPU op's checks (csrc/cpu/attention.cpp), word for word where they are shared, plus device and dtype.
Sizes check_inputs(const char* op, const Tensor& query, const Tensor& keys, const Tensor& values, const OptTensor& v) {
  TORCH_CHECK(query.dim() == 3 && keys.dim() == 3 && values.dim() == 3, op,
              ": expected query [B, T, D], keys [B, S, D] and values [B, S, M], got ", query.sizes(), ", ",
              keys.sizes(), " and ", values.sizes());
  const Sizes s{query.size(0), query.size(1), keys.size(1), query.size(2), values.size(2)};
  TORCH_CHECK(keys.size(0) == s.B && values.size(0) == s.B, op, ": batch sizes disagree: query ", s.B, ", keys ",
              keys.size(0), ", values ", values.size(0));
  TORCH_CHECK(keys.size(2) == s.D, op, ": keys must have the query's feature size ", s.D, ", got ", keys.size(2));
  TORCH_CHECK(values.size(1) == s.S, op, ": values must have ", s.S, " source positions, got ", values.size(1));
  TORCH_CHECK(s.S > 0, op, ": the source must have at least one position");
  const auto dtype = query.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": the CUDA kernels take float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(query.is_cuda(), op, ": the CUDA kernels need CUDA tensors, got query on ", query.device());
  for (const Tensor* t : {&keys, &values})
    TORCH_CHECK(t->scalar_type() == dtype && t->device() == query.device(), op,
                ": every tensor must match query's dtype and device (", dtype, ", ", query.device(), "), got ",
                t->scalar_type(), ", ", t->device());
  if (v.has_value())
    TORCH_CHECK(v->dim() == 1 && v->size(0) == s.D && v->scalar_type() == dtype && v->device() == query.device(), op,
                ": v must be [", s.D, "] of query's dtype and device, got ", v->sizes(), " ", v->scalar_type(), " on ",
                v->device());
  // The kernels index rows, positions and features with int (and offsets with int64).
  TORCH_CHECK(s.B * s.Tq <= INT_MAX / 64 && s.S <= INT_MAX && s.D <= INT_MAX && s.M <= INT_MAX, op,
              ": sizes too large for the CUDA kernels: B=", s.B, " T=", s.Tq, " S=", s.S, " D=", s.D, " M=", s.M);
  return s;
}

AttentionPlan plan_or_throw(const char* op, const Sizes& s, const binding::DeviceLimits& dev) {
  AttentionPlan plan = attention_plan(static_cast<int>(s.B), static_cast<int>(s.Tq), static_cast<int>(s.S),
                                      static_cast<int>(s.D), static_cast<int>(s.M), dev.sm_count,
                                      static_cast<std::size_t>(dev.max_smem_per_cta));
  TORCH_CHECK(plan.fits(), op, ": ", plan.reason);
  // Grids: B·T·splits CTAs forward, B·splits backward (int, and at most 2^31 - 1 blocks).
  TORCH_CHECK(s.B * s.Tq * plan.splits <= INT_MAX, op, ": B=", s.B, " T=", s.Tq, " S=", s.S, " needs ",
              s.B * s.Tq * plan.splits, " CTAs, more than a grid holds");
  return plan;
}

// fused_s2s::attention_fwd -> context [B, T, M] (query's dtype), lse [B, T] float32, weights [B, T, S] (query's
// dtype, 0 at padding) or empty.
std::tuple<Tensor, Tensor, Tensor> attention_fwd_cuda(const Tensor& query, const Tensor& keys, const Tensor& values,
                                                      const OptTensor& lengths, const OptTensor& v, double scale,
                                                      bool return_weights) {
  const char* op = "attention";
  const Sizes s = check_inputs(op, query, keys, values, v);
  const c10::cuda::CUDAGuard guard(query.device());
  const OptTensor len = binding::device_lengths(lengths, s.B, s.S, query.device(), op);
  const auto opts = query.options();
  const auto f32 = opts.dtype(at::kFloat);
  Tensor context = at::empty({s.B, s.Tq, s.M}, opts);
  Tensor lse = at::empty({s.B, s.Tq}, f32);
  Tensor weights = return_weights ? at::empty({s.B, s.Tq, s.S}, opts) : at::empty({0}, opts);
  if (s.B * s.Tq == 0) return {context, lse, weights};

  const binding::DeviceLimits dev = binding::current_device_limits();
  const AttentionPlan plan = plan_or_throw(op, s, dev);
  const Tensor q = query.contiguous(), k = keys.contiguous(), val = values.contiguous();
  const OptTensor vv = v.has_value() ? OptTensor(v->contiguous()) : std::nullopt;
  const bool f32_weights = query.scalar_type() == at::kFloat;
  // Raw scores for the weights: for float32 the weights buffer itself (attention.cuh allows it).
  const Tensor scores = return_weights && !f32_weights ? at::empty({s.B * s.Tq * s.S}, f32) : Tensor();
  const Tensor ws = at::empty({static_cast<int64_t>(plan.fwd_workspace_floats)}, f32);
  const int64_t rows = s.B * s.Tq;

  binding::dispatch_storage(query.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    AttentionFwdParams<T> p{};
    p.query = binding::cptr<T>(q);
    p.keys = binding::cptr<T>(k);
    p.values = binding::cptr<T>(val);
    p.lengths = len.has_value() ? len->data_ptr<int64_t>() : nullptr;
    p.v = vv.has_value() ? binding::cptr<T>(*vv) : nullptr;
    p.scale = static_cast<float>(scale);
    p.context = binding::ptr<T>(context);
    p.ldc = s.M;
    p.lse = lse.data_ptr<float>();
    p.weights = return_weights ? binding::ptr<T>(weights) : nullptr;
    p.scores = !return_weights ? nullptr : (f32_weights ? weights.data_ptr<float>() : scores.data_ptr<float>());
    p.part_ml = plan.splits > 1 ? ws.data_ptr<float>() : nullptr;
    p.part_ctx = plan.splits > 1 ? ws.data_ptr<float>() + rows * plan.splits * 2 : nullptr;
    p.B = static_cast<int>(s.B);
    p.Tq = static_cast<int>(s.Tq);
    p.S = static_cast<int>(s.S);
    p.D = static_cast<int>(s.D);
    p.M = static_cast<int>(s.M);
    p.splits = plan.splits;
    p.chunk = plan.chunk;
    attention_fwd_launch(p, vv.has_value(), plan.threads, binding::current_stream_launch(dev));
  });
  return {context, lse, weights};
}

// fused_s2s::attention_bwd -> d_query [B, T, D], d_keys [B, S, D], d_values [B, S, M] (0 at padding), d_v [D]
// (empty without v), all in query's dtype.
std::tuple<Tensor, Tensor, Tensor, Tensor> attention_bwd_cuda(const Tensor& d_context, const Tensor& query,
                                                              const Tensor& keys, const Tensor& values,
                                                              const OptTensor& lengths, const OptTensor& v,
                                                              double scale, const Tensor& context, const Tensor& lse) {
  const char* op = "attention_bwd";
  const Sizes s = check_inputs(op, query, keys, values, v);
  const at::IntArrayRef context_size{s.B, s.Tq, s.M};
  TORCH_CHECK(d_context.sizes() == context_size && context.sizes() == context_size, op,
              ": d_context and context must be ", context_size, ", got ", d_context.sizes(), " and ", context.sizes());
  TORCH_CHECK(lse.sizes() == context_size.slice(0, 2), op, ": lse must be ", context_size.slice(0, 2), ", got ",
              lse.sizes());
  for (const Tensor* t : {&d_context, &context})
    TORCH_CHECK(t->scalar_type() == query.scalar_type() && t->device() == query.device(), op,
                ": d_context and context must match query's dtype and device (", query.scalar_type(), ", ",
                query.device(), "), got ", t->scalar_type(), ", ", t->device());
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.device() == query.device(), op,
              ": lse must be the forward's float32 log-sum-exp on ", query.device(), ", got ", lse.scalar_type(),
              ", ", lse.device());
  const c10::cuda::CUDAGuard guard(query.device());
  const OptTensor len = binding::device_lengths(lengths, s.B, s.S, query.device(), op);
  const auto opts = query.options();
  const auto f32 = opts.dtype(at::kFloat);
  Tensor d_query = at::empty({s.B, s.Tq, s.D}, opts);
  if (s.B * s.Tq == 0)
    return {d_query, at::zeros({s.B, s.S, s.D}, opts), at::zeros({s.B, s.S, s.M}, opts),
            v.has_value() ? at::zeros({s.D}, opts) : at::empty({0}, opts)};
  Tensor d_keys = at::empty({s.B, s.S, s.D}, opts), d_values = at::empty({s.B, s.S, s.M}, opts);
  Tensor d_v = v.has_value() ? at::empty({s.D}, opts) : at::empty({0}, opts);

  const binding::DeviceLimits dev = binding::current_device_limits();
  const AttentionPlan plan = plan_or_throw(op, s, dev);
  const int warps = plan.threads / 32;
  const int64_t P = static_cast<int64_t>(plan.splits) * warps;
  const Tensor ws = at::empty({static_cast<int64_t>(plan.bwd_workspace_floats)}, f32);
  const Tensor dctx = d_context.contiguous(), q = query.contiguous(), k = keys.contiguous(),
               val = values.contiguous(), ctx = context.contiguous(), l = lse.contiguous();
  const OptTensor vv = v.has_value() ? OptTensor(v->contiguous()) : std::nullopt;

  binding::dispatch_storage(query.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    AttentionBwdParams<T> p{};
    p.d_context = binding::cptr<T>(dctx);
    p.query = binding::cptr<T>(q);
    p.keys = binding::cptr<T>(k);
    p.values = binding::cptr<T>(val);
    p.lengths = len.has_value() ? len->data_ptr<int64_t>() : nullptr;
    p.v = vv.has_value() ? binding::cptr<T>(*vv) : nullptr;
    p.scale = static_cast<float>(scale);
    p.context = binding::cptr<T>(ctx);
    p.lse = l.data_ptr<float>();
    p.d_query = binding::ptr<T>(d_query);
    p.d_keys = binding::ptr<T>(d_keys);
    p.d_values = binding::ptr<T>(d_values);
    p.d_v = vv.has_value() ? binding::ptr<T>(d_v) : nullptr;
    p.dq_part = ws.data_ptr<float>();
    p.dv_part = ws.data_ptr<float>() + s.B * P * s.Tq * s.D;  // [B, P, D] after dq_part [B, P, Tq, D]
    p.B = static_cast<int>(s.B);
    p.Tq = static_cast<int>(s.Tq);
    p.S = static_cast<int>(s.S);
    p.D = static_cast<int>(s.D);
    p.M = static_cast<int>(s.M);
    p.splits = plan.splits;
    p.chunk = plan.chunk;
    p.warps = warps;
    attention_bwd_launch(p, vv.has_value(), binding::current_stream_launch(dev));
  });
  return {d_query, d_keys, d_values, d_v};
}

}  // namespace
}  // namespace fused_s2s::cuda

TORCH_LIBRARY_IMPL(fused_s2s, CUDA, m) {
  m.impl("attention_fwd", &fused_s2s::cuda::attention_fwd_cuda);
  m.impl("attention_bwd", &fused_s2s::cuda::attention_bwd_cuda);
}
