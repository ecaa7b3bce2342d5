// Torch binding of the persistent CUDA LSTM kernels (csrc/cuda/lstm_persistent.cuh): the CUDA implementations
// of fused_s2s::cuda_lstm_layer_fwd / cuda_lstm_layer_bwd. The schemas, fake kernels and autograd are in
// fused_s2s/ops/lstm_cuda.py; the outputs are exactly the Triton ops' (fused_s2s/ops/lstm_triton.py), so the
// same autograd formula serves both.
//
// This file includes torch headers, so it lives outside csrc/cuda/ (whose *.cu the CPU-only nvcc check
// compiles without torch) and is built only when torch has CUDA (CMakeLists.txt), with FUSED_S2S_WITH_CUDA.
// tests/test_cuda_binding_compile.py compiles it here with -fsyntax-only against torch's headers.
//
// Division of work, as in the Triton op family: the input projection gx = x·W_ihᵀ + b_ih + b_hh for all
// steps is one cuBLAS GEMM (at::linear) in x's dtype; the recurrence is one cooperative launch; backward's
// dx, dW_ih, dW_hh and db are GEMMs (at::mm) on the kernel's dgates. The kernels read and write fp32 (c and
// gates always fp32); W_hh stays in x's dtype, so bf16/fp16 steps run on tensor cores.
//
// Only c10/cuda headers (streams, guards, error checks), not ATen/cuda: those pull in cuBLAS and cuSPARSE
// headers, which the CPU machines' CUDA toolkit lacks, and the compile check must build this file there.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>
#include <optional>
#include <tuple>

#include "cuda/lstm_persistent.cuh"

namespace fused_s2s::cuda {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The Python layer (fused_s2s/ops/lstm_cuda.py unsupported_reason) routes proj_size, float64 and shapes the
// plan refuses to Triton before calling these ops, so the checks below fire only on direct op calls. The
// messages are the C++ and Triton ops' (csrc/cpu/lstm_layer.cpp check_inputs), word for word where shared.
void check_inputs(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                  const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& lengths) {
  TORCH_CHECK(!w_hr.has_value(), "lstm_layer: the CUDA kernels do not support proj_size (w_hr); "
              "backend='cuda' runs such layers on Triton");
  TORCH_CHECK(x.dim() == 3, "lstm_layer: x must be [T, B, I], got ", x.sizes());
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % 4 == 0 && w_ih.size(1) == I, "lstm_layer: w_ih must be [4H, ", I,
              "], got ", w_ih.sizes());
  const int64_t H = w_ih.size(0) / 4;
  TORCH_CHECK(H > 0, "lstm_layer: hidden_size must be greater than zero");
  TORCH_CHECK(w_hh.sizes() == at::IntArrayRef({4 * H, H}), "lstm_layer: w_hh must be [", 4 * H, ", ", H,
              "], got ", w_hh.sizes());
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({B, H}), "lstm_layer: h0 must be [", B, ", ", H, "], got ", h0.sizes());
  TORCH_CHECK(c0.sizes() == at::IntArrayRef({B, H}), "lstm_layer: c0 must be [", B, ", ", H, "], got ", c0.sizes());
  for (const OptTensor* b : {&b_ih, &b_hh})
    if (b->has_value())
      TORCH_CHECK((*b)->sizes() == at::IntArrayRef({4 * H}), "lstm_layer: b_ih and b_hh must be [", 4 * H,
                  "], got ", (*b)->sizes());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "lstm_layer: the CUDA kernels take float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(x.is_cuda(), "lstm_layer: the CUDA kernels need CUDA tensors, got x on ", x.device());
  for (const Tensor* t : {&h0, &c0, &w_ih, &w_hh})
    TORCH_CHECK(t->scalar_type() == dtype && t->device() == x.device(),
                "lstm_layer: every tensor must match x's dtype and device (", dtype, ", ", x.device(), "), got ",
                t->scalar_type(), ", ", t->device());
  for (const OptTensor* b : {&b_ih, &b_hh})
    if (b->has_value())
      TORCH_CHECK((*b)->scalar_type() == dtype && (*b)->device() == x.device(),
                  "lstm_layer: every tensor must match x's dtype and device (", dtype, ", ", x.device(), "), got ",
                  (*b)->scalar_type(), ", ", (*b)->device());
  // The kernels index with int sizes (and int64 offsets).
  TORCH_CHECK(T <= INT_MAX && B <= INT_MAX && 4 * H <= INT_MAX, "lstm_layer: T, B and 4H must fit in int32, got T=",
              T, " B=", B, " H=", H);
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B, "lstm_layer: lengths must be [", B, "], got ",
                lengths->sizes());
    TORCH_CHECK(at::isIntegralType(lengths->scalar_type(), /*includeBool=*/false),
                "lstm_layer: lengths must be an integer tensor, got ", lengths->scalar_type());
    // lengths live on the CPU (PackedSequence's convention), so this reads them without a device sync; the
    // kernels trust them (a length past T would index past gx).
    const Tensor l = lengths->to(at::kCPU, at::kLong).contiguous();
    const int64_t* lp = l.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK(lp[b] >= 1 && lp[b] <= T, "lstm_layer: every length must be in [1, ", T, "], got lengths[", b,
                  "] = ", lp[b]);
  }
}

