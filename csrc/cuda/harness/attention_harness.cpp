// The harness' entry points for attention.cu and decoder_step.cu (declared in harness_api.h): argument checks,
// exactly sized NaN-filled workspaces, then the launch sequences of attention.cuh / decoder_step.cuh (the ones the
// binding uses) on harness::launch. Also the program's commands for them (fs2s_harness_attention_command), with
// main.cpp's file conventions.
// Built only with -DFS2S_CPU_HARNESS (g++ -std=c++20), linked with attention.cu and decoder_step.cu compiled as C++.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../attention.cuh"
#include "../decoder_step.cuh"
#include "harness_api.h"

namespace fs2s = fused_s2s::cuda;
using fused_s2s::harness::launch;

namespace {

int bad(const char* what) {
  std::fprintf(stderr, "fs2s harness (attention): %s\n", what);
  return 1;
}

template <typename F>
int with_dtype(int dtype, F f) {
  switch (dtype) {
    case FS2S_HARNESS_F32: f(static_cast<float*>(nullptr)); return 0;
    case FS2S_HARNESS_BF16: f(static_cast<__nv_bfloat16*>(nullptr)); return 0;
    case FS2S_HARNESS_F16: f(static_cast<__half*>(nullptr)); return 0;
    default: return bad("dtype must be 0 (float), 1 (bf16) or 2 (fp16)");
  }
}

// The launch sequences' `launch` (attention.cuh) on the CPU: every CUDA thread a std::thread.
struct HarnessLaunch {
  template <typename P>
  void operator()(void (*kernel)(P), int grid, int threads, std::size_t smem, const P& p) const {
    launch(dim3(static_cast<unsigned>(grid)), dim3(static_cast<unsigned>(threads)), smem, [&] { kernel(p); });
  }
};

bool threads_ok(int threads) { return threads >= 32 && threads % 32 == 0 && threads <= fs2s::kAttnMaxThreads; }

std::vector<float> nan_workspace(std::size_t n) { return std::vector<float>(n, std::nanf("")); }

}  // namespace

extern "C" int fs2s_harness_attention_fwd(int dtype, int additive, const void* query, const void* keys,
                                          const void* values, const int64_t* lengths, const void* v, float scale,
                                          void* context, float* lse, void* weights, int B, int Tq, int S, int D,
                                          int M, int splits, int threads) {
  if (B < 1 || Tq < 1 || S < 1 || D < 1 || M < 1 || splits < 1) return bad("attn_fwd: bad B, Tq, S, D, M or splits");
  if (!threads_ok(threads)) return bad("attn_fwd: threads must be a multiple of 32 up to kAttnMaxThreads");
  if (additive && v == nullptr) return bad("attn_fwd: additive scores need v");
  const int rows = B * Tq;
  auto scores = nan_workspace(weights != nullptr ? static_cast<std::size_t>(rows) * S : 0);
  auto part_ml = nan_workspace(splits > 1 ? static_cast<std::size_t>(rows) * splits * 2 : 0);
  auto part_ctx = nan_workspace(splits > 1 ? static_cast<std::size_t>(rows) * splits * M : 0);
  return with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const fs2s::AttentionFwdParams<T> p{static_cast<const T*>(query), static_cast<const T*>(keys),
                                        static_cast<const T*>(values), lengths, static_cast<const T*>(v), scale,
                                        static_cast<T*>(context), M, lse, static_cast<T*>(weights),
                                        scores.empty() ? nullptr : scores.data(),
                                        part_ml.empty() ? nullptr : part_ml.data(),
                                        part_ctx.empty() ? nullptr : part_ctx.data(), B, Tq, S, D, M, splits,
                                        (S + splits - 1) / splits};
    fs2s::attention_fwd_launch(p, additive != 0, threads, HarnessLaunch{});
  });
}

