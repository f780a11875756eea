// Executor "cpu": the fast x86-64 path. Work items are (logical block x KV chunk) from the
// shared split-KV plan; a persistent thread pool runs them; chunks of one block are merged in
// chunk order with the log-sum-exp rule, so results do not depend on the thread count.
#pragma once

#include <functional>

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/plan.h"
#include "core/problem.h"
#include "core/split_kv.h"
#include "cpu/chunk_kernel.h"
#include "mixpa/paged_attention.h"

namespace mixpa {

// The registered executor: the kernel flavour is auto's pick for the plan's tiles (measured,
// cpu/dispatch.h) or MIXPA_CPU_ISA. Reuses the previous call's ExecPlan (per calling thread)
// when shapes, context lengths, threads and flavour are the same.
void run_cpu(const Problem& problem, const Plan& plan, const Options& options, const Results& out);

namespace cpu {

// Everything a call computes before its kernels run - the split-KV chunks, the order the pool
// hands them out, the work units, the partial-result buffers - as a pure function of the
// shapes, the context lengths, the thread count and the flavour. Made once and reused by every
// call with the same figures (a decode step's layers), so a call plans and allocates nothing.
struct ExecPlan {
  Isa isa = Isa::kScalar;
  ChunkKernel kernel = nullptr;
  GroupKernel group = nullptr;
  int threads = 1;
  SplitKvPlan sp;
  std::vector<std::int64_t> order;       // chunks in the order the pool hands them out
  std::vector<std::int64_t> unit_begin;  // work unit u = order[unit_begin[u] .. unit_begin[u+1])
  // Partial results, chunk c at c * row_floats (o) and c * q_tile (m, l). Empty chunks are
  // never run: their m = -inf, l = 0 are written once, here.
  std::int64_t row_floats = 0;
  std::vector<float> o, m, l;
  // The merge of a block runs on the thread that completes its last chunk, inside the same
  // parallel_for (no second hand-out, and the partials are still in that core's caches):
  // pending[b] counts block b's chunks still running (reset to block_chunks[b] per call);
  // blocks with no chunk to run (context 0) are written by the caller.
  std::vector<std::int32_t> block_chunks;
  std::unique_ptr<std::atomic<std::int32_t>[]> pending;
  std::vector<std::int64_t> idle_blocks;
  // What it was made for (matches()).
  Shape shape;
  int q_tile = 0;
  std::vector<std::int64_t> context_lens;
  std::int64_t window_left = -1;
  // For the benchmark: when set, execute() adds the time (ns, summed over threads) spent inside
  // kernels to it, so a call's fixed cost (its time - kernel time / threads) can be told apart.
  // Read from CLOCK_MONOTONIC (vDSO, ~30 ns): a thread CPU-time clock is a system call (~0.8 us
  // in a VM), which would itself be most of the fixed cost it is meant to measure.
  std::atomic<std::int64_t>* kernel_ns = nullptr;
  std::atomic<std::int64_t>* merge_ns = nullptr;  // likewise for the merge of the partials
};

// Builds the plan (isa must be isa_supported(); threads >= 1; a plain-score variant without a window:
// mixpa::Error otherwise).
void prepare(ExecPlan& ep, const Problem& problem, const Plan& plan, int threads, Isa isa);
// Whether `ep` was made for these figures (its context lengths are compared in full).
bool matches(const ExecPlan& ep, const Problem& problem, const Plan& plan, int threads, Isa isa);
// Runs the kernels and the merge; writes out[batch, num_heads, head_dim] (and lse, if wanted).
// Allocates nothing.
void execute(ExecPlan& ep, const Problem& problem, const Plan& plan, const Results& out,
             const std::function<bool()>& cancelled = {});

// The threads a call uses: options.num_threads, or every core when 0.
int threads_for(const Options& options);

// The same as run_cpu with an explicit flavour (tests force each one; it must be isa_supported()).
void run_with_isa(const Problem& problem, const Plan& plan, const Options& options, const Results& out, Isa isa);
// The same with explicit kernels (group may be nullptr): the emulated-flavour tests pass theirs.
void run_with_kernels(const Problem& problem, const Plan& plan, const Options& options, const Results& out,
                      ChunkKernel kernel, GroupKernel group);
}  // namespace cpu

}  // namespace mixpa
