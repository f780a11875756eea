// Executor "cuda": paged attention on an NVIDIA GPU (sm_80+, tuned for sm_90).
//  - DevicePlan is the device-resident engine behind the public mixpa::cuda::PagedAttention
//    (include/mixpa/cuda.h), FlashInfer's plan/run shape: plan once on the host from the
//    shapes, the variant and host context lengths, then run() on device pointers and a
//    stream: no host synchronisation, no allocation, capturable into a CUDA graph. Page ids
//    are checked on the device; check_errors() reports a bad one as mixpa::Error.
//  - run_cuda is the table's entry for host data: upload, run, check, download.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/plan.h"
#include "core/problem.h"
#include "cuda/work_plan.h"
#include "mixpa/paged_attention.h"

namespace mixpa::cuda {

// True when the CUDA runtime finds a device that has this build's kernel image. Never throws
// (no driver, no device: false).
bool device_available();

// Throws mixpa::Error("cuda: <call>: <reason>") when `e` is not cudaSuccess.
void check(cudaError_t e, const char* call);

// The current device's SM count and opt-in shared memory per block.
DeviceLimits current_device_limits();

// Owning device allocation; freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T> T* as() const { return static_cast<T*>(ptr_); }
  std::size_t bytes() const { return bytes_; }
  void upload(const void* host, std::size_t bytes);  // synchronous
  void zero();                                        // synchronous (before any launch reads it)
 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// Device pointers of the inputs, laid out as SPEC §1 / §6 (strides in elements; head_dim
// stride 1), of the dtypes the plan was made for. Pointers must be 16-byte aligned and cache
// strides multiples of 16 bytes (cp.async): 8 elements of bf16 / f16, 16 of fp8.
struct DeviceTensors {
  const void* query = nullptr;        // [batch, q_len, num_heads, head_dim], bf16 or f16
  const void* key_cache = nullptr;    // bf16, f16, e4m3 or e5m2
  const void* value_cache = nullptr;
  CacheStrides k_strides;
  CacheStrides v_strides;
  const std::int32_t* block_table = nullptr;    // [batch, max_blocks_per_req] int32, or
  const float* alibi_slopes = nullptr;  // [num_heads] or nullptr
  const float* sinks = nullptr;         // [num_heads] or nullptr
  const std::int64_t* block_table64 = nullptr;  // the same table in int64 (then block_table is unused)
};

class DevicePlan {
 public:
  // Plans for the current device: work items (the window's token ranges), ring depth, grid;
  // uploads the work list and allocates the partials and merge counters. host_context_lens
  // must be the values the device copy will hold. Of `variant`, the soft-cap and the window
  // are taken here; slopes and sinks are device pointers given to run(). `types`: the query's
  // and the caches' dtypes; k_scale / v_scale: the fp8 scales (1 otherwise).
  DevicePlan(const Plan& plan, IndexView host_context_lens, const WorkPlanOptions& options = {},
             const Variant& variant = {}, KernelTypes types = {}, float k_scale = 1.0f, float v_scale = 1.0f);

  // Enqueues the kernel on `stream`; writes out[batch, q_len, num_heads, head_dim] (device,
  // fp32) and, when lse is not null, lse[batch, q_len, num_heads].
  void run(const DeviceTensors& tensors, float* out, cudaStream_t stream, float* lse = nullptr) const;

  // Synchronises `stream` and returns the error flags the kernels raised since the last read
  // (kErrorPageOutOfRange), clearing them on `stream`.
  int read_error_flags(cudaStream_t stream) const;
  // read_error_flags, then mixpa::Error for any flag (a page id outside [0, num_blocks)).
  void check_errors(cudaStream_t stream) const;

  const WorkPlan& work() const { return work_; }

 private:
  Plan plan_;
  float softcap_ = 0.0f;
  float k_scale_ = 1.0f, v_scale_ = 1.0f;
  WorkPlan work_;
  DeviceBuffer items_, merges_, counters_, part_o_, part_m_, part_l_, error_flag_;
};

}  // namespace mixpa::cuda

namespace mixpa {
// The executor table's entry: host data in, host data out.
void run_cuda(const Problem& problem, const Plan& plan, const Options& options, const Results& out);
bool cuda_available();
// The table's `unsupported` hook: "" for what the kernels compute (SPEC §6: bf16/f16 query
// and caches of its dtype, fp8 caches with either query, q_len 1..16, head_dim multiples of 16
// in 16..256, block_size 1..256, int32/int64 indices), else what they do not.
std::string cuda_unsupported(const Problem& problem);
}  // namespace mixpa
