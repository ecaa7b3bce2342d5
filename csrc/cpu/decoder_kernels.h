// Vectorised CPU kernels of the fused decoder step (decoder_step.cpp), compiled once per CPU capability
// (DEFAULT, AVX2, AVX512) from decoder_kernels.cpp and picked at run time like lstm_kernels.h.
#pragma once

#include <cstdint>

namespace fused_s2s::cpu {

// One query per batch row over a padded source: scores, masked softmax and context in one pass per row.
//   dot:      score_s = scale · query · keys_s
//   additive: score_s = Σ_k v_k tanh(query_k + keys_{s,k})   (query = w_query·h + b_query, keys = memory·w_memoryᵀ)
// Positions s ≥ lengths[b] get weight exactly 0 and never reach the context.
template <typename scalar_t>
struct DecoderAttentionArgs {
  const scalar_t* query;   // [B, K]
  const scalar_t* keys;    // [B, S, K]
  const scalar_t* values;  // [B, S, M] (the memory)
  const int64_t* lengths;  // [B], each in 1..S, or nullptr (every position valid)
  const scalar_t* v;       // [K] for additive scores, nullptr for dot scores
  scalar_t scale;          // dot scores only
  scalar_t* attn;          // [B, S] out: the attention weights
  scalar_t* context;       // [B, M] out
  int64_t B, S, K, M;
};

// out = x·wᵀ (+ bias) for a batch of at most kMaxRowwiseBatch rows: a matrix-vector product, bound by
// reading w (row-major, as stored). Each thread streams its own contiguous block of w's rows, four rows at a
// time against every x row, so w is read exactly once per call.
// Above 4 rows oneDNN's packed GEMM wins (B5: 320 vs 380 us, B8: 434 vs 547 us per H512 step with 2 × 4
// accumulators per block).
constexpr int64_t kMaxRowwiseBatch = 4;

template <typename scalar_t>
struct RowwiseLinearArgs {
  const scalar_t* x;     // [B, K], B ≤ kMaxRowwiseBatch
  const scalar_t* w;     // [N, K]
  const scalar_t* bias;  // [N] or nullptr
  scalar_t* out;         // [B, N]
  int64_t B, N, K;
  bool tanh_out = false;  // out = tanh(x·wᵀ + bias) (the decoder's combine)
};

#define FS2S_DECLARE_DECODER_KERNELS(NS)                            \
  namespace NS {                                                    \
  void decoder_attention(const DecoderAttentionArgs<float>& a);     \
  void decoder_attention(const DecoderAttentionArgs<double>& a);    \
  void rowwise_linear(const RowwiseLinearArgs<float>& a);           \
  void rowwise_linear(const RowwiseLinearArgs<double>& a);          \
  }

FS2S_DECLARE_DECODER_KERNELS(DEFAULT)
FS2S_DECLARE_DECODER_KERNELS(AVX2)
FS2S_DECLARE_DECODER_KERNELS(AVX512)

#undef FS2S_DECLARE_DECODER_KERNELS

template <typename scalar_t>
void decoder_attention(const DecoderAttentionArgs<scalar_t>& a);
template <typename scalar_t>
void rowwise_linear(const RowwiseLinearArgs<scalar_t>& a);

}  // namespace fused_s2s::cpu