// What the plan and the launch need to know about the current device.
struct DeviceLimits {
  int index = 0;
  int sm_count = 0;
  int max_smem_per_cta = 0;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int cc_major = 0, cc_minor = 0;
  bool cooperative = false;
};

DeviceLimits current_device_limits() {
  DeviceLimits d;
  d.index = c10::cuda::current_device();
  int coop = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, d.index));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.max_smem_per_cta, cudaDevAttrMaxSharedMemoryPerBlockOptin, d.index));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, d.index));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.cc_major, cudaDevAttrComputeCapabilityMajor, d.index));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.cc_minor, cudaDevAttrComputeCapabilityMinor, d.index));
  d.cooperative = coop != 0;
  return d;
}

// The plan for this shape on the current device; an error naming the reason when the kernel cannot take it.
LstmPersistentPlan plan_or_throw(bool backward, int64_t B, int64_t H, const Tensor& w_hh, const DeviceLimits& dev) {
  TORCH_CHECK(dev.cooperative, "lstm_layer: CUDA device ", dev.index,
              " does not support cooperative launches, which the persistent CUDA LSTM kernels need");
  // The kernels are built for sm_80 and sm_90 only (mma.sync with bf16 needs sm_80): on an older GPU the
  // launch would fail with "no kernel image is available". fused_s2s/ops/lstm_cuda.py routes such devices to
  // Triton; this is for direct op calls.
  TORCH_CHECK(dev.cc_major >= 8, "lstm_layer: the persistent CUDA LSTM kernels need compute capability 8.0 or "
              "newer, CUDA device ", dev.index, " is ", dev.cc_major, ".", dev.cc_minor);
  LstmPersistentPlan plan = lstm_persistent_plan(backward, static_cast<int>(B), static_cast<int>(H),
                                                 static_cast<int>(w_hh.element_size()), dev.sm_count,
                                                 static_cast<std::size_t>(dev.max_smem_per_cta));
  TORCH_CHECK(plan.fits(), "lstm_layer: ", plan.reason);
  return plan;
}

// Raise the kernel's dynamic shared-memory limit, check that the whole grid is co-resident (the grid barrier
// deadlocks otherwise; cudaLaunchCooperativeKernel would refuse, but with a less telling error), launch.
template <typename Params>
void launch_cooperative(void (*kernel)(Params), Params params, const LstmPersistentPlan& plan, const DeviceLimits& dev,
                        const char* name) {
  // The device's opt-in limit, not this launch's size: the attribute is per function and device, so with this
  // shape's size a call from another host thread with a smaller shape could lower it between this call's
  // cudaFuncSetAttribute and its launch, which would then fail. The occupancy check and the launch use the
  // real size (plan.smem_bytes <= dev.max_smem_per_cta: the plan refuses anything larger).
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dev.max_smem_per_cta));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, plan.threads, plan.smem_bytes));
  TORCH_CHECK(static_cast<int64_t>(per_sm) * dev.sm_count >= plan.grid, "lstm_layer: ", name, " needs ", plan.grid,
              " co-resident CTAs of ", plan.threads, " threads and ", plan.smem_bytes,
              " bytes of shared memory, but the device holds ", per_sm, " per SM on ", dev.sm_count,
              " SMs (registers or shared memory taken elsewhere?)");
  void* args[] = {&params};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(plan.grid),
                                             dim3(plan.threads), args, plan.smem_bytes,
                                             c10::cuda::getCurrentCUDAStream()));
}

// Calls f with a value of W_hh's storage type: float, __nv_bfloat16 or __half (the kernels' S).
template <typename F>
void dispatch_storage(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    case at::kHalf: f(__half{}); break;
    default: TORCH_CHECK(false, "lstm_layer: the CUDA kernels take float32, bfloat16 or float16, got ", dtype);
  }
}