extern "C" int fs2s_harness_attention_bwd(int dtype, int additive, const void* d_context, const void* query,
                                          const void* keys, const void* values, const int64_t* lengths,
                                          const void* v, float scale, const void* context, const float* lse,
                                          void* d_query, void* d_keys, void* d_values, void* d_v, int B, int Tq,
                                          int S, int D, int M, int splits, int threads) {
  if (B < 1 || Tq < 1 || S < 1 || D < 1 || M < 1 || splits < 1) return bad("attn_bwd: bad B, Tq, S, D, M or splits");
  if (!threads_ok(threads)) return bad("attn_bwd: threads must be a multiple of 32 up to kAttnMaxThreads");
  if (additive && (v == nullptr || d_v == nullptr)) return bad("attn_bwd: additive scores need v and d_v");
  const int warps = threads / 32;
  const std::size_t P = static_cast<std::size_t>(splits) * warps;
  auto dq_part = nan_workspace(static_cast<std::size_t>(B) * P * Tq * D);
  auto dv_part = nan_workspace(additive ? static_cast<std::size_t>(B) * P * D : 0);
  return with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const fs2s::AttentionBwdParams<T> p{static_cast<const T*>(d_context), static_cast<const T*>(query),
                                        static_cast<const T*>(keys), static_cast<const T*>(values), lengths,
                                        static_cast<const T*>(v), scale, static_cast<const T*>(context), lse,
                                        static_cast<T*>(d_query), static_cast<T*>(d_keys), static_cast<T*>(d_values),
                                        additive ? static_cast<T*>(d_v) : nullptr, dq_part.data(),
                                        dv_part.empty() ? nullptr : dv_part.data(), B, Tq, S, D, M, splits,
                                        (S + splits - 1) / splits, warps};
    fs2s::attention_bwd_launch(p, additive != 0, HarnessLaunch{});
  });
}

extern "C" int fs2s_harness_decoder_cell(int dtype, const void* gates, const void* c, void* h_new, void* c_new,
                                         void* h_copy, long long ld_h_copy, int B, int H, int blocks, int threads) {
  if (B < 1 || H < 1 || blocks < 1 || threads < 32 || threads % 32) return bad("dec_cell: bad B, H, blocks or threads");
  return with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const fs2s::DecoderCellParams<T> p{static_cast<const T*>(gates), static_cast<const T*>(c), static_cast<T*>(h_new),
                                       static_cast<T*>(c_new),       static_cast<T*>(h_copy), ld_h_copy,
                                       B,                            H};
    launch(dim3(blocks), dim3(threads), 0, [&] { fs2s::decoder_lstm_cell_kernel<T>(p); });
  });
}

extern "C" int fs2s_harness_decoder_step(int dtype, const void* gates, const void* c, const void* keys,
                                         const void* values, const int64_t* lengths, float scale, void* h_new,
                                         void* c_new, void* ctx_h, void* weights, float* lse, int B, int S, int H,
                                         int M, int splits, int threads) {
  if (B < 1 || S < 1 || H < 1 || M < 1 || splits < 1) return bad("dec_step: bad B, S, H, M or splits");
  if (!threads_ok(threads)) return bad("dec_step: threads must be a multiple of 32 up to kAttnMaxThreads");
  auto scores = nan_workspace(weights != nullptr ? static_cast<std::size_t>(B) * S : 0);
  auto part_ml = nan_workspace(splits > 1 ? static_cast<std::size_t>(B) * splits * 2 : 0);
  auto part_ctx = nan_workspace(splits > 1 ? static_cast<std::size_t>(B) * splits * M : 0);
  return with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    T* ctx_h_t = static_cast<T*>(ctx_h);
    fs2s::DecoderStepParams<T> p{};
    p.cell = fs2s::DecoderCellParams<T>{static_cast<const T*>(gates), static_cast<const T*>(c), static_cast<T*>(h_new),
                                        static_cast<T*>(c_new), ctx_h_t + M, M + H, B, H};
    p.attn = fs2s::AttentionFwdParams<T>{nullptr, static_cast<const T*>(keys), static_cast<const T*>(values), lengths,
                                         nullptr, scale, ctx_h_t, M + H, lse, static_cast<T*>(weights),
                                         scores.empty() ? nullptr : scores.data(),
                                         part_ml.empty() ? nullptr : part_ml.data(),
                                         part_ctx.empty() ? nullptr : part_ctx.data(), B, 1, S, H, M, splits,
                                         (S + splits - 1) / splits};
    fs2s::decoder_cell_attention_launch(p, threads, HarnessLaunch{});
  });
}

