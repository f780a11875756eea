// The executor table, and run(): validate, plan, dispatch.
#include "api/executors.h"

#include <sstream>
#include <string>

#include "core/validate.h"
#include "cpu/cpu_executor.h"
#ifdef MIXPA_HAVE_CUDA
#include "cuda/cuda_executor.h"
#endif
#include "reference/reference.h"
#include "sim/programs.h"

namespace mixpa {

std::span<const ExecutorEntry> executor_table() {
  // Fastest first. Each executor adds its own line here.
  static const ExecutorEntry table[] = {
#ifdef MIXPA_HAVE_CUDA
      {"cuda", "NVIDIA GPU: producer warp + tensor-core warps on an mbarrier smem ring, persistent grid, split-KV",
       &run_cuda, &cuda_available},
#endif
      {"cpu", "SIMD bf16 (AMX / AVX-512 BF16 / AVX-512F / AVX2 / scalar), all cores, split-KV", &run_cpu},
      {"sim", "the MIX pipeline simulated: 1 cube + 2 vector workers per block, tile pipes", &sim::run_sim},
      {"reference", "origin per-page online softmax, fp32, single-threaded (golden)", &run_reference},
  };
  return table;
}

const ExecutorEntry& find_executor(std::string_view name) {
  const auto table = executor_table();
  for (const ExecutorEntry& e : table)
    if ((name == "auto" && e.is_available()) || e.name == name) {
      if (!e.is_available())
        throw Error("executor: '" + std::string(name) + "' is built in but cannot run on this machine");
      return e;
    }
  std::ostringstream s;
  s << "executor: unknown executor '" << name << "', this build has {auto";
  for (const ExecutorEntry& e : table) s << ", " << e.name;
  s << '}';
  throw Error(s.str());
}

std::vector<std::string> executor_names() {
  std::vector<std::string> names;
  for (const ExecutorEntry& e : executor_table())
    if (e.is_available()) names.emplace_back(e.name);
  return names;
}

void run(const Inputs& inputs, const Options& options, OutputView out) {
  const ExecutorEntry& executor = find_executor(options.executor);
  const Problem problem = validate(inputs, options, out);
  const Plan plan = make_plan(problem.shape, problem.scale, options.hw_blocks, options.pipe_depth);
  executor.run(problem, plan, options, Results{out.data, out.lse});
}

}  // namespace mixpa
