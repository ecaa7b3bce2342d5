// Picks the capability build of the decoder-step kernels (decoder_kernels.cpp) that matches this CPU.
#include "capability.h"
#include "decoder_kernels.h"

namespace fused_s2s::cpu {

template <typename scalar_t>
void decoder_attention(const DecoderAttentionArgs<scalar_t>& a) { FS2S_DISPATCH(decoder_attention, a) }

template <typename scalar_t>
void rowwise_linear(const RowwiseLinearArgs<scalar_t>& a) { FS2S_DISPATCH(rowwise_linear, a) }

template void decoder_attention<float>(const DecoderAttentionArgs<float>&);
template void decoder_attention<double>(const DecoderAttentionArgs<double>&);
template void rowwise_linear<float>(const RowwiseLinearArgs<float>&);
template void rowwise_linear<double>(const RowwiseLinearArgs<double>&);

}  // namespace fused_s2s::cpu