extern "C" int fs2s_harness_decoder_combine_tanh(int dtype, void* out, const void* b_out, int B, int H, int blocks,
                                                 int threads) {
  if (B < 1 || H < 1 || blocks < 1 || threads < 32 || threads % 32) return bad("dec_tanh: bad B, H, blocks or threads");
  return with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch(dim3(blocks), dim3(threads), 0,
           [&] { fs2s::decoder_combine_tanh_kernel<T>(static_cast<T*>(out), static_cast<const T*>(b_out), B, H); });
  });
}

extern "C" int fs2s_harness_attention_plan(int B, int Tq, int S, int D, int M, int sm_count,
                                           long long max_smem_per_cta, int threads, int* ints, long long* sizes,
                                           char* reason, int reason_len) {
  const fs2s::AttentionPlan plan =
      fs2s::attention_plan(B, Tq, S, D, M, sm_count, static_cast<std::size_t>(max_smem_per_cta), threads);
  ints[0] = plan.splits;
  ints[1] = plan.chunk;
  sizes[0] = static_cast<long long>(plan.fwd_smem);
  sizes[1] = static_cast<long long>(plan.bwd_smem);
  sizes[2] = static_cast<long long>(plan.fwd_workspace_floats);
  sizes[3] = static_cast<long long>(plan.bwd_workspace_floats);
  if (reason_len > 0) {
    std::strncpy(reason, plan.reason.c_str(), static_cast<std::size_t>(reason_len) - 1);
    reason[reason_len - 1] = '\0';
  }
  return 0;
}

// ------------------------------------------------------------------------------------------------------------
// The program's commands: <dir>/args.txt ("name value" integer lines), inputs <dir>/<name>.bin of exactly the
// shape's bytes (storage-typed arrays: 4 or 2 bytes per element by dtype), outputs written the same way and
// NaN-filled before the kernels run (16-bit: the NaN bit pattern), so an element never written shows as NaN.
// ------------------------------------------------------------------------------------------------------------
namespace {

struct Io {
  std::string dir;
  std::map<std::string, long long> args;
  int elem = 4;  // bytes per storage element

