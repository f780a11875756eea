// The API layer's executor table: every way this build can compute paged attention, fastest
// first. It sits above the executors (core knows none of them); an executor reads a validated
// Problem and its Plan and writes out[batch, heads, head_dim] (and lse[batch, heads] if asked).
#pragma once

#include <span>
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
  bool is_available() const { return available == nullptr || available(); }
};

// Fastest first; "auto" resolves to the first available entry.
std::span<const ExecutorEntry> executor_table();

// Looks up a name ("auto" included); throws mixpa::Error listing the available names.
const ExecutorEntry& find_executor(std::string_view name);

}  // namespace mixpa
