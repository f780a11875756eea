// libFuzzer target: arbitrary bytes through the safetensors parser, the case-file reader,
// validation and (for small valid cases) the reference executor. Anything but mixpa::Error
// escaping, a crash, a sanitizer report or a leak is a bug.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/plan.h"
#include "core/validate.h"
#include "io/safetensors.h"
#include "reference/reference.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace mixpa;
  try {
    const SafetensorsFile file = parse_safetensors(reinterpret_cast<const std::byte*>(data), size, "fuzz");
    const Case c = case_from_file(file, "fuzz");
    const Inputs in = c.inputs();
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
    run_reference(problem, make_plan(problem.shape, problem.scale), options, out.data());
  } catch (const Error&) {
  }
  return 0;
}
