// Host entry points of the attention kernel (kernel_launch.h): each KernelDtype's
// instantiations live in their own translation unit (paged_attention_<dtype>.cu, compiled in
// parallel); these functions pick one.
#include <cuda_runtime.h>

#include "cuda/kernel_launch.h"

namespace mixpa::cuda {

namespace {
using kernels::KernelOp;

cudaError_t with_dtype(KernelDtype dtype, KernelOp op, const KernelParams* p, int head_dim, int row_frags, int grid,
                       int smem_bytes, cudaStream_t stream) {
  switch (dtype) {
    case KernelDtype::kBf16: return kernels::dtype_entry<0>(op, p, head_dim, row_frags, grid, smem_bytes, stream);
    case KernelDtype::kF16: return kernels::dtype_entry<1>(op, p, head_dim, row_frags, grid, smem_bytes, stream);
    case KernelDtype::kFp8Bf16: return kernels::dtype_entry<2>(op, p, head_dim, row_frags, grid, smem_bytes, stream);
    case KernelDtype::kFp8F16: return kernels::dtype_entry<3>(op, p, head_dim, row_frags, grid, smem_bytes, stream);
  }
  return cudaErrorInvalidValue;
}
}  // namespace

bool kernel_supported(int head_dim, int row_frags) {
  return (head_dim == 64 || head_dim == 128 || head_dim == 256) && (row_frags == 1 || row_frags == 4);
}

cudaError_t prepare_kernel(int head_dim, int row_frags, KernelDtype dtype, int smem_bytes) {
  return with_dtype(dtype, KernelOp::kPrepare, nullptr, head_dim, row_frags, 0, smem_bytes, nullptr);
}

cudaError_t kernel_image_check() {
  return with_dtype(KernelDtype::kBf16, KernelOp::kImageCheck, nullptr, 128, 1, 0, 0, nullptr);
}

cudaError_t launch_paged_attention(const KernelParams& p, int head_dim, int row_frags, KernelDtype dtype, int grid,
                                   int smem_bytes, cudaStream_t stream) {
  if (p.num_items == 0) return cudaSuccess;
  return with_dtype(dtype, KernelOp::kLaunch, &p, head_dim, row_frags, grid, smem_bytes, stream);
}

}  // namespace mixpa::cuda
