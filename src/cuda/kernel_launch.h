// Host entry points into paged_attention.cu (the only translation unit nvcc compiles).
// They return cudaError_t; the host side turns failures into mixpa::Error.
#pragma once

#include <cuda_runtime.h>

#include "cuda/kernel_params.h"

namespace mixpa::cuda {

// The instantiations this build has: head_dim {64, 128, 256} x row_frags {1, 4}, each for every
// KernelDtype (smaller head_dims run padded on the next one up).
bool kernel_supported(int head_dim, int row_frags);

// Raises the kernel's dynamic shared-memory limit to at least smem_bytes (needed above 48 KiB;
// never lowers it); once per plan.
cudaError_t prepare_kernel(int head_dim, int row_frags, KernelDtype dtype, int smem_bytes);

// cudaSuccess when this device has a kernel image (the build's architectures fit it).
cudaError_t kernel_image_check();

// Enqueues the attention kernel on `stream` (split blocks are merged inside it).
// No host synchronisation and no allocation: capturable into a CUDA graph.
cudaError_t launch_paged_attention(const KernelParams& params, int head_dim, int row_frags, KernelDtype dtype, int grid,
                                   int smem_bytes, cudaStream_t stream);

namespace kernels {
// What paged_attention.cu asks of one dtype's instantiations (paged_attention_<dtype>.cu).
enum class KernelOp { kPrepare, kLaunch, kImageCheck };
template <int kDtype>
cudaError_t dtype_entry(KernelOp op, const KernelParams* p, int head_dim, int row_frags, int grid, int smem_bytes,
                        cudaStream_t stream);
extern template cudaError_t dtype_entry<0>(KernelOp, const KernelParams*, int, int, int, int, cudaStream_t);
extern template cudaError_t dtype_entry<1>(KernelOp, const KernelParams*, int, int, int, int, cudaStream_t);
extern template cudaError_t dtype_entry<2>(KernelOp, const KernelParams*, int, int, int, int, cudaStream_t);
extern template cudaError_t dtype_entry<3>(KernelOp, const KernelParams*, int, int, int, int, cudaStream_t);
}  // namespace kernels

// Pipe protocol self-test (pipe_selftest.cu): `rounds` stages through a ring of `stages` on
// `ctas` CTAs; *mismatches = words the consumers saw wrong (0 when the pipe is right). Syncs.
// warp_elected_release: TFREE as one arrival per warp after __syncwarp (the form racecheck
// cannot follow: a control for the sanitizer step) instead of the kernels' per-lane arrivals.
cudaError_t run_pipe_selftest(int stages, int rounds, int ctas, unsigned long long* mismatches,
                              bool warp_elected_release = false);

}  // namespace mixpa::cuda
