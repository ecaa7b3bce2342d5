// Drivers of the native bf16 LSTM layer (lstm_bf16_layer.h): the input projection as one bf16 GEMM (torch's
// oneDNN matmul, fp32 accumulation inside), then the fused bf16 recurrence (lstm_bf16_recurrence.cpp).
#include "lstm_bf16_layer.h"

#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "gemm.h"
#include "layer_common.h"
#include "lstm_bf16_kernels.h"
#include "weight_cache.h"

namespace fused_s2s::cpu {

bool bf16_kernels_supported() {
#if defined(FUSED_S2S_WITH_BF16_KERNELS)
  static const bool ok = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl");
  return ok && at::get_cpu_capability() == "AVX512";
#else
  return false;
#endif
}

bool bf16_native_enabled() {
  const char* env = std::getenv("FUSED_S2S_NATIVE_BF16");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  return use_fused_recurrence() && bf16_kernels_supported();
}

#if defined(FUSED_S2S_WITH_BF16_KERNELS)
namespace {

uint16_t* bits(const at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// b_ih + b_hh in fp32 (the kernel adds it to the fp32 pre-activation: no bf16 rounding of the sum).
std::optional<at::Tensor> fp32_bias(const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  if (!b_ih.has_value() && !b_hh.has_value()) return std::nullopt;
  const at::Tensor& any = b_ih.has_value() ? *b_ih : *b_hh;
  at::Tensor sum = at::zeros({any.size(0)}, any.options().dtype(at::kFloat));
  for (const std::optional<at::Tensor>* b : {&b_ih, &b_hh})
    if (b->has_value()) sum.add_(**b);
  return sum;
}

// AMX products where the CPU has them, unless FUSED_S2S_BF16_AMX=0 (the tests run both product kernels).
bool use_amx() {
  const char* env = std::getenv("FUSED_S2S_BF16_AMX");
  return !(env != nullptr && std::strcmp(env, "0") == 0) && bf16_amx_supported();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bf16_fwd(
    const at::Tensor& x_in, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih_in,
    const at::Tensor& w_hh_in, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse, bool save) {
  TORCH_CHECK(bf16_native_enabled(), "lstm_layer: the native bf16 kernel is not available on this machine");
  const at::Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_ih.size(0) / 4;
  const bool amx = use_amx();
  const at::TensorOptions f32 = x.options().dtype(at::kFloat);
  const std::optional<at::Tensor> bias = fp32_bias(b_ih, b_hh);
  const at::Tensor panels = cached_packing(w_hh, Packing::kBf16GatePanels, 0, [&] {
    at::Tensor p = at::empty({bf16_fwd_panels_elems(H)}, x.options());
    bf16_pack_fwd_panels(bits(w_hh), H, bits(p));
    return p;
  });
  at::Tensor y = empty_buffer({T, B, H}, x.options());
  // h_{t-1} for the product, zero-padded to whole tiles: the products take K in blocks of 32 (rows in
  // blocks of 16 with AMX)
  at::Tensor h_buf = at::zeros({2, bf16_rows(B, amx), bf16_fwd_k(H)}, x.options());
  h_buf[0].narrow(0, 0, B).narrow(1, 0, H).copy_(h0);
  at::Tensor c_state = c0.to(at::kFloat).contiguous().clone();
  const CpuLengths lengths_cpu(lengths);
  auto run = [&](const at::Tensor& gates, const at::Tensor& cells, int64_t n, int64_t t0) {
    bf16_fused_recurrence({bits(panels), bits(gates), bias.has_value() ? bias->data_ptr<float>() : nullptr,
                           cells.defined() ? cells.data_ptr<float>() : nullptr, bits(y[t0]), bits(h_buf), c_state.data_ptr<float>(),
                           lengths_cpu.data(), n, B, H, reverse, t0, amx});
  };
  at::Tensor gates, cells;
  if (save) {
    gates = fast_linear(x.view({T * B, I}), w_ih).view({T, B, 4 * H});
    cells = empty_buffer({T, B, H}, f32);
    run(gates, cells, T, 0);
  } else {
    // Nothing saved: the input projection a chunk of ~4096 rows at a time into one reused buffer (8H KB of
    // bf16), so a long sequence never holds a [T, B, 4H] buffer. Measured on one core, T50 H256 (ms, noisy
    // machine): B16 1.34 / B64 4.3 like this; a new tensor per chunk 1.59 / 6.1; 512-row chunks 1.43 / 5.1.
    const int64_t chunk = std::min(T, std::max<int64_t>(2, (4096 / std::max<int64_t>(B, 1) + 1) / 2 * 2));
    at::Tensor projection = at::empty({chunk * B, 4 * H}, x.options());
    for (int64_t done = 0; done < T; done += chunk) {
      const int64_t n = std::min(chunk, T - done);
      const int64_t t0 = reverse ? T - done - n : done;  // first time index of this chunk
      at::Tensor gates_chunk = projection.narrow(0, 0, n * B);
      at::mm_out(gates_chunk, x.narrow(0, t0, n).view({n * B, I}), w_ih.t());  // oneDNN's bf16 matmul
      run(gates_chunk, at::Tensor(), n, t0);
      if (n % 2 == 1) h_buf[0].copy_(h_buf[1]);  // the next chunk starts from h_buf[0]
    }
  }
  const at::Tensor h_n = h_buf[save ? T % 2 : 0].narrow(0, 0, B).narrow(1, 0, H).clone(at::MemoryFormat::Contiguous);
  return {y, h_n, c_state.to(x.scalar_type()), gates, cells};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bf16_bwd_recurrence(
    const at::Tensor& dy_in, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& c0,
    const at::Tensor& w_hh_in, const std::optional<at::Tensor>& lengths, bool reverse, const at::Tensor& gates_in,
    const at::Tensor& cells_in, bool fp32_dgates) {
  TORCH_CHECK(bf16_native_enabled(), "lstm_layer_bwd: the native bf16 kernel is not available on this machine");
  TORCH_CHECK(gates_in.scalar_type() == at::kBFloat16 && cells_in.scalar_type() == at::kFloat,
              "lstm_layer_bwd: the bf16 layer saves bf16 gates and fp32 cells, got ", gates_in.scalar_type(), " and ",
              cells_in.scalar_type());
  const at::Tensor dy = dy_in.contiguous(), gates = gates_in.contiguous(), cells = cells_in.contiguous();
  const at::Tensor w_hh = w_hh_in.contiguous();
  const int64_t T = dy.size(0), B = dy.size(1), H = dy.size(2);
  const at::Tensor panels = cached_packing(w_hh, Packing::kBf16BwdPanels, 0, [&] {
    at::Tensor p = at::empty({bf16_bwd_panels_elems(H)}, w_hh.options());
    bf16_pack_bwd_panels(bits(w_hh), H, bits(p));
    return p;
  });
  const bool amx = use_amx() && (4 * H) % 32 == 0;
  // With AMX the last step's product reads whole 16-row tiles of dG: 16 zero rows past the end keep that
  // read inside the buffer (the extra rows' results are ignored).
  at::Tensor dg_buf = empty_buffer({T * B + (amx ? 16 : 0), 4 * H}, dy.options());
  if (amx) dg_buf.narrow(0, T * B, 16).zero_();
  at::Tensor dgates = dg_buf.narrow(0, 0, T * B).view({T, B, 4 * H});
  const at::Tensor dgates_f32 =
      fp32_dgates ? empty_buffer({T, B, 4 * H}, dy.options().dtype(at::kFloat)) : at::Tensor();
  at::Tensor dh = dh_n.to(at::kFloat).contiguous().clone();
  at::Tensor dc = dc_n.to(at::kFloat).contiguous().clone();
  const at::Tensor c0f = c0.to(at::kFloat).contiguous();
  const CpuLengths lengths_cpu(lengths);
  bf16_fused_recurrence_bwd({bits(panels), bits(gates), cells.data_ptr<float>(), c0f.data_ptr<float>(), bits(dy),
                             bits(dgates), dgates_f32.defined() ? dgates_f32.data_ptr<float>() : nullptr,
                             dh.data_ptr<float>(), dc.data_ptr<float>(), lengths_cpu.data(), T, B, H, reverse, amx});
  return {dgates, dgates_f32, dh.to(dy.scalar_type()), dc.to(dy.scalar_type())};
}

#else  // built without the bf16 kernels: bf16_native_enabled() is false and fused_s2s.ops never calls these

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bf16_fwd(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool,
    bool) {
  TORCH_CHECK(false, "lstm_layer: this build has no native bf16 kernel (the compiler lacked -mavx512bf16)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bf16_bwd_recurrence(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, bool, const at::Tensor&, const at::Tensor&, bool) {
  TORCH_CHECK(false, "lstm_layer_bwd: this build has no native bf16 kernel (the compiler lacked -mavx512bf16)");
}

#endif

}  // namespace fused_s2s::cpu

// Asked by fused_s2s.ops.lstm before it hands bf16 tensors to the C++ ops (no tensor arguments, so a
// catch-all kernel rather than a CPU one).
TORCH_LIBRARY_FRAGMENT(fused_s2s, m) {
  m.def("lstm_bf16_native() -> bool", [] { return fused_s2s::cpu::bf16_native_enabled(); });
}
