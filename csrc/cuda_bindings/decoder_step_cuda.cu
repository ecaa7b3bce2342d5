// Torch binding of the fused decoder-step CUDA kernels (csrc/cuda/decoder_step.cuh): the CUDA implementation of
// the existing op fused_s2s::decoder_step (schema and inference-only autograd rule in csrc/decoder_step_ops.cpp,
// fake kernel in fused_s2s/ops/decoder_step.py), registered under the CUDA dispatch key, so
// ops.decoder_step(backend="cuda") calls the same op as backend="cpu" and the tensors' device picks the kernel.
//
// Same schema, semantics and outputs as the CPU op (csrc/cpu/decoder_step.cpp): out [B, H], h_new [L, B, H],
// c_new [L, B, H], attn [B, S], all in x's dtype; float32, bfloat16 or float16 (fp32 arithmetic inside).
// The launch sequence is decoder_step.cuh's:
//   each layer: GEMM gates = [input; h_l]·w_catᵀ + b (at::linear, cuBLAS, in x's dtype);
//     lower layers: decoder_lstm_cell_kernel;
//     top layer, dot scores without a query projection: decoder_cell_attention_launch (the cell fused into the
//       attention kernel, which takes h' as its query);
//     top layer with a projection (additive's w_query (+ b_query); general's w_query = W [M, H] scored against
//       memory itself): decoder_lstm_cell_kernel, GEMM q = h'·w_queryᵀ (+ b_query), attention_fwd_launch;
//   GEMM pre = [context; h']·w_outᵀ on ctx_h (the kernels write context and h' side by side: no concat), then
//   decoder_combine_tanh_kernel in place.
//
// Built only with a CUDA torch (CMakeLists.txt, FUSED_S2S_WITH_CUDA); cuda_compile_check compiles it here
// against torch's headers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>
#include <optional>
#include <string_view>
#include <tuple>

#include "cuda/decoder_step.cuh"
#include "cuda_bindings/binding_common.cuh"
#include "decoder_step_checks.h"

namespace fused_s2s::cuda {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

constexpr int kPointwiseThreads = 256;

int pointwise_grid(int64_t n) {
  const int64_t blocks = (n + kPointwiseThreads - 1) / kPointwiseThreads;
  return static_cast<int>(blocks < 65536 ? blocks : 65536);  // grid-stride kernels: any grid covers n
}

std::tuple<Tensor, Tensor, Tensor, Tensor> decoder_step_cuda(
    const Tensor& x, const OptTensor& feed, const Tensor& h, const Tensor& c, at::TensorList w_cat,
    const c10::List<OptTensor>& b_cat, c10::string_view score, const Tensor& keys, double scale,
    const OptTensor& w_query, const OptTensor& b_query, const OptTensor& v, const Tensor& memory,
    const OptTensor& lengths, const Tensor& w_out, const OptTensor& b_out) {
  // ---- checks: the CPU op's (decoder_step_checks.h), with CUDA devices and 16-bit dtypes ----
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "decoder_step: the CUDA kernels take float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(x.is_cuda(), "decoder_step: the CUDA kernels need CUDA tensors, got x on ", x.device());
  auto same = [&](const Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == dtype, "decoder_step: ", name, " must have the type ", dtype, ", got type ",
                t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "decoder_step: ", name, " must be on x's device (", x.device(), "), got ",
                t.device());
  };
  const DecoderStepSizes sizes =
      check_decoder_step(x, feed, h, c, w_cat, b_cat, score, keys, w_query, b_query, v, memory, w_out, b_out, same);
  const int64_t L = sizes.L, B = sizes.B, H = sizes.H, S = sizes.S, M = sizes.M, K = sizes.K;
  const bool additive = sizes.additive;
  TORCH_CHECK(B * (M + H) <= INT_MAX && B * 4 * H <= INT_MAX && B * S <= INT_MAX && K <= INT_MAX,
              "decoder_step: sizes too large for the CUDA kernels: B=", B, " H=", H, " S=", S, " M=", M, " K=", K);
  const bool project = w_query.has_value();

  const c10::cuda::CUDAGuard guard(x.device());
  const OptTensor len = binding::device_lengths(lengths, B, S, x.device(), "decoder_step");
  const auto opts = x.options();
  const auto f32 = opts.dtype(at::kFloat);
  Tensor h_new = at::empty({L, B, H}, opts), c_new = at::empty({L, B, H}, opts);
  Tensor attn = at::empty({B, S}, opts);
  if (B == 0) return {at::empty({0, H}, opts), h_new, c_new, attn};

