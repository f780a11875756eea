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
       &run_cuda, &cuda_available, &cuda_unsupported},
#endif
      // cpu computes every problem validate() accepts (what a flavour cannot, avx2 or scalar runs).
      {"cpu", "SIMD (AMX / AVX-512 BF16 / AVX-512F / AVX2 / scalar), all cores, split-KV", &run_cpu},
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

std::string beyond_origin_shapes(const Problem& p) {
  const Shape& s = p.shape;
  if (p.query_dtype != DType::kBF16) return std::string("query dtype ") + std::string(dtype_name(p.query_dtype));
  if (p.kv_dtype != DType::kBF16) return std::string(dtype_name(p.kv_dtype)) + " caches";
  if (s.q_len != 1) return "q_len " + std::to_string(s.q_len) + " (multi-token decode)";
  if (s.head_dim != 64 && s.head_dim != 128 && s.head_dim != 256) return "head_dim " + std::to_string(s.head_dim);
  if (s.block_size != 16 && s.block_size != 32 && s.block_size != 64 && s.block_size != 128)
    return "block_size " + std::to_string(s.block_size);
  return {};
}

const ExecutorEntry& executor_for(std::string_view name, const Problem& problem) {
  if (name == "auto") {
    for (const ExecutorEntry& e : executor_table())
      if (e.is_available() && e.why_not(problem).empty()) return e;
  }
  const ExecutorEntry& e = find_executor(name);
  if (const std::string why = e.why_not(problem); !why.empty())
    throw Error("executor " + std::string(e.name) + ": " + why + " not supported by this executor");
  return e;
}

void run(const Inputs& inputs, const Options& options, OutputView out) {
  find_executor(options.executor);  // an unknown name is reported before the inputs
  const Problem problem = validate(inputs, options, out);
  const ExecutorEntry& executor = executor_for(options.executor, problem);
  const Plan plan = make_plan(problem.shape, problem.variant.scale, options.hw_blocks, options.pipe_depth);
  executor.run(problem, plan, options, Results{out.data, out.lse});
}

}  // namespace mixpa
