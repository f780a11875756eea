// The API layer's executor table: every way this build can compute paged attention, fastest
// first. It sits above the executors (core knows none of them); an executor reads a validated
// Problem and its Plan and writes out[batch, heads, head_dim] (and lse[batch, heads] if asked).
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "core/plan.h"
#include "core/problem.h"
#include "mixpa/paged_attention.h"

namespace mixpa {

using ExecutorFn = void (*)(const Problem& problem, const Plan& plan, const Options& options, const Results& out);

struct ExecutorEntry {
  std::string_view name;
  std::string_view summary;  // one line for --help and mixpa.executors()
  ExecutorFn run;
  bool (*available)() = nullptr;  // e.g. "a GPU is present"; nullptr = always
  // Why this executor cannot compute a (valid) problem, e.g. "F8_E4M3 caches"; "" = it can.
  // nullptr = it computes everything validate() accepts.
  std::string (*unsupported)(const Problem&) = nullptr;
  bool is_available() const { return available == nullptr || available(); }
  std::string why_not(const Problem& p) const { return unsupported ? unsupported(p) : std::string(); }
};

// The first feature of a problem beyond the origin's contract (bf16 query and caches, q_len 1,
// head_dim 64/128/256, block_size 16/32/64/128), or "" when there is none: what an executor
// that has not grown the SPEC §6 dtypes and shapes yet reports as unsupported.
std::string beyond_origin_shapes(const Problem& p);

// Fastest first; "auto" resolves to the first available entry.
std::span<const ExecutorEntry> executor_table();

// Looks up a name ("auto" included); throws mixpa::Error listing the available names.
const ExecutorEntry& find_executor(std::string_view name);

// The executor that runs `problem` for the name: "auto" = the first available one that
// computes it; a named one that cannot throws mixpa::Error ("executor cpu: ... not supported").
const ExecutorEntry& executor_for(std::string_view name, const Problem& problem);

}  // namespace mixpa
