// mixpa on an NVIDIA GPU, device-resident: plan once on the host, run many times on a stream.
//
//   mixpa::cuda::PagedAttention pa(inputs, host_context_lens, options);   // plans, allocates
//   pa.run(inputs, out, lse, stream);       // enqueues only: no host sync, no allocation,
//                                           // capturable into a CUDA graph
//   pa.check_errors(stream);                // on demand: syncs, throws for a bad page id
//
// `inputs` holds DEVICE pointers with the shapes, dtypes and strides of mixpa::run's Inputs
// (docs/spec.md §1, §6: alibi_slopes and sinks optional, f32 [num_heads]); only their shapes are read
// on the host; options.kv_layout (NHD or HND) says how the caches are laid out. The plan
// depends on the shapes, the options (scale, softcap, window_left) and
// the context lengths, so a run must see the context lengths the plan was made with; the
// block table and the tensors' contents may change between runs. Page ids are checked on
// the device (a bad one raises an error flag and loads zeros, never reads out of bounds).
// Requirements: 16-byte aligned pointers, cache strides multiples of 16 bytes (8 elements of
// bf16 / f16, 16 of fp8). fp8 caches take k_scale / v_scale from the options (docs/spec.md §6).
// This header needs no CUDA headers: a stream is passed as `void*` (a cudaStream_t;
// nullptr = the legacy default stream).
#pragma once

#include <cstdint>
#include <memory>

#include "mixpa/paged_attention.h"

namespace mixpa::cuda {

// Whether this build has the cuda executor and this machine a GPU that can run it.
bool available();

// Error-flag bits the kernel raises (read_error_flags).
inline constexpr int kErrorFlagPageOutOfRange = 1;

class PagedAttention {
 public:
  // Validates the shapes and options (throws mixpa::Error naming the input), plans the work
  // for the current device and allocates its device buffers. host_context_lens: [batch], int32
  // or int64 (the device tensors' block_table and context_lens may be either, docs/spec.md §6).
  PagedAttention(const Inputs& device_inputs, const std::int32_t* host_context_lens, const Options& options = {});
  PagedAttention(const Inputs& device_inputs, const std::int64_t* host_context_lens, const Options& options = {});
  ~PagedAttention();
  PagedAttention(PagedAttention&&) noexcept;
  PagedAttention& operator=(PagedAttention&&) noexcept;

  // Enqueues the computation on `stream`: out float32 [batch, (q_len,) num_heads, head_dim]
  // (device), lse float32 [batch, (q_len,) num_heads] (device) or nullptr. The inputs must have
  // the planned shapes and dtypes (query bf16/f16, caches bf16/f16/fp8, block_table int32/int64).
  void run(const Inputs& device_inputs, float* out, float* lse, void* stream) const;

  // Synchronises `stream` and returns the flags raised since the last read (0 = none), then
  // clears them.
  int read_error_flags(void* stream) const;
  // read_error_flags, then throws mixpa::Error for any flag.
  void check_errors(void* stream) const;

  // The plan, for reports: work items, CTAs, ring stages.
  std::int64_t work_items() const;
  int grid() const;
  int stages() const;

 private:
  PagedAttention(const Inputs& device_inputs, const std::int32_t* lens32, const std::int64_t* lens64,
                 const Options& options);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mixpa::cuda
