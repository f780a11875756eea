// Executor "cpu": the fast x86-64 path. Work items are (logical block x KV chunk) from the
// shared split-KV plan; a persistent thread pool runs them; chunks of one block are merged in
// chunk order with the log-sum-exp rule, so results do not depend on the thread count.
#pragma once

#include "core/plan.h"
#include "core/problem.h"
#include "cpu/chunk_kernel.h"
#include "mixpa/paged_attention.h"

namespace mixpa {

// The registered executor: the kernel flavour is default_isa() (best supported, or MIXPA_CPU_ISA).
void run_cpu(const Problem& problem, const Plan& plan, const Options& options, const Results& out);

namespace cpu {
// The same with an explicit flavour (tests force each one; it must be isa_supported()).
void run_with_isa(const Problem& problem, const Plan& plan, const Options& options, const Results& out, Isa isa);
// The same with explicit kernels (group may be nullptr): the emulated-flavour tests pass theirs.
void run_with_kernels(const Problem& problem, const Plan& plan, const Options& options, const Results& out,
                      ChunkKernel kernel, GroupKernel group);
}  // namespace cpu

}  // namespace mixpa
