// Streaming-read roofline kernel: every byte read once with 16-byte loads, four of them in
// flight per thread (issued before any is used: a one-load loop leaves HBM under-occupied
// and flatters the kernel it judges), folded into one word per thread that is stored only if
// it matches an impossible value (no dead code).
#include "stream_read.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace mixpa::bench {
namespace {

constexpr int kLoadsInFlight = 4;

__global__ void stream_read_kernel(const uint4* __restrict__ data, std::size_t n, unsigned* sink) {
  unsigned acc = 0;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  for (; i + (kLoadsInFlight - 1) * stride < n; i += kLoadsInFlight * stride) {
    uint4 v[kLoadsInFlight];
#pragma unroll
    for (int k = 0; k < kLoadsInFlight; ++k) v[k] = __ldcs(data + i + k * stride);
#pragma unroll
    for (int k = 0; k < kLoadsInFlight; ++k) acc ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w;
  }
  for (; i < n; i += stride) {
    const uint4 v = __ldcs(data + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("stream_read: ") + what + ": " + cudaGetErrorString(e));
}

}  // namespace

double measure_read_bandwidth(std::size_t bytes, int reps) {
  const std::size_t n = bytes / sizeof(uint4);
  uint4* data = nullptr;
  unsigned* sink = nullptr;
  check(cudaMalloc(&data, n * sizeof(uint4)), "cudaMalloc");
  check(cudaMalloc(&sink, sizeof(unsigned)), "cudaMalloc");
  check(cudaMemset(data, 1, n * sizeof(uint4)), "cudaMemset");
  int sms = 0, dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "cudaEventCreate");
  check(cudaEventCreate(&b), "cudaEventCreate");
  std::vector<double> seconds;
  for (int r = -2; r < reps; ++r) {
    check(cudaEventRecord(a), "cudaEventRecord");
    stream_read_kernel<<<sms * 4, 512>>>(data, n, sink);
    check(cudaGetLastError(), "launch");
    check(cudaEventRecord(b), "cudaEventRecord");
    check(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    if (r >= 0) seconds.push_back(ms * 1e-3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaFree(data);
  cudaFree(sink);
  std::sort(seconds.begin(), seconds.end());
  return static_cast<double>(n * sizeof(uint4)) / seconds[seconds.size() / 2];
}

}  // namespace mixpa::bench
