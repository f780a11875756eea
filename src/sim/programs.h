// The paged-attention MIX programs of SPEC §3, as types: a cube program (QK-first) and a
// vector program (SF-first), each run by a Worker over its hardware block's stride loop.
#pragma once

#include "core/plan.h"
#include "core/problem.h"
#include "sim/mix_runtime.h"

namespace mixpa::sim {

// Everything a program reads: the validated problem, the plan and the output.
struct ProgramArgs {
  const Problem* problem = nullptr;
  const Plan* plan = nullptr;
  float* out = nullptr;
  float* lse = nullptr;  // [batch, (q_len,) num_heads] or nullptr
  const std::function<bool()>* cancelled = nullptr;  // Options::cancelled, polled per logical block
};

// Runs the program of `worker`'s core (cube or vector lane) for every logical block of its
// hardware block. q_tile is a template parameter, chosen once by run_programs().
void run_programs(Worker& worker, const ProgramArgs& args);

// Executor "sim": the MIX pipeline run literally on the runtime above.
void run_sim(const Problem& problem, const Plan& plan, const Options& options, const Results& out);

}  // namespace mixpa::sim