  const binding::DeviceLimits dev = binding::current_device_limits();
  const binding::StreamLaunch launch = binding::current_stream_launch(dev);
  const int64_t D = project ? K : H;  // the attention's feature size: the (projected) query's
  const AttentionPlan plan = attention_plan(static_cast<int>(B), 1, static_cast<int>(S), static_cast<int>(D),
                                            static_cast<int>(M), dev.sm_count,
                                            static_cast<std::size_t>(dev.max_smem_per_cta));
  TORCH_CHECK(plan.fits(), "decoder_step: ", plan.reason);
  TORCH_CHECK(B * plan.splits <= INT_MAX, "decoder_step: B=", B, " S=", S, " needs ", B * plan.splits,
              " CTAs, more than a grid holds");
  const Tensor cc = c.contiguous(), k = keys.contiguous(), mem = memory.contiguous();
  Tensor ctx_h = at::empty({B, M + H}, opts);  // [context | h_top]: the combine GEMM's input
  Tensor lse = at::empty({B}, f32);
  const bool f32_weights = dtype == at::kFloat;
  const Tensor scores = f32_weights ? Tensor() : at::empty({B * S}, f32);  // float32: the attn buffer itself
  const Tensor ws = at::empty({static_cast<int64_t>(plan.fwd_workspace_floats)}, f32);
  const OptTensor vv = additive ? OptTensor(v->contiguous()) : std::nullopt;
  Tensor out;

  binding::dispatch_storage(dtype, "decoder_step", [&](auto tag) {
    using T = decltype(tag);
    auto cell_params = [&](const Tensor& gates, int64_t l, bool top) {
      DecoderCellParams<T> p{};
      p.gates = binding::cptr<T>(gates);
      p.c = binding::cptr<T>(cc) + l * B * H;
      p.h_new = binding::ptr<T>(h_new) + l * B * H;
      p.c_new = binding::ptr<T>(c_new) + l * B * H;
      p.h_copy = top ? binding::ptr<T>(ctx_h) + M : nullptr;
      p.ld_h_copy = M + H;
      p.B = static_cast<int>(B);
      p.H = static_cast<int>(H);
      return p;
    };
    AttentionFwdParams<T> a{};
    a.query = nullptr;
    a.keys = binding::cptr<T>(k);
    a.values = binding::cptr<T>(mem);
    a.lengths = len.has_value() ? len->data_ptr<int64_t>() : nullptr;
    a.v = additive ? binding::cptr<T>(*vv) : nullptr;
    a.scale = static_cast<float>(scale);
    a.context = binding::ptr<T>(ctx_h);
    a.ldc = M + H;
    a.lse = lse.data_ptr<float>();
    a.weights = binding::ptr<T>(attn);
    a.scores = f32_weights ? attn.data_ptr<float>() : scores.data_ptr<float>();
    a.part_ml = plan.splits > 1 ? ws.data_ptr<float>() : nullptr;
    a.part_ctx = plan.splits > 1 ? ws.data_ptr<float>() + B * plan.splits * 2 : nullptr;
    a.B = static_cast<int>(B);
    a.Tq = 1;
    a.S = static_cast<int>(S);
    a.D = static_cast<int>(D);
    a.M = static_cast<int>(M);
    a.splits = plan.splits;
    a.chunk = plan.chunk;

    // ---- LSTM stack: one GEMM per layer over [input; h_l] against [w_ih | w_hh] ----
    Tensor inp = x;
    for (int64_t l = 0; l < L; ++l) {
      const Tensor xh = l == 0 && feed.has_value() ? at::cat({x, *feed, h[0]}, 1) : at::cat({inp, h[l]}, 1);
      const Tensor gates = at::linear(xh, w_cat[l], b_cat.get(l)).contiguous();  // [B, 4H]
      const bool top = l == L - 1;
      if (top && !project) {  // the cell fused into the attention kernel, h' as the query
        decoder_cell_attention_launch(DecoderStepParams<T>{cell_params(gates, l, true), a}, plan.threads, launch);
      } else {
        launch(&decoder_lstm_cell_kernel<T>, pointwise_grid(B * H), kPointwiseThreads, std::size_t{0},
               cell_params(gates, l, top));
      }
      inp = h_new[l];
    }
    if (project) {  // the query projection needs h' first
      const Tensor q = at::linear(h_new[L - 1], *w_query, additive ? b_query : OptTensor()).contiguous();  // [B, K]
      a.query = binding::cptr<T>(q);
      attention_fwd_launch(a, additive, plan.threads, launch);
    }
    // ---- combine: out = tanh(w_out·[context; h_top] + b_out) ----
    out = at::linear(ctx_h, w_out).contiguous();  // [B, H]
    const Tensor bias = b_out.has_value() ? b_out->contiguous() : Tensor();
    launch(&decoder_combine_tanh_kernel<T>, pointwise_grid(B * H), kPointwiseThreads, std::size_t{0},
           binding::ptr<T>(out), bias.defined() ? binding::cptr<T>(bias) : nullptr, static_cast<int>(B),
           static_cast<int>(H));
  });
  return {out, h_new, c_new, attn};
}

}  // namespace
}  // namespace fused_s2s::cuda

TORCH_LIBRARY_IMPL(fused_s2s, CUDA, m) { m.impl("decoder_step", &fused_s2s::cuda::decoder_step_cuda); }
