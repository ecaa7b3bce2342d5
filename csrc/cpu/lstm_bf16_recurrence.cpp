// The native bf16 fused recurrences of one LSTM layer (no projection), forward and backward: the bf16 twin
// of lstm_recurrence.cpp. Compiled once, with -mavx512bf16 and CPU_CAPABILITY=AVX512_BF16 (so the at::vec
// and recurrence_common.h code it instantiates lives in its own namespace and never stands in for the
// plain AVX512 build's copies), and called only after bf16_kernels_supported() (lstm_bf16_layer.cpp).
//
// Products: h_{t-1}·W_hhᵀ (forward) and dG·W_hh (backward) with vdpbf16ps — one 32-bit lane holds a pair
// of consecutive K values, so each instruction is 16 columns × 2 K of fp32-accumulated multiply-adds — from
// the thread's panels (lstm_bf16_kernels.h), which stay in its L2 across steps. As in nn.LSTM's bf16 path,
// the product's operands are bf16 (h_{t-1}, dG) and the rest is fp32: gate pre-activations (accumulator +
// the bf16 input projection + the fp32 bias), the cell math, c and the state gradients dh, dc.
#include <immintrin.h>
#if defined(FS2S_WITH_AMX)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "fused_s2s/lstm_cell.h"
#include "lstm_bf16_kernels.h"
#include "recurrence_common.h"

namespace fused_s2s::cpu {
namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
using recurrence::run_steps;
using recurrence::scratch;
constexpr int64_t kCols = kBf16PanelCols;  // 64 fp32 columns per panel = 4 vectors
constexpr int kColVecs16 = 4;

inline __mmask16 first_lanes(int n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }

// n (1..16) bf16 values -> fp32 lanes (exact: a bf16 is the top half of an fp32).
inline Vec load_bf16(const uint16_t* p, int n) {
  const __m256i v = _mm256_maskz_loadu_epi16(first_lanes(n), p);
  return Vec(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16)));
}
// fp32 lanes -> n bf16 values, rounded to nearest even like torch's .to(torch.bfloat16).
inline void store_bf16(uint16_t* p, const Vec& v, int n) {
  _mm256_mask_storeu_epi16(p, first_lanes(n), (__m256i)_mm512_cvtneps_pbh(v));
}
inline Vec load_f32(const float* p, int n) { return Vec(_mm512_maskz_loadu_ps(first_lanes(n), p)); }
inline void store_f32(float* p, const Vec& v, int n) { _mm512_mask_storeu_ps(p, first_lanes(n), v); }

// The activations of the bf16 cells: tanh as Eigen's odd 13/6 rational minimax approximation (a few fp32
// ulp, far below the bf16 rounding every output gets), sigmoid(x) = (1 + tanh(x / 2)) / 2. 19 vector
// operations instead of the ~28 of an exp-based sigmoid or tanh (VecMath<float>); the cell math, not the
// AMX product, dominated the step (T50 B16 H256: ~22 of ~32 µs per step on one core).
struct Bf16CellMath {
  static Vec tanh(Vec v) {
    // ±7.9053 is where tanh rounds to ±1 in fp32; min/max return their second operand for NaN: NaN stays.
    const __m512 x = _mm512_max_ps(_mm512_set1_ps(-7.90531110763549805f),
                                   _mm512_min_ps(_mm512_set1_ps(7.90531110763549805f), v));
    const __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = _mm512_fmadd_ps(x2, _mm512_set1_ps(-2.76076847742355e-16f), _mm512_set1_ps(2.00018790482477e-13f));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-8.60467152213735e-11f));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(5.12229709037114e-08f));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(1.48572235717979e-05f));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(6.37261928875436e-04f));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(4.89352455891786e-03f));
    p = _mm512_mul_ps(p, x);
    __m512 q = _mm512_fmadd_ps(x2, _mm512_set1_ps(1.19825839466702e-06f), _mm512_set1_ps(1.18534705686654e-04f));
    q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(2.26843463243900e-03f));
    q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(4.89352518554385e-03f));
    // p / q with q in [4.9e-3, 1.1]: a 14-bit reciprocal estimate and one Newton step (~2^-27), then p · r
    __m512 r = _mm512_rcp14_ps(q);
    r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0f)));
    return Vec(_mm512_mul_ps(p, r));
  }
  static Vec sigmoid(Vec v) {
    const __m512 half = _mm512_set1_ps(0.5f);
    return Vec(_mm512_fmadd_ps(tanh(Vec(_mm512_mul_ps(v, half))), half, half));
  }
};

