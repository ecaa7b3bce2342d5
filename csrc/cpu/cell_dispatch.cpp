// Picks the capability build of the GRU/RNN/peephole-LSTM per-step kernels (cell_kernels.cpp) that matches this CPU.
#include "capability.h"
#include "cell_kernels.h"

namespace fused_s2s::cpu {

template <typename scalar_t>
void gru_fwd_pointwise(const GruFwdArgs<scalar_t>& a) { FS2S_DISPATCH(gru_fwd_pointwise, a) }
template <typename scalar_t>
void gru_bwd_pointwise(const GruBwdArgs<scalar_t>& a) { FS2S_DISPATCH(gru_bwd_pointwise, a) }
template <typename scalar_t>
void rnn_fwd_pointwise(const RnnFwdArgs<scalar_t>& a) { FS2S_DISPATCH(rnn_fwd_pointwise, a) }
template <typename scalar_t>
void rnn_bwd_pointwise(const RnnBwdArgs<scalar_t>& a) { FS2S_DISPATCH(rnn_bwd_pointwise, a) }

template <typename scalar_t>
void peephole_fwd_pointwise(const PeepholeFwdArgs<scalar_t>& a) { FS2S_DISPATCH(peephole_fwd_pointwise, a) }
template <typename scalar_t>
void peephole_bwd_pointwise(const PeepholeBwdArgs<scalar_t>& a) { FS2S_DISPATCH(peephole_bwd_pointwise, a) }

template <typename scalar_t>
void cell_pack_panels(const CellPanelPackArgs<scalar_t>& a) { FS2S_DISPATCH(cell_pack_panels, a) }
template <typename scalar_t>
int64_t cell_panel_units(int64_t gates) {
  switch (capability()) {
    case Capability::kAvx512: return AVX512::cell_panel_units(scalar_t(0), gates);
    case Capability::kAvx2: return AVX2::cell_panel_units(scalar_t(0), gates);
    default: return DEFAULT::cell_panel_units(scalar_t(0), gates);
  }
}
template <typename scalar_t>
void gru_recurrence(const GruRecurrenceArgs<scalar_t>& a) { FS2S_DISPATCH(gru_recurrence, a) }
template <typename scalar_t>
void rnn_recurrence(const RnnRecurrenceArgs<scalar_t>& a) { FS2S_DISPATCH(rnn_recurrence, a) }

template void cell_pack_panels<float>(const CellPanelPackArgs<float>&);
template void cell_pack_panels<double>(const CellPanelPackArgs<double>&);
template int64_t cell_panel_units<float>(int64_t);
template int64_t cell_panel_units<double>(int64_t);
template void gru_recurrence<float>(const GruRecurrenceArgs<float>&);
template void gru_recurrence<double>(const GruRecurrenceArgs<double>&);
template void rnn_recurrence<float>(const RnnRecurrenceArgs<float>&);
template void rnn_recurrence<double>(const RnnRecurrenceArgs<double>&);
template void peephole_fwd_pointwise<float>(const PeepholeFwdArgs<float>&);
template void peephole_fwd_pointwise<double>(const PeepholeFwdArgs<double>&);
template void peephole_bwd_pointwise<float>(const PeepholeBwdArgs<float>&);
template void peephole_bwd_pointwise<double>(const PeepholeBwdArgs<double>&);
template void gru_fwd_pointwise<float>(const GruFwdArgs<float>&);
template void gru_fwd_pointwise<double>(const GruFwdArgs<double>&);
template void gru_bwd_pointwise<float>(const GruBwdArgs<float>&);
template void gru_bwd_pointwise<double>(const GruBwdArgs<double>&);
template void rnn_fwd_pointwise<float>(const RnnFwdArgs<float>&);
template void rnn_fwd_pointwise<double>(const RnnFwdArgs<double>&);
template void rnn_bwd_pointwise<float>(const RnnBwdArgs<float>&);
template void rnn_bwd_pointwise<double>(const RnnBwdArgs<double>&);

}  // namespace fused_s2s::cpu
