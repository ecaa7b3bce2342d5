// The native bf16 fused recurrences of the CPU LSTM (lstm_bf16_recurrence.cpp), built only where the
// compiler takes -mavx512bf16 and run only where the CPU has AVX512-BF16 (bf16_kernels_supported()).
//
// Same scheme as the fp32 fused recurrence (lstm_kernels.h, FusedRecurrenceArgs): each thread owns panels of
// W_hh that stay in its L2, one OpenMP barrier per step. The products take bf16 operands in pairs along K
// (vdpbf16ps, fp32 accumulation); everything else — cell math, c, the state gradients — is fp32. bf16
// values are passed as uint16_t bit patterns (torch's rounding: round to nearest even).
#pragma once

#include <cstdint>

namespace fused_s2s::cpu {

// Panels for the products. A panel is [Kp / 2][64][2] bf16: for each pair of K indices, 64 columns of two
// consecutive K values, which is the operand layout of vdpbf16ps (one 32-bit lane = one column's pair) and,
// 16 pairs x 16 columns at a time, of AMX's TDPBF16PS. K past the matrix and columns past N are zero.
//   forward:  w = W_hh [4H, H], K = H, Kp = bf16_fwd_k(H); panel p holds the four gates of units
//             [16p, 16p + 16): column 16g + u is row gH + 16p + u, so one panel yields whole cells.
//             ceil(H / 16) panels.
//   backward: w = W_hhᵀ (element (k, n) = W_hh[k, n], k < 4H, n < H), K = Kp = 4H; panel p holds units
//             [64p, 64p + 64). ceil(H / 64) panels.
constexpr int64_t kBf16PanelCols = 64;
inline int64_t bf16_fwd_k(int64_t H) { return (H + 31) / 32 * 32; }  // whole 32-wide AMX K blocks
// Rows the products compute: whole 16-row tiles with AMX, else exactly B.
inline int64_t bf16_rows(int64_t B, bool amx) { return amx ? (B + 15) / 16 * 16 : B; }
void bf16_pack_fwd_panels(const uint16_t* w_hh, int64_t H, uint16_t* panels);  // w_hh [4H, H] contiguous
void bf16_pack_bwd_panels(const uint16_t* w_hh, int64_t H, uint16_t* panels);  // w_hh [4H, H] contiguous
inline int64_t bf16_fwd_panels_elems(int64_t H) { return (H + 15) / 16 * bf16_fwd_k(H) * kBf16PanelCols; }
inline int64_t bf16_bwd_panels_elems(int64_t H) { return (H + 63) / 64 * 4 * H * kBf16PanelCols; }

// Whether the products may use AMX (AMX-TILE and AMX-BF16, the kernel built with them, and the OS granted
// this process the tile state). The backward product also needs 4H to be a multiple of 32.
bool bf16_amx_supported();

// The forward recurrence of one layer without projection.
struct Bf16RecurrenceArgs {
  const uint16_t* panels;  // forward panels of W_hh (above)
  uint16_t* gates;         // [T, B, 4H] bf16 in: x·W_ihᵀ (no bias); out (when cells): activated i, f, g, o
  const float* bias;       // [4H] b_ih + b_hh in fp32, or nullptr
  float* cells;            // [T, B, H] out: c after each step (frozen rows included); nullptr: inference,
                           // nothing saved (gates are then only read)
  uint16_t* y;             // [T, B, H] bf16 out (0 where inactive)
  uint16_t* h_buf;         // [2, bf16_rows(B, amx), bf16_fwd_k(H)] bf16, zero past B rows and H columns:
                           // h_buf[0] holds h0; the final state ends in h_buf[T % 2]
  float* c_state;          // [B, H] in: c0, out: c_n
  const int64_t* lengths;  // [B] or nullptr
  int64_t T, B, H;
  bool reverse;
  int64_t t_offset = 0;    // these T steps are steps t_offset.. of the sequence (for lengths)
  bool amx = false;        // AMX products (bf16_amx_supported()), else vdpbf16ps
};

// The backward recurrence of one layer without projection: the mirror of Bf16RecurrenceArgs. Each thread
// owns panels of W_hhᵀ (64 units), computes dG_{t'}·W_hh for its units (t' the step processed just before),
// adds dy[t] and runs the cell backward for those units.
struct Bf16RecurrenceBwdArgs {
  const uint16_t* panels;  // backward panels of W_hhᵀ (above)
  const uint16_t* gates;   // [T, B, 4H] bf16 saved activated gates
  const float* cells;      // [T, B, H] saved cells
  const float* c0;         // [B, H]
  const uint16_t* dy;      // [T, B, H] bf16
  uint16_t* dgates;        // [T, B, 4H] bf16 out (0 where inactive); with amx, followed by 16 readable
                           // rows of 4H (the last step's tiles read up to 16 rows)
  float* dgates_f32;       // [T, B, 4H] the same in fp32 (for the weight gradients of few rows), or nullptr
  float* dh;               // [B, H] in: dL/dh_n; out: dL/dh0
  float* dc;               // [B, H] in: dL/dc_n; out: dL/dc0
  const int64_t* lengths;  // [B] or nullptr
  int64_t T, B, H;
  bool reverse;
  bool amx = false;        // AMX products (bf16_amx_supported() and 4H % 32 == 0), else vdpbf16ps
};

// Whether the kernels were compiled and this CPU runs them (AVX512-BF16, and ATen's capability is AVX512,
// so ATEN_CPU_CAPABILITY=avx2 turns them off like the other AVX-512 kernels).
bool bf16_kernels_supported();

void bf16_fused_recurrence(const Bf16RecurrenceArgs& a);
void bf16_fused_recurrence_bwd(const Bf16RecurrenceBwdArgs& a);

}  // namespace fused_s2s::cpu