// Rows [b0, b0 + R) of acc[B, 64] (+)= x[b, 2·kp0 : 2·kp1] · panel[kp0 : kp1], x bf16 with an even row
// stride ldx. R × 4 accumulators, 4 weight vectors and a broadcast: 29 of the 32 zmm registers at R = 6.
template <int R>
void dp_rows(const uint16_t* x, int64_t ldx, const uint16_t* panel, int64_t kp0, int64_t kp1, float* acc,
             int64_t b0, bool first) {
  __m512 sum[R][kColVecs16];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kColVecs16; ++c)
      sum[r][c] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + (b0 + r) * kCols + c * 16);
  for (int64_t kp = kp0; kp < kp1; ++kp) {
    const uint16_t* wp = panel + kp * 2 * kCols;
    __m512bh w[kColVecs16];
    for (int c = 0; c < kColVecs16; ++c) w[c] = (__m512bh)_mm512_loadu_si512(wp + c * 32);
    for (int r = 0; r < R; ++r) {
      int32_t pair;  // x[b, 2kp] and x[b, 2kp + 1]
      std::memcpy(&pair, x + (b0 + r) * ldx + 2 * kp, sizeof(pair));
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
      for (int c = 0; c < kColVecs16; ++c) sum[r][c] = _mm512_dpbf16_ps(sum[r][c], xv, w[c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kColVecs16; ++c) _mm512_storeu_ps(acc + (b0 + r) * kCols + c * 16, sum[r][c]);
}

template <int R>
void dp_tail(int64_t rows, const uint16_t* x, int64_t ldx, const uint16_t* panel, int64_t kp0, int64_t kp1,
             float* acc, int64_t b0, bool first) {
  if constexpr (R > 0) {
    if (rows == R) return dp_rows<R>(x, ldx, panel, kp0, kp1, acc, b0, first);
    dp_tail<R - 1>(rows, x, ldx, panel, kp0, kp1, acc, b0, first);
  }
}

// acc[B, 64] = x[B, 2·KP] · panel[KP][64][2]. K is walked in chunks of 128 pairs (32 KB of panel) that stay
// in L1 while every row group uses them.
void dp_product(const uint16_t* x, int64_t ldx, int64_t B, const uint16_t* panel, int64_t KP, float* acc) {
  constexpr int kRows = 6;
  constexpr int64_t kChunk = 128;
  for (int64_t kp0 = 0; kp0 < KP; kp0 += kChunk) {
    const int64_t kp1 = std::min(KP, kp0 + kChunk);
    int64_t b = 0;
    for (; b + kRows <= B; b += kRows) dp_rows<kRows>(x, ldx, panel, kp0, kp1, acc, b, kp0 == 0);
    if (b < B) dp_tail<kRows - 1>(B - b, x, ldx, panel, kp0, kp1, acc, b, kp0 == 0);
  }
}

#if defined(FS2S_WITH_AMX)
// AMX tiles for amx_product: tmm0-3 the four 16 x 16 fp32 column blocks of a panel, tmm4 16 rows x 32 K of
// x, tmm5/tmm6 16 K-pairs x 16 columns of the panel (vdpbf16ps's pair layout is also TDPBF16PS's B layout).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64};  // bytes per row: 16 fp32, 32 bf16, 16 pairs
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16};
};

// The tile registers hold this config for the duration of one step's work in this thread: loaded at the
// start (oneDNN's GEMMs in the same OpenMP threads load their own between our calls) and released at the
// end (a thread holding tile state costs an 8 KB save on every context switch).
struct TileScope {
  explicit TileScope(bool on) : on_(on) {
    static const TileConfig cfg;
    if (on_) _tile_loadconfig(&cfg);
  }
  ~TileScope() {
    if (on_) _tile_release();
  }
  bool on_;
};

