// DecodePlan: validate + plan once per decode step, then per layer check three tensors' shapes
// and run. For the cpu executor the plan holds its ExecPlan (chunks, order, partial buffers);
// other executors get the validated Problem and Plan and run as mixpa::run would run them.
#include "mixpa/decode_plan.h"

#include <algorithm>
#include <vector>

#include "api/executors.h"
#include "core/validate.h"
#include "cpu/cpu_executor.h"
#include "cpu/dispatch.h"

namespace mixpa {
namespace {

// The layer's tensor must look exactly like the one the plan was validated with.
void require_like(const TensorView& t, const TensorView& planned, const char* name) {
  bool same = t.dtype == planned.dtype && t.rank == planned.rank;
  for (int d = 0; same && d < planned.rank; ++d)
    same = t.shape[d] == planned.shape[d] && (planned.shape[d] <= 1 || t.strides[d] == planned.strides[d]);
  if (!same)
    throw Error(std::string(name) + ": " + std::string(dtype_name(t.dtype)) + " " + t.shape_string() +
                " differs from the plan's " + std::string(dtype_name(planned.dtype)) + " " + planned.shape_string() +
                " (dtype, shape and strides must stay the same across the layers of a DecodePlan)");
  if (t.data == nullptr && t.numel() > 0) throw Error(std::string(name) + ": data pointer is null");
}

}  // namespace

struct DecodePlan::Impl {
  const ExecutorEntry* executor = nullptr;
  Options options;
  Problem problem;
  Plan plan;
  std::vector<std::int32_t> block_table, context_lens;  // the plan's own copies
  std::vector<float> alibi_slopes, sinks;                // (empty when absent)
  TensorView query, key_cache, value_cache;              // as validated (data pointers unused)
  std::array<std::int64_t, 3> out_shape{};
  bool cpu = false;
  cpu::ExecPlan exec;
  std::string reason;
};

DecodePlan::DecodePlan(const Inputs& inputs, const Options& options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.executor = &find_executor(options.executor);
  m.options = options;
  const Shape s = validate_shapes(inputs, options.kv_layout);
  m.out_shape = {s.batch, s.num_heads, s.head_dim};
  float unused = 0;  // validate() checks the output view's shape and pointer, never writes it
  m.problem = validate(inputs, options, OutputView{&unused, m.out_shape});
  const TensorView &bt = inputs.block_table, &cl = inputs.context_lens;
  // int32 copies whatever the inputs' index dtype (validate() checked the values fit).
  m.block_table.resize(static_cast<std::size_t>(bt.numel()));
  for (std::int64_t i = 0; i < bt.numel(); ++i) m.block_table[i] = static_cast<std::int32_t>(m.problem.block_table[i]);
  m.context_lens.resize(static_cast<std::size_t>(cl.numel()));
  for (std::int64_t i = 0; i < cl.numel(); ++i) m.context_lens[i] = static_cast<std::int32_t>(m.problem.context_lens[i]);
  m.problem.block_table = m.block_table.data();
  m.problem.context_lens = m.context_lens.data();
  const std::int64_t heads = m.problem.shape.num_heads;
  if (m.problem.variant.alibi_slopes != nullptr) {
    m.alibi_slopes.assign(m.problem.variant.alibi_slopes, m.problem.variant.alibi_slopes + heads);
    m.problem.variant.alibi_slopes = m.alibi_slopes.data();
  }
  if (m.problem.variant.sinks != nullptr) {
    m.sinks.assign(m.problem.variant.sinks, m.problem.variant.sinks + heads);
    m.problem.variant.sinks = m.sinks.data();
  }
  m.executor = &executor_for(options.executor, m.problem);
  m.query = inputs.query;
  m.key_cache = inputs.key_cache;
  m.value_cache = inputs.value_cache;
  m.plan = make_plan(m.problem.shape, m.problem.variant.scale, options.hw_blocks, options.pipe_depth);
  m.cpu = m.executor->name == "cpu";
  if (m.cpu) {
    m.reason = cpu::kernels_reason(m.problem, m.plan);
    cpu::prepare(m.exec, m.problem, m.plan, cpu::threads_for(options), cpu::isa_for(m.problem, m.plan));
  }
}

DecodePlan::~DecodePlan() = default;
DecodePlan::DecodePlan(DecodePlan&&) noexcept = default;
DecodePlan& DecodePlan::operator=(DecodePlan&&) noexcept = default;

void DecodePlan::run(const LayerInputs& layer, OutputView out) {
  Impl& m = *impl_;
  require_like(layer.query, m.query, "query");
  require_like(layer.key_cache, m.key_cache, "key_cache");
  require_like(layer.value_cache, m.value_cache, "value_cache");
  if (out.shape != m.out_shape)
    throw Error("out: shape [" + std::to_string(out.shape[0]) + ", " + std::to_string(out.shape[1]) + ", " +
                std::to_string(out.shape[2]) + "] differs from the plan's [" + std::to_string(m.out_shape[0]) + ", " +
                std::to_string(m.out_shape[1]) + ", " + std::to_string(m.out_shape[2]) + "]");
  if (out.data == nullptr && m.out_shape[0] > 0) throw Error("out: data pointer is null");
  Problem problem = m.problem;
  if (layer.sinks.present()) {
    Inputs only_sinks;
    only_sinks.sinks = layer.sinks;
    problem.variant.sinks = resolve_variant(only_sinks, m.options, problem.shape).sinks;  // checks it
  }
  // The layer's tensors (dtypes as the plan's, checked above): the typed views every executor
  // reads, and the bf16 ones of the bf16 kernels.
  problem.query_data = layer.query.data;
  problem.key_data = layer.key_cache.data;
  problem.value_data = layer.value_cache.data;
  problem.query = problem.query_dtype == DType::kBF16 ? layer.query.as<bf16>() : nullptr;
  problem.key_cache = problem.kv_dtype == DType::kBF16 ? layer.key_cache.as<bf16>() : nullptr;
  problem.value_cache = problem.kv_dtype == DType::kBF16 ? layer.value_cache.as<bf16>() : nullptr;
  const Results results{out.data, out.lse};
  if (m.cpu) cpu::execute(m.exec, problem, m.plan, results);
  else m.executor->run(problem, m.plan, m.options, results);
}

std::string_view DecodePlan::executor() const { return impl_->executor->name; }
std::string DecodePlan::kernels() const { return impl_->cpu ? std::string(cpu::isa_name(impl_->exec.isa)) : ""; }
std::string DecodePlan::kernels_reason() const { return impl_->reason; }

}  // namespace mixpa
