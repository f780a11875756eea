// A kernel that exercises only the smem pipe (CUTLASS's test/unit/pipeline idea): one producer
// warp TPUSHes `rounds` stages of known words with cp.async through the ring, four consumer
// warps TPOP, check every word and TFREE. On a GPU it tells a pipe-protocol fault (mismatches,
// watchdog trap) apart from a bug in the attention math.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kernel_launch.h"
#include "cuda/smem_pipe.cuh"
#include "cuda/warp_mma.cuh"

namespace mixpa::cuda {
namespace {

constexpr int kSelftestStageBytes = 2048;
constexpr int kSelftestWords = kSelftestStageBytes / 4;

__host__ __device__ inline std::uint32_t selftest_word(std::uint32_t round, std::uint32_t j) {
  std::uint32_t x = round * 0x9e3779b9u ^ (j + 0x7f4a7c15u);
  x ^= x >> 16;
  x *= 0x85ebca6bu;
  x ^= x >> 13;
  return x;
}

__global__ void __launch_bounds__(kThreads, 1) pipe_selftest_kernel(const std::uint32_t* src, int rounds, int stages,
                                                                     bool warp_elected_release,
                                                                     unsigned long long* mismatches) {
  extern __shared__ __align__(128) unsigned char smem[];
  auto* full = reinterpret_cast<std::uint64_t*>(smem);
  auto* empty = reinterpret_cast<std::uint64_t*>(smem + 8 * kMaxStages);
  const SmemPipe pipe(full, empty, smem + 128, kSelftestStageBytes, stages,
                      warp_elected_release ? SmemPipe::Release::kWarpElected : SmemPipe::Release::kEveryLane);
  if (threadIdx.x == 0) pipe.init(32 * kProducerWarps, kComputeWarps);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp == kComputeWarps) {
    PipeState s = pipe.producer_start_state();
    for (int r = 0; r < rounds; ++r) {
      const std::uint32_t dst = smem_address(tpush_begin(pipe, s));
      for (int c = lane; c < kSelftestStageBytes / 16; c += 32)
        cp_async_16(dst + 16 * c, src + static_cast<std::int64_t>(r) * kSelftestWords + 4 * c, 16u);
      tpush_end(pipe, s);
    }
  } else {
    PipeState s = pipe.consumer_start_state();
    unsigned long long bad = 0;
    for (int r = 0; r < rounds; ++r) {
      const auto* words = reinterpret_cast<const std::uint32_t*>(tpop(pipe, s));
      for (int j = lane; j < kSelftestWords; j += 32) bad += words[j] != selftest_word(r, j);
      tfree(pipe, s);
    }
    if (bad) atomicAdd(mismatches, bad);
  }
}

__global__ void fill_selftest_words(std::uint32_t* src, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    src[i] = selftest_word(static_cast<std::uint32_t>(i / kSelftestWords), static_cast<std::uint32_t>(i % kSelftestWords));
}

}  // namespace

cudaError_t run_pipe_selftest(int stages, int rounds, int ctas, unsigned long long* mismatches, bool warp_elected_release) {
  if (stages < 1 || stages > kMaxStages || rounds < 1 || ctas < 1) return cudaErrorInvalidValue;
  std::uint32_t* src = nullptr;
  unsigned long long* d_bad = nullptr;
  const std::int64_t n = static_cast<std::int64_t>(rounds) * kSelftestWords;
  cudaError_t e = cudaMalloc(&src, n * sizeof(std::uint32_t));
  if (e == cudaSuccess) e = cudaMalloc(&d_bad, sizeof(unsigned long long));
  if (e == cudaSuccess) e = cudaMemset(d_bad, 0, sizeof(unsigned long long));
  if (e == cudaSuccess) {
    fill_selftest_words<<<64, 256>>>(src, n);
    e = cudaGetLastError();
  }
  const int smem = 128 + stages * kSelftestStageBytes;
  if (e == cudaSuccess) {
    pipe_selftest_kernel<<<ctas, kThreads, smem>>>(src, rounds, stages, warp_elected_release, d_bad);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e == cudaSuccess) e = cudaMemcpy(mismatches, d_bad, sizeof(unsigned long long), cudaMemcpyDeviceToHost);
  cudaFree(src);
  cudaFree(d_bad);
  return e;
}

}  // namespace mixpa::cuda