// acc[Bp, 64] = x[Bp, Kp] · panel[Kp / 2][64][2] with TDPBF16PS (16 x 16 x 32 per instruction, fp32
// accumulation); Bp a multiple of 16 and Kp of 32, x bf16 with row stride ldx (rows past the caller's B
// must be readable; their results are ignored).
void amx_product(const uint16_t* x, int64_t ldx, int64_t Bp, const uint16_t* panel, int64_t Kp, float* acc) {
  constexpr int64_t kPanelStride = 2 * kCols * sizeof(uint16_t);  // bytes from one K-pair row to the next
  for (int64_t r0 = 0; r0 < Bp; r0 += 16) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t k0 = 0; k0 < Kp; k0 += 32) {
      _tile_loadd(4, x + r0 * ldx + k0, ldx * sizeof(uint16_t));
      const uint16_t* bp = panel + k0 / 2 * 2 * kCols;
      _tile_loadd(5, bp, kPanelStride);
      _tile_loadd(6, bp + 32, kPanelStride);
      _tile_dpbf16ps(0, 4, 5);
      _tile_dpbf16ps(1, 4, 6);
      _tile_loadd(5, bp + 64, kPanelStride);
      _tile_loadd(6, bp + 96, kPanelStride);
      _tile_dpbf16ps(2, 4, 5);
      _tile_dpbf16ps(3, 4, 6);
    }
    _tile_stored(0, acc + r0 * kCols, kCols * sizeof(float));
    _tile_stored(1, acc + r0 * kCols + 16, kCols * sizeof(float));
    _tile_stored(2, acc + r0 * kCols + 32, kCols * sizeof(float));
    _tile_stored(3, acc + r0 * kCols + 48, kCols * sizeof(float));
  }
}
#else
struct TileScope {
  explicit TileScope(bool) {}
};
void amx_product(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, float*) {}
#endif

// ---- forward ----

// Step s (time t) for panels [p0, p1); panel p is units [16p, 16p + 16) × 4 gates.
void fwd_panels_of_step(const Bf16RecurrenceArgs& a, int64_t s, int64_t p0, int64_t p1) {
  const int64_t H = a.H, B = a.B, Bp = bf16_rows(B, a.amx), Kp = bf16_fwd_k(H);
  const int64_t t = a.reverse ? a.T - 1 - s : s;
  const uint16_t* h_prev = a.h_buf + (s % 2) * Bp * Kp;
  uint16_t* h_next = a.h_buf + ((s + 1) % 2) * Bp * Kp;
  float* acc = scratch<float>(Bp * kCols);
  const Vec zero(0.0f);
  const TileScope tiles(a.amx);
  for (int64_t p = p0; p < p1; ++p) {
    // Every row, finished ones too (their result is unused): the gather that the fp32 kernel does for
    // finished rows is not worth its copy at the batch sizes where bf16 is used.
    if (a.amx)
      amx_product(h_prev, Kp, Bp, a.panels + p * Kp * kCols, Kp, acc);
    else
      dp_product(h_prev, Kp, B, a.panels + p * Kp * kCols, Kp / 2, acc);
    const int64_t j = p * 16;                                        // first unit of the panel
    const int cnt = static_cast<int>(std::min<int64_t>(16, H - j));  // units of the panel inside H
    auto bias_of = [&](int g) { return a.bias != nullptr ? load_f32(a.bias + g * H + j, cnt) : zero; };
    const Vec bi = bias_of(0), bf = bias_of(1), bg = bias_of(2), bo = bias_of(3);
    for (int64_t b = 0; b < B; ++b) {
      float* c_state = a.c_state + b * H + j;
      float* c_saved = a.cells != nullptr ? a.cells + (t * B + b) * H + j : nullptr;
      uint16_t* y = a.y + (t * B + b) * H + j;
      if (a.lengths != nullptr && t + a.t_offset >= a.lengths[b]) {  // past the end: freeze, output zero
        if (c_saved != nullptr) std::memcpy(c_saved, c_state, cnt * sizeof(float));
        std::memcpy(h_next + b * Kp + j, h_prev + b * Kp + j, cnt * sizeof(uint16_t));
        std::fill(y, y + cnt, uint16_t(0));
        continue;
      }
      uint16_t* gi = a.gates + (t * B + b) * 4 * H + j;
      const float* ab = acc + b * kCols;
      const Vec ai = Vec::loadu(ab) + load_bf16(gi, cnt) + bi;
      const Vec af = Vec::loadu(ab + 16) + load_bf16(gi + H, cnt) + bf;
      const Vec ag = Vec::loadu(ab + 32) + load_bf16(gi + 2 * H, cnt) + bg;
      const Vec ao = Vec::loadu(ab + 48) + load_bf16(gi + 3 * H, cnt) + bo;
      Vec i, f, g, o, c, h;
      lstm_cell_forward<Vec, Bf16CellMath>(ai, af, ag, ao, load_f32(c_state, cnt), i, f, g, o, c, h);
      if (c_saved != nullptr) {  // saved for backward
        store_bf16(gi, i, cnt);
        store_bf16(gi + H, f, cnt);
        store_bf16(gi + 2 * H, g, cnt);
        store_bf16(gi + 3 * H, o, cnt);
        store_f32(c_saved, c, cnt);
      }
      store_f32(c_state, c, cnt);
      store_bf16(h_next + b * Kp + j, h, cnt);
      store_bf16(y, h, cnt);
    }
  }
}

