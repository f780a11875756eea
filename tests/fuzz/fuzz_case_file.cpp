// libFuzzer target: arbitrary bytes through the safetensors parser and the case-file loader
// (case_from_file: load_case without the disk, the path both `mixpa run --input` and Python's
// mixpa.load_case take), then what the Python loader does with a loaded case (arrays of each
// view's shape over each buffer: they must agree exactly), validation and, for small valid
// cases, the reference executor. Anything but mixpa::Error escaping, a crash, a sanitizer
// report or a leak is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "core/plan.h"
#include "core/validate.h"
#include "io/safetensors.h"
#include "reference/reference.h"

namespace {

// A loaded case's view must describe exactly its buffer (Python wraps one in the other).
void require_covers(const mixpa::TensorView& v, std::size_t elements) {
  if (v.numel() != static_cast<std::int64_t>(elements)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace mixpa;
  try {
    const SafetensorsFile file = parse_safetensors(reinterpret_cast<const std::byte*>(data), size, "fuzz");
    const Case c = case_from_file(file, "fuzz");
    const Inputs in = c.inputs();
    require_covers(in.query, c.query.size());
    require_covers(in.key_cache, c.key_cache.size());
    require_covers(in.value_cache, c.value_cache.size());
    require_covers(in.block_table, c.block_table.size());
    require_covers(in.context_lens, c.context_lens.size());
    const Shape shape = validate_shapes(in);
    const std::int64_t out_elems = shape.batch * shape.num_heads * shape.head_dim;
    if (out_elems > (1 << 16)) return 0;
    std::vector<float> out(static_cast<std::size_t>(out_elems));
    Options options;
    if (c.has_scale) options.scale = c.scale;
    const Problem problem = validate(in, options, OutputView{out.data(), {shape.batch, shape.num_heads, shape.head_dim}});
    std::int64_t work = 0;
    for (std::int64_t b = 0; b < shape.batch; ++b) work += problem.context_len(b);
    if (work * shape.num_heads * shape.head_dim > (1 << 20)) return 0;
    run_reference(problem, make_plan(problem.shape, problem.variant.scale), options, out.data());
  } catch (const Error&) {
  }
  return 0;
}
