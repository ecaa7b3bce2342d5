// The harness as a program, so the tests can run it under ASan/UBSan without preloading a runtime into Python:
//   fs2s_cuda_harness <command> <dir>
// reads <dir>/args.txt ("name value" lines, integers) and the inputs <dir>/<name>.bin (raw little-endian
// arrays whose byte size must match the shape exactly), runs one entry point of harness_api.h and writes the
// outputs as <dir>/<name>.bin. Outputs start NaN, so an element the kernel never writes shows as NaN.
// Commands: fwd, bwd, mma, layout, round, plan, compat_selftest, oob_selftest, and attention_harness.cpp's
// (attn_fwd, attn_bwd, dec_cell, dec_step, dec_tanh, attn_plan). Exit status 0 on success.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "harness_api.h"

namespace {

std::string g_dir;
std::map<std::string, long long> g_args;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "fs2s_cuda_harness: %s\n", what.c_str());
  std::exit(2);
}

long long arg(const std::string& name) {
  const auto it = g_args.find(name);
  if (it == g_args.end()) die("missing argument " + name + " in args.txt");
  return it->second;
}

// An input array of exactly n elements of T (n == 0: absent file means a null pointer).
template <typename T>
std::vector<T> read(const std::string& name, long long n) {
  std::ifstream f(g_dir + "/" + name + ".bin", std::ios::binary | std::ios::ate);
  if (!f) die("cannot open " + name + ".bin");
  const long long bytes = f.tellg();
  if (bytes != n * static_cast<long long>(sizeof(T)))
    die(name + ".bin has " + std::to_string(bytes) + " bytes, expected " + std::to_string(n * sizeof(T)));
  std::vector<T> v(n);
  f.seekg(0);
  f.read(reinterpret_cast<char*>(v.data()), bytes);
  return v;
}

template <typename T>
void write(const std::string& name, const std::vector<T>& v) {
  std::ofstream f(g_dir + "/" + name + ".bin", std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
  if (!f) die("cannot write " + name + ".bin");
}

std::vector<float> nans(long long n) { return std::vector<float>(n, std::nanf("")); }

// W_hh / mma operands: 4-byte floats or 2-byte raw bits, by dtype.
std::vector<unsigned char> read_storage(const std::string& name, long long n, int dtype) {
  return read<unsigned char>(name, n * (dtype == FS2S_HARNESS_F32 ? 4 : 2));
}

template <typename T>
const T* opt(const std::vector<T>& v, bool present) {
  return present ? v.data() : nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) die("usage: fs2s_cuda_harness <fwd|bwd|mma|layout|round|plan|compat_selftest|oob_selftest> <dir>");
  const std::string cmd = argv[1];
  g_dir = argv[2];
  {
    std::ifstream f(g_dir + "/args.txt");
    std::string name;
    long long value;
    while (f >> name >> value) g_args[name] = value;
  }
  int rc = 1;
  if (cmd == "fwd" || cmd == "bwd") {
    const long long T = arg("T"), B = arg("B"), H = arg("H");
    const int dtype = static_cast<int>(arg("dtype"));
    const bool has_lengths = arg("has_lengths") != 0;
    const auto w_hh = read_storage("w_hh", 4 * H * H, dtype);
    const auto lengths = has_lengths ? read<int64_t>("lengths", B) : std::vector<int64_t>();
    const auto c0 = read<float>("c0", B * H);
    const int U = static_cast<int>(arg("units_per_cta")), threads = static_cast<int>(arg("threads"));
    const int reverse = static_cast<int>(arg("reverse"));
    if (cmd == "fwd") {
      const auto gx = read<float>("gx", T * B * 4 * H), h0 = read<float>("h0", B * H);
      auto y = nans(T * B * H), h_n = nans(B * H), c_n = nans(B * H), gates = nans(T * B * 4 * H), c = nans(T * B * H);
      rc = fs2s_harness_lstm_fwd(dtype, gx.data(), w_hh.data(), h0.data(), c0.data(), opt(lengths, has_lengths),
                                 y.data(), h_n.data(), c_n.data(), gates.data(), c.data(), int(T), int(B), int(H), U,
                                 threads, reverse);
      write("y", y), write("h_n", h_n), write("c_n", c_n), write("gates", gates), write("c", c);
    } else {
      const bool has_dy = arg("has_dy") != 0;
      const auto dy = has_dy ? read<float>("dy", T * B * H) : std::vector<float>();
      const auto dh_n = read<float>("dh_n", B * H), dc_n = read<float>("dc_n", B * H);
      const auto gates = read<float>("gates", T * B * 4 * H), c = read<float>("c", T * B * H);
      auto dgates = nans(T * B * 4 * H), dh0 = nans(B * H), dc0 = nans(B * H);
      rc = fs2s_harness_lstm_bwd(dtype, opt(dy, has_dy), dh_n.data(), dc_n.data(), gates.data(), c.data(), c0.data(),
                                 w_hh.data(), opt(lengths, has_lengths), dgates.data(), dh0.data(), dc0.data(), int(T),
                                 int(B), int(H), U, threads, reverse);
      write("dgates", dgates), write("dh0", dh0), write("dc0", dc0);
    }
  } else if (cmd == "mma") {
    const long long M = arg("M"), N = arg("N"), K = arg("K");
    const int dtype = static_cast<int>(arg("dtype"));
    const auto a = read_storage("a", M * K, dtype), bt = read_storage("bt", N * K, dtype);
    auto c = nans(M * N);
    rc = fs2s_harness_mma(dtype, a.data(), bt.data(), c.data(), int(M), int(N), int(K), int(arg("threads")));
    write("c", c);
  } else if (cmd == "layout") {
    std::vector<int> out(32 * 32, -1);
    rc = fs2s_harness_fragment_layout(out.data());
    write("layout", out);
  } else if (cmd == "round") {
    const long long n = arg("n");
    const auto x = read<float>("x", n);
    auto out = nans(n);
    rc = fs2s_harness_round(static_cast<int>(arg("dtype")), x.data(), out.data(), n);
    write("out", out);
  } else if (cmd == "plan") {
    std::vector<int> ints(2);
    std::vector<long long> smem(1);
    std::vector<char> reason(1024, 0);
    rc = fs2s_harness_plan(int(arg("backward")), int(arg("B")), int(arg("H")), int(arg("elem_bytes")),
                           int(arg("sm_count")), arg("max_smem_per_cta"), int(arg("threads")), &ints[0], &ints[1],
                           &smem[0], reason.data(), int(reason.size()));
    write("plan", ints), write("smem", smem);
    reason.resize(std::strlen(reason.data()));
    write("reason", reason);
  } else if (cmd == "compat_selftest") {
    std::vector<int> out(128 * 3);
    rc = fs2s_harness_compat_selftest(out.data());
    write("out", out);
  } else if (cmd == "oob_selftest") {
    rc = fs2s_harness_oob_selftest();
  } else if (const int arc = fs2s_harness_attention_command(cmd.c_str(), g_dir.c_str()); arc >= 0) {
    rc = arc;  // attention_harness.cpp's commands
  } else {
    die("unknown command " + cmd);
  }
  return rc;
}