// ---- backward ----

// Backward step s (time t) for panels [p0, p1), each 64 hidden units. First, unless s is the first step,
// dh = dG[t_before]·W_hh for rows active at t_before (the step processed just before t in backward order;
// other rows keep dh). Then (s < T) the cell backward of step t for these units.
void bwd_panels_of_step(const Bf16RecurrenceBwdArgs& a, int64_t s, int64_t p0, int64_t p1) {
  const int64_t H = a.H, K = 4 * a.H, T = a.T, B = a.B;
  auto time_of = [&](int64_t step) { return a.reverse ? step : T - 1 - step; };  // backward order
  auto active = [&](int64_t b, int64_t t) { return a.lengths == nullptr || t < a.lengths[b]; };
  float* acc = scratch<float>(bf16_rows(B, a.amx) * kCols);
  const TileScope tiles(a.amx && s > 0);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t j0 = p * kCols;
    if (s > 0) {
      const int64_t t_before = time_of(s - 1);
      const uint16_t* dg_before = a.dgates + t_before * B * K;
      if (a.amx)
        amx_product(dg_before, K, bf16_rows(B, true), a.panels + p * K * kCols, K, acc);
      else
        dp_product(dg_before, K, B, a.panels + p * K * kCols, K / 2, acc);
      for (int64_t b = 0; b < B; ++b) {
        if (!active(b, t_before)) continue;  // a frozen step passes dh through
        std::memcpy(a.dh + b * H + j0, acc + b * kCols, std::min<int64_t>(kCols, H - j0) * sizeof(float));
      }
    }
    if (s == T) continue;
    const int64_t t = time_of(s);
    const int64_t t_prev = a.reverse ? t + 1 : t - 1;  // the step before t in forward order (c_{t-1})
    const bool first_fwd = s == T - 1;                  // t is the first step of the forward pass
    for (int64_t b = 0; b < B; ++b) {
      const bool on = active(b, t);
      for (int64_t j = j0; j < std::min(H, j0 + kCols); j += 16) {
        const int cnt = static_cast<int>(std::min<int64_t>(16, H - j));
        uint16_t* dg = a.dgates + (t * B + b) * K + j;
        float* dg32 = a.dgates_f32 != nullptr ? a.dgates_f32 + (t * B + b) * K + j : nullptr;
        if (!on) {
          for (int g = 0; g < 4; ++g) std::fill(dg + g * H, dg + g * H + cnt, uint16_t(0));
          if (dg32 != nullptr)
            for (int g = 0; g < 4; ++g) std::fill(dg32 + g * H, dg32 + g * H + cnt, 0.0f);
          continue;
        }
        const uint16_t* gt = a.gates + (t * B + b) * K + j;
        const float* cp = first_fwd ? a.c0 + b * H + j : a.cells + (t_prev * B + b) * H + j;
        const Vec dh = load_f32(a.dh + b * H + j, cnt) + load_bf16(a.dy + (t * B + b) * H + j, cnt);
        Vec dc = load_f32(a.dc + b * H + j, cnt);
        Vec dai, daf, dag, dao;
        lstm_cell_backward<Vec, Bf16CellMath>(load_bf16(gt, cnt), load_bf16(gt + H, cnt),
                                                load_bf16(gt + 2 * H, cnt), load_bf16(gt + 3 * H, cnt),
                                                load_f32(a.cells + (t * B + b) * H + j, cnt), load_f32(cp, cnt),
                                                dh, dc, dai, daf, dag, dao);
        store_f32(a.dc + b * H + j, dc, cnt);
        store_bf16(dg, dai, cnt);
        store_bf16(dg + H, daf, cnt);
        store_bf16(dg + 2 * H, dag, cnt);
        store_bf16(dg + 3 * H, dao, cnt);
        if (dg32 != nullptr) {
          store_f32(dg32, dai, cnt);
          store_f32(dg32 + H, daf, cnt);
          store_f32(dg32 + 2 * H, dag, cnt);
          store_f32(dg32 + 3 * H, dao, cnt);
        }
      }
    }
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

bool bf16_amx_supported() {
#if defined(FS2S_WITH_AMX)
  static const bool ok = [] {
    unsigned eax, ebx, ecx, edx;
    __asm__("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
    const bool cpu = (edx >> 22 & 1) && (edx >> 24 & 1);  // AMX-BF16, AMX-TILE
    // Linux hands out the tile state only on request (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); without
    // it the first tile instruction raises SIGILL. torch's oneDNN asks too; asking twice is fine.
    constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return cpu && syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

// Both packs write each panel's K-pair rows (64 columns x 2 = 256 bytes) contiguously and split the panels
// across threads: an element-by-element pack cost as much as ten steps of the recurrence at T50 H256.
void bf16_pack_fwd_panels(const uint16_t* w_hh, int64_t H, uint16_t* panels) {
  const int64_t Kp = bf16_fwd_k(H), n_panels = (H + 15) / 16;
  at::parallel_for(0, n_panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const uint16_t* rows[kBf16PanelCols];  // the W_hh row of each column (nullptr: a unit past H)
      for (int64_t c = 0; c < kBf16PanelCols; ++c) {
        const int64_t unit = p * 16 + c % 16;
        rows[c] = unit < H ? w_hh + ((c / 16) * H + unit) * H : nullptr;
      }
      uint16_t* out = panels + p * Kp * kBf16PanelCols;
      for (int64_t k = 0; k < Kp; k += 2, out += 2 * kBf16PanelCols)
        for (int64_t c = 0; c < kBf16PanelCols; ++c) {
          out[2 * c] = rows[c] != nullptr && k < H ? rows[c][k] : uint16_t(0);
          out[2 * c + 1] = rows[c] != nullptr && k + 1 < H ? rows[c][k + 1] : uint16_t(0);
        }
    }
  });
}

void bf16_pack_bwd_panels(const uint16_t* w_hh, int64_t H, uint16_t* panels) {
  const int64_t K = 4 * H, n_panels = (H + kBf16PanelCols - 1) / kBf16PanelCols;
  at::parallel_for(0, n_panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * kBf16PanelCols, cols = std::min<int64_t>(kBf16PanelCols, H - n0);
      uint16_t* out = panels + p * K * kBf16PanelCols;
      for (int64_t k = 0; k < K; k += 2, out += 2 * kBf16PanelCols) {
        const uint16_t* r0 = w_hh + k * H + n0;  // rows k and k + 1 of W_hh, interleaved column by column
        const uint16_t* r1 = r0 + H;
        for (int64_t c = 0; c < cols; ++c) {
          out[2 * c] = r0[c];
          out[2 * c + 1] = r1[c];
        }
        std::fill(out + 2 * cols, out + 2 * kBf16PanelCols, uint16_t(0));
      }
    }
  });
}

void bf16_fused_recurrence(const Bf16RecurrenceArgs& a) {
  CPU_CAPABILITY::recurrence::run_steps(a.T, (a.H + 15) / 16, bf16_fwd_k(a.H) * kBf16PanelCols, [&](int64_t s, int64_t p0, int64_t p1) {
    CPU_CAPABILITY::fwd_panels_of_step(a, s, p0, p1);
  });
}

void bf16_fused_recurrence_bwd(const Bf16RecurrenceBwdArgs& a) {
  // Steps 0..T-1 are the cells in backward order; step T only finishes dh0 from the last dG.
  CPU_CAPABILITY::recurrence::run_steps(a.T + 1, (a.H + kBf16PanelCols - 1) / kBf16PanelCols, 4 * a.H * kBf16PanelCols,
                            [&](int64_t s, int64_t p0, int64_t p1) { CPU_CAPABILITY::bwd_panels_of_step(a, s, p0, p1); });
}

}  // namespace fused_s2s::cpu
