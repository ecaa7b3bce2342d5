// Picks the capability build of the per-step kernels (lstm_kernels.cpp) that matches this CPU, following
// ATen's choice (at::get_cpu_capability(), which honours ATEN_CPU_CAPABILITY=default|avx2|avx512).
#include "capability.h"
#include "lstm_kernels.h"

namespace fused_s2s::cpu {

template <typename scalar_t>
void fwd_pointwise(const FwdPointwiseArgs<scalar_t>& a) { FS2S_DISPATCH(fwd_pointwise, a) }
template <typename scalar_t>
void bwd_pointwise(const BwdPointwiseArgs<scalar_t>& a) { FS2S_DISPATCH(bwd_pointwise, a) }
template <typename scalar_t>
void small_gemm(const SmallGemmArgs<scalar_t>& a) { FS2S_DISPATCH(small_gemm, a) }
template <typename scalar_t>
void small_gemm_pack(const SmallGemmPackArgs<scalar_t>& a) { FS2S_DISPATCH(small_gemm_pack, a) }
template <typename scalar_t>
int64_t small_gemm_panel_width() { FS2S_DISPATCH(small_gemm_panel_width, scalar_t()) }
template <typename scalar_t>
void fused_recurrence(const FusedRecurrenceArgs<scalar_t>& a) { FS2S_DISPATCH(fused_recurrence, a) }
template <typename scalar_t>
void fused_recurrence_bwd(const FusedRecurrenceBwdArgs<scalar_t>& a) { FS2S_DISPATCH(fused_recurrence_bwd, a) }

template void fwd_pointwise<float>(const FwdPointwiseArgs<float>&);
template void fwd_pointwise<double>(const FwdPointwiseArgs<double>&);
template void bwd_pointwise<float>(const BwdPointwiseArgs<float>&);
template void bwd_pointwise<double>(const BwdPointwiseArgs<double>&);
template void small_gemm<float>(const SmallGemmArgs<float>&);
template void small_gemm<double>(const SmallGemmArgs<double>&);
template void small_gemm_pack<float>(const SmallGemmPackArgs<float>&);
template void small_gemm_pack<double>(const SmallGemmPackArgs<double>&);
template int64_t small_gemm_panel_width<float>();
template int64_t small_gemm_panel_width<double>();
template void fused_recurrence<float>(const FusedRecurrenceArgs<float>&);
template void fused_recurrence<double>(const FusedRecurrenceArgs<double>&);
template void fused_recurrence_bwd<float>(const FusedRecurrenceBwdArgs<float>&);
template void fused_recurrence_bwd<double>(const FusedRecurrenceBwdArgs<double>&);

}  // namespace fused_s2s::cpu