  long long arg(const std::string& name) const {
    const auto it = args.find(name);
    if (it == args.end()) throw std::runtime_error("missing argument " + name + " in args.txt");
    return it->second;
  }
  std::vector<unsigned char> read_bytes(const std::string& name, long long bytes) const {
    std::ifstream f(dir + "/" + name + ".bin", std::ios::binary | std::ios::ate);
    if (!f) throw std::runtime_error("cannot open " + name + ".bin");
    const long long got = f.tellg();
    if (got != bytes)
      throw std::runtime_error(name + ".bin has " + std::to_string(got) + " bytes, expected " + std::to_string(bytes));
    std::vector<unsigned char> v(static_cast<std::size_t>(bytes));
    f.seekg(0);
    f.read(reinterpret_cast<char*>(v.data()), bytes);
    return v;
  }
  // An input of n storage elements, or (when the flag argument is 0) none.
  std::vector<unsigned char> storage(const std::string& name, long long n) const { return read_bytes(name, n * elem); }
  std::vector<int64_t> lengths(long long B) const {
    if (arg("has_lengths") == 0) return {};
    const auto raw = read_bytes("lengths", B * 8);
    std::vector<int64_t> v(static_cast<std::size_t>(B));
    std::memcpy(v.data(), raw.data(), raw.size());
    return v;
  }
  float scale() const {
    const auto raw = read_bytes("scale", 4);
    float s;
    std::memcpy(&s, raw.data(), 4);
    return s;
  }
  // n storage elements, every one NaN.
  std::vector<unsigned char> nan_storage(long long n) const {
    std::vector<unsigned char> v(static_cast<std::size_t>(n * elem));
    const uint16_t nan16 = elem == 2 && args.at("dtype") == FS2S_HARNESS_BF16 ? 0x7FC0 : 0x7E00;
    for (long long i = 0; i < n; ++i) {
      if (elem == 4) {
        const float f = std::nanf("");
        std::memcpy(&v[static_cast<std::size_t>(i) * 4], &f, 4);
      } else {
        std::memcpy(&v[static_cast<std::size_t>(i) * 2], &nan16, 2);
      }
    }
    return v;
  }
  template <typename V>
  void write(const std::string& name, const V& v) const {
    std::ofstream f(dir + "/" + name + ".bin", std::ios::binary);
    f.write(reinterpret_cast<const char*>(v.data()),
            static_cast<std::streamsize>(v.size() * sizeof(typename V::value_type)));
    if (!f) throw std::runtime_error("cannot write " + name + ".bin");
  }
};

template <typename V>
auto* ptr_or_null(V& v) {
  return v.empty() ? nullptr : v.data();
}

int run_command(const std::string& cmd, Io& io) {
  const int dtype = io.args.count("dtype") ? static_cast<int>(io.arg("dtype")) : 0;
  io.elem = dtype == FS2S_HARNESS_F32 ? 4 : 2;
  const int threads = io.args.count("threads") ? static_cast<int>(io.arg("threads")) : 64;
  if (cmd == "attn_fwd" || cmd == "attn_bwd") {
    const long long B = io.arg("B"), Tq = io.arg("Tq"), S = io.arg("S"), D = io.arg("D"), M = io.arg("M");
    const int additive = static_cast<int>(io.arg("additive")), splits = static_cast<int>(io.arg("splits"));
    const auto query = io.storage("query", B * Tq * D), keys = io.storage("keys", B * S * D);
    const auto values = io.storage("values", B * S * M);
    const auto v = additive ? io.storage("v", D) : std::vector<unsigned char>();
    const auto lengths = io.lengths(B);
    const float scale = io.scale();
    if (cmd == "attn_fwd") {
      auto context = io.nan_storage(B * Tq * M);
      std::vector<float> lse(static_cast<std::size_t>(B * Tq), std::nanf(""));
      auto weights = io.arg("return_weights") ? io.nan_storage(B * Tq * S) : std::vector<unsigned char>();
      const int rc = fs2s_harness_attention_fwd(dtype, additive, query.data(), keys.data(), values.data(),
                                                ptr_or_null(lengths), ptr_or_null(v), scale, context.data(),
                                                lse.data(), ptr_or_null(weights), int(B), int(Tq), int(S), int(D),
                                                int(M), splits, threads);
      io.write("context", context), io.write("lse", lse), io.write("weights", weights);
      return rc;
    }
    const auto d_context = io.storage("d_context", B * Tq * M), context = io.storage("context", B * Tq * M);
    const auto lse_raw = io.read_bytes("lse", B * Tq * 4);
    std::vector<float> lse(static_cast<std::size_t>(B * Tq));
    std::memcpy(lse.data(), lse_raw.data(), lse_raw.size());
    auto d_query = io.nan_storage(B * Tq * D), d_keys = io.nan_storage(B * S * D);
    auto d_values = io.nan_storage(B * S * M);
    auto d_v = additive ? io.nan_storage(D) : std::vector<unsigned char>();
    const int rc = fs2s_harness_attention_bwd(dtype, additive, d_context.data(), query.data(), keys.data(),
                                              values.data(), ptr_or_null(lengths), ptr_or_null(v), scale,
                                              context.data(), lse.data(), d_query.data(), d_keys.data(),
                                              d_values.data(), ptr_or_null(d_v), int(B), int(Tq), int(S), int(D),
                                              int(M), splits, threads);
    io.write("d_query", d_query), io.write("d_keys", d_keys), io.write("d_values", d_values), io.write("d_v", d_v);
    return rc;
  }
  if (cmd == "dec_cell") {
    const long long B = io.arg("B"), H = io.arg("H"), ld = io.arg("ld_h_copy");
    const auto gates = io.storage("gates", B * 4 * H), c = io.storage("c", B * H);
    auto h_new = io.nan_storage(B * H), c_new = io.nan_storage(B * H);
    auto h_copy = ld > 0 ? io.nan_storage(B * ld) : std::vector<unsigned char>();
    const int rc = fs2s_harness_decoder_cell(dtype, gates.data(), c.data(), h_new.data(), c_new.data(),
                                             ptr_or_null(h_copy), ld, int(B), int(H), int(io.arg("blocks")), threads);
    io.write("h_new", h_new), io.write("c_new", c_new), io.write("h_copy", h_copy);
    return rc;
  }
  if (cmd == "dec_step") {
    const long long B = io.arg("B"), S = io.arg("S"), H = io.arg("H"), M = io.arg("M");
    const auto gates = io.storage("gates", B * 4 * H), c = io.storage("c", B * H);
    const auto keys = io.storage("keys", B * S * H), values = io.storage("values", B * S * M);
    const auto lengths = io.lengths(B);
    auto h_new = io.nan_storage(B * H), c_new = io.nan_storage(B * H), ctx_h = io.nan_storage(B * (M + H));
    auto weights = io.nan_storage(B * S);
    std::vector<float> lse(static_cast<std::size_t>(B), std::nanf(""));
    const int rc = fs2s_harness_decoder_step(dtype, gates.data(), c.data(), keys.data(), values.data(),
                                             ptr_or_null(lengths), io.scale(), h_new.data(), c_new.data(),
                                             ctx_h.data(), weights.data(), lse.data(), int(B), int(S), int(H), int(M),
                                             static_cast<int>(io.arg("splits")), threads);
    io.write("h_new", h_new), io.write("c_new", c_new), io.write("ctx_h", ctx_h), io.write("weights", weights);
    io.write("lse", lse);
    return rc;
  }
  if (cmd == "dec_tanh") {
    const long long B = io.arg("B"), H = io.arg("H");
    auto out = io.storage("pre", B * H);
    const auto b_out = io.arg("has_bias") ? io.storage("b_out", H) : std::vector<unsigned char>();
    const int rc = fs2s_harness_decoder_combine_tanh(dtype, out.data(), ptr_or_null(b_out), int(B), int(H),
                                                     int(io.arg("blocks")), threads);
    io.write("out", out);
    return rc;
  }
  if (cmd == "attn_plan") {
    std::vector<int> ints(2);
    std::vector<long long> sizes(4);
    std::vector<char> reason(1024, 0);
    const int rc = fs2s_harness_attention_plan(int(io.arg("B")), int(io.arg("Tq")), int(io.arg("S")),
                                               int(io.arg("D")), int(io.arg("M")), int(io.arg("sm_count")),
                                               io.arg("max_smem_per_cta"), threads, ints.data(), sizes.data(),
                                               reason.data(), int(reason.size()));
    reason.resize(std::strlen(reason.data()));
    io.write("ints", ints), io.write("sizes", sizes), io.write("reason", reason);
    return rc;
  }
  return -1;
}

}  // namespace

extern "C" int fs2s_harness_attention_command(const char* cmd, const char* dir) {
  static const char* const kCommands[] = {"attn_fwd", "attn_bwd", "dec_cell", "dec_step", "dec_tanh", "attn_plan"};
  bool known = false;
  for (const char* k : kCommands) known = known || std::strcmp(cmd, k) == 0;
  if (!known) return -1;
  Io io;
  io.dir = dir;
  {
    std::ifstream f(io.dir + "/args.txt");
    std::string name;
    long long value;
    while (f >> name >> value) io.args[name] = value;
  }
  try {
    return run_command(cmd, io);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fs2s_cuda_harness %s: %s\n", cmd, e.what());
    return 2;
  }
}
