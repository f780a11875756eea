// Executor "cuda": paged attention on an NVIDIA GPU (sm_80+, tuned for sm_90).
//  - PagedAttention is the device-resident API, FlashInfer's plan/run shape: plan once on the
//    host from the shapes and host context lengths, then run() on device pointers and a
//    stream: no host synchronisation, no allocation, capturable into a CUDA graph. Page ids
//    are checked on the device; check_errors() reports a bad one as mixpa::Error.
//  - run_cuda is the table's entry for host data: upload, run, check, download.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

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
 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// Device pointers of the inputs, laid out as SPEC §1 (strides in elements; head_dim stride 1).
// Pointers must be 16-byte aligned and cache strides multiples of 8 elements (cp.async).
struct DeviceTensors {
  const bf16* query = nullptr;
  const bf16* key_cache = nullptr;
  const bf16* value_cache = nullptr;
  CacheStrides k_strides;
  CacheStrides v_strides;
  const std::int32_t* block_table = nullptr;
};

class PagedAttention {
 public:
  // Plans for the current device: work items, ring depth, grid; uploads the work list and
  // allocates the partials. host_context_lens must be the values the device copy will hold.
  PagedAttention(const Plan& plan, const std::int32_t* host_context_lens, const WorkPlanOptions& options = {});

  // Enqueues the kernels on `stream`; writes out[batch, num_heads, head_dim] (device, fp32).
  void run(const DeviceTensors& tensors, float* out, cudaStream_t stream) const;

  // Synchronises `stream`; throws mixpa::Error for a kernel fault or a page id the kernel
  // found outside [0, num_blocks) (then clears the flag).
  void check_errors(cudaStream_t stream) const;

  const WorkPlan& work() const { return work_; }

 private:
  Plan plan_;
  WorkPlan work_;
  DeviceBuffer items_, merges_, part_o_, part_m_, part_l_, error_flag_;
};

}  // namespace mixpa::cuda

namespace mixpa {
// The executor table's entry: host data in, host data out.
void run_cuda(const Problem& problem, const Plan& plan, const Options& options, const Results& out);
bool cuda_available();
}  // namespace mixpa
