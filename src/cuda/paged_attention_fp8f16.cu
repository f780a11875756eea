// The attention kernel's instantiations for KernelDtype 3 (fp8f16): paged_attention.cuh.
#include "cuda/paged_attention.cuh"

namespace mixpa::cuda::kernels {
template cudaError_t dtype_entry<3>(KernelOp, const KernelParams*, int, int, int, int, cudaStream_t);
}  // namespace mixpa::cuda::kernels