Tensor f32(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

OptTensor device_lengths(const OptTensor& lengths, const Tensor& x) {
  if (!lengths.has_value()) return std::nullopt;
  return lengths->to(x.device(), at::kLong).contiguous();
}

// fused_s2s::cuda_lstm_layer_fwd -> y [T,B,H], h_n [B,H], c_n [B,H] (x's dtype), and when save: gates
// [T,B,4H] (activated i, f, g, o) and cells [T,B,H], both fp32; else empty (as the Triton op).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> cuda_lstm_layer_fwd(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& lengths, bool reverse,
    bool save) {
  check_inputs(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t T = x.size(0), B = x.size(1), H = w_ih.size(0) / 4;
  const DeviceLimits dev = current_device_limits();
  const LstmPersistentPlan plan = plan_or_throw(false, B, H, w_hh, dev);

  OptTensor bias;
  if (b_ih.has_value() || b_hh.has_value())
    bias = b_ih.has_value() && b_hh.has_value() ? *b_ih + *b_hh : (b_ih.has_value() ? *b_ih : *b_hh);
  const Tensor gx = f32(at::linear(x, w_ih, bias));  // [T, B, 4H]: one GEMM over all steps
  const Tensor h0f = f32(h0), c0f = f32(c0), w = w_hh.contiguous();
  const OptTensor len = device_lengths(lengths, x);
  const auto opts = x.options().dtype(at::kFloat);
  Tensor y = at::empty({T, B, H}, opts), h_n = at::empty({B, H}, opts), c_n = at::empty({B, H}, opts);
  // The kernel always writes the saved gates and c; without save they are scratch.
  Tensor gates = at::empty({T, B, 4 * H}, opts), cells = at::empty({T, B, H}, opts);
  Tensor h_buf = at::empty({2, B, H}, opts);

  LstmPersistentFwdParams p{};
  p.gx = gx.data_ptr<float>();
  p.w_hh = w.data_ptr();
  p.h0 = h0f.data_ptr<float>();
  p.c0 = c0f.data_ptr<float>();
  p.lengths = len.has_value() ? len->data_ptr<int64_t>() : nullptr;
  p.y = y.data_ptr<float>();
  p.h_n = h_n.data_ptr<float>();
  p.c_n = c_n.data_ptr<float>();
  p.gates = gates.data_ptr<float>();
  p.c = cells.data_ptr<float>();
  p.h_buf = h_buf.data_ptr<float>();
  p.T = static_cast<int>(T);
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.units_per_cta = plan.units_per_cta;
  p.reverse = reverse ? 1 : 0;
  dispatch_storage(w_hh.scalar_type(), [&](auto s) {
    launch_cooperative(&lstm_persistent_fwd_kernel<decltype(s)>, p, plan, dev, "lstm_persistent_fwd_kernel");
  });

  if (!save) {
    gates = at::empty({0}, x.options());
    cells = at::empty({0}, opts);
  }
  return {y.to(x.scalar_type()), h_n.to(h0.scalar_type()), c_n.to(c0.scalar_type()), gates, cells};
}

// [T, B, 1] bool: step t is inside sequence b.
Tensor step_mask(const Tensor& len, int64_t T) {
  return (at::arange(T, len.options()).unsqueeze(1) < len.unsqueeze(0)).unsqueeze(-1);
}

// fused_s2s::cuda_lstm_layer_bwd -> dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr (the Triton bwd op's outputs; dx
// empty unless need_dx, the weight gradients empty unless need_dw, dw_hr always empty: no proj_size here).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> cuda_lstm_layer_bwd(
    const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n, const Tensor& x, const Tensor& h0, const Tensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr, const OptTensor& lengths, bool reverse,
    const Tensor& y, const Tensor& gates, const Tensor& cells, bool need_dx, bool need_dw) {
  check_inputs(x, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, w_hr, lengths);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_ih.size(0) / 4, G = 4 * H;
  TORCH_CHECK(gates.sizes() == at::IntArrayRef({T, B, G}) && gates.scalar_type() == at::kFloat &&
                  cells.sizes() == at::IntArrayRef({T, B, H}) && cells.scalar_type() == at::kFloat,
              "lstm_layer backward: gates and cells must be the forward's saved fp32 [", T, ", ", B, ", ", G,
              "] and [", T, ", ", B, ", ", H, "] (run the forward with save=True), got ", gates.sizes(), " ",
              gates.scalar_type(), " and ", cells.sizes(), " ", cells.scalar_type());
  // The kernel reads dy [T,B,H], dh_n/dc_n [B,H], gates, cells with these sizes: a mismatch would read past
  // them on the GPU (autograd always passes the right ones; this is for direct op calls).
  TORCH_CHECK(dy.sizes() == at::IntArrayRef({T, B, H}) && dh_n.sizes() == at::IntArrayRef({B, H}) &&
                  dc_n.sizes() == at::IntArrayRef({B, H}),
              "lstm_layer backward: dy, dh_n and dc_n must be [", T, ", ", B, ", ", H, "], [", B, ", ", H, "] and [",
              B, ", ", H, "], got ", dy.sizes(), ", ", dh_n.sizes(), " and ", dc_n.sizes());
  for (const Tensor* t : {&dy, &dh_n, &dc_n, &gates, &cells, &y})
    TORCH_CHECK(t->device() == x.device(), "lstm_layer backward: every tensor must be on x's device (", x.device(),
                "), got ", t->device());
  const DeviceLimits dev = current_device_limits();
  const LstmPersistentPlan plan = plan_or_throw(true, B, H, w_hh, dev);

  const Tensor dyf = f32(dy), dh_nf = f32(dh_n), dc_nf = f32(dc_n), c0f = f32(c0), gatesf = gates.contiguous(),
               cellsf = cells.contiguous(), w = w_hh.contiguous();
  const OptTensor len = device_lengths(lengths, x);
  const auto opts = x.options().dtype(at::kFloat);
  Tensor dgates = at::empty({T, B, G}, opts), dh0 = at::empty({B, H}, opts), dc0 = at::empty({B, H}, opts);

  LstmPersistentBwdParams p{};
  p.dy = dyf.data_ptr<float>();
  p.dh_n = dh_nf.data_ptr<float>();
  p.dc_n = dc_nf.data_ptr<float>();
  p.gates = gatesf.data_ptr<float>();
  p.c = cellsf.data_ptr<float>();
  p.c0 = c0f.data_ptr<float>();
  p.w_hh = w.data_ptr();
  p.lengths = len.has_value() ? len->data_ptr<int64_t>() : nullptr;
  p.dgates = dgates.data_ptr<float>();
  p.dh0 = dh0.data_ptr<float>();
  p.dc0 = dc0.data_ptr<float>();
  p.T = static_cast<int>(T);
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.units_per_cta = plan.units_per_cta;
  p.reverse = reverse ? 1 : 0;
  dispatch_storage(w_hh.scalar_type(), [&](auto s) {
    launch_cooperative(&lstm_persistent_bwd_kernel<decltype(s)>, p, plan, dev, "lstm_persistent_bwd_kernel");
  });

  // The gradient GEMMs run in x's dtype (cuBLAS, fp32 accumulation), as the Triton op and cuDNN do.
  const Tensor dg2 = dgates.view({T * B, G}).to(x.scalar_type());
  Tensor dx = need_dx ? at::mm(dg2, w_ih).view({T, B, I}) : at::empty({0}, x.options());
  const Tensor dh0_out = dh0.to(h0.scalar_type()), dc0_out = dc0.to(c0.scalar_type());
  if (!need_dw)  // frozen weights: no weight GEMMs
    return {dx, dh0_out, dc0_out, at::empty({0}, x.options()), at::empty({0}, x.options()),
            at::empty({0}, x.options()), at::empty({0}, x.options())};
  // Padding steps have dgates 0, but x may hold NaN there (NaN·0 = NaN): keep it out of dW_ih.
  const Tensor x_used = len.has_value() ? at::where(step_mask(*len, T), x, 0) : x;
  Tensor dw_ih = at::mm(dg2.t(), x_used.reshape({T * B, I}));
  Tensor db = dgates.view({T * B, G}).sum(0).to(x.scalar_type());  // summed in fp32
  // h_{t-1} of every step: the previous output in reading order, h0 at each sequence's first step.
  Tensor h_prev;
  if (T == 0) {
    h_prev = at::empty({0, B, H}, y.options());
  } else if (!reverse) {
    h_prev = at::cat({h0.unsqueeze(0), y.narrow(0, 0, T - 1)});
  } else {
    h_prev = at::cat({y.narrow(0, 1, T - 1), h0.unsqueeze(0)});
    if (len.has_value()) {  // a reversed sequence starts at its own last step, not at T - 1
      const Tensor first = (at::arange(T, len->options()).unsqueeze(1) + 1 >= len->unsqueeze(0)).unsqueeze(-1);
      h_prev = at::where(first, h0.unsqueeze(0), h_prev);
    }
  }
  Tensor dw_hh = at::mm(dg2.t(), h_prev.reshape({T * B, H}));
  return {dx, dh0_out, dc0_out, dw_ih, dw_hh, db, at::empty({0}, x.options())};
}

}  // namespace
}  // namespace fused_s2s::cuda

TORCH_LIBRARY_IMPL(fused_s2s, CUDA, m) {
  m.impl("cuda_lstm_layer_fwd", &fused_s2s::cuda::cuda_lstm_layer_fwd);
  m.impl("cuda_lstm_layer_bwd", &fused_s2s::cuda::cuda_lstm_layer_bwd);
}
