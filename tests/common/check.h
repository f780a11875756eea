// Test helpers shared by every suite: run an executor on a generated case and check it
// against exact float64 attention with SPEC §1's bound.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/cases.h"
#include "core/validate.h"
#include "reference/reference.h"

namespace mixpa {
// Parameterised tests print a case by its name.
inline void PrintTo(const CaseSpec& spec, std::ostream* os) { *os << spec.name; }
}  // namespace mixpa

namespace mixpa::testing {

inline OutputView output_view(std::vector<float>& out, const Case& c) {
  out.assign(c.out_elements(), -12345.0f);
  return OutputView{out.data(), {c.spec.batch, c.spec.num_heads, c.spec.head_dim}};
}

// Runs `executor` on `c` and returns its output.
inline std::vector<float> run_case(const Case& c, const std::string& executor, Options options = {}) {
  options.executor = executor;
  if (!options.scale) options.scale = c.scale;
  std::vector<float> out;
  run(c.inputs(), options, output_view(out, c));
  return out;
}

inline std::vector<double> exact(const Case& c, Options options = {}) {
  if (!options.scale) options.scale = c.scale;
  std::vector<float> dummy;
  const Problem p = validate(c.inputs(), options, output_view(dummy, c));
  std::vector<double> ref(c.out_elements());
  exact_attention_f64(p, ref.data());
  return ref;
}

// Asserts SPEC §1's check and returns the max abs error.
inline double expect_close_to_exact(const Case& c, const std::vector<float>& out, const std::vector<double>& ref) {
  const AccuracyReport r = compare_to_exact(out.data(), ref.data(), static_cast<std::int64_t>(out.size()));
  EXPECT_TRUE(r.pass()) << c.spec.name << ": " << r.failures << " elements outside 2e-3 + 2e-3*|ref|, max abs error "
                        << r.max_abs_error << ", worst at flat index " << r.worst_index << " (out "
                        << (r.worst_index >= 0 ? out[r.worst_index] : 0.0f) << ", exact "
                        << (r.worst_index >= 0 ? ref[r.worst_index] : 0.0) << ")";
  return r.max_abs_error;
}

// A small random case: the fields most tests vary, with the rest defaulted.
inline CaseSpec small_spec(std::string name, std::int64_t batch, std::int64_t heads, std::int64_t kv_heads,
                           std::int64_t head_dim, std::int64_t block_size, std::vector<std::int32_t> lens,
                           double scale = 0.0884, std::int64_t num_blocks = 0) {
  CaseSpec s;
  s.name = std::move(name);
  s.batch = batch;
  s.num_heads = heads;
  s.num_kv_heads = kv_heads;
  s.head_dim = head_dim;
  s.block_size = block_size;
  s.context_lens = std::move(lens);
  std::int32_t max_len = 1;
  for (auto l : s.context_lens) max_len = std::max(max_len, l);
  s.max_model_len = max_len + 3 * block_size;  // spare table columns that must be ignored
  s.num_blocks = num_blocks;
  s.scale = scale;
  return s;
}

// The shapes every executor must get right (issue 3's list), as one table.
inline std::vector<CaseSpec> coverage_specs() {
  return {
      small_spec("lens_edge_bs16", 6, 16, 1, 128, 16, {0, 1, 15, 16, 17, 100}),
      small_spec("lens_edge_bs128", 5, 16, 1, 128, 128, {0, 1, 127, 128, 129}),
      small_spec("gqa_32_4", 3, 32, 4, 128, 32, {70, 1, 257}),
      small_spec("heads20", 3, 20, 1, 128, 64, {65, 200, 3}),
      small_spec("heads20_gqa5", 2, 20, 4, 64, 16, {33, 48}),
      small_spec("hd64", 4, 16, 2, 64, 16, {40, 0, 17, 90}),
      small_spec("hd256", 3, 8, 1, 256, 32, {31, 33, 64}),
      small_spec("q64", 2, 64, 1, 128, 64, {130, 5}),
      small_spec("q64_heads100", 2, 100, 1, 64, 16, {50, 17}),
      small_spec("gqa64", 2, 128, 2, 64, 32, {40, 97}),
      // Few pages for many requests: pages are shared between requests.
      small_spec("shared_pages", 8, 16, 1, 128, 16, {64, 64, 48, 33, 64, 1, 16, 60}, 0.0884, 5),
      small_spec("sharp_softmax", 3, 16, 1, 128, 32, {100, 257, 64}, 8.0),
      small_spec("bs128_long", 2, 16, 1, 128, 128, {1000, 777}),
  };
}

}  // namespace mixpa::testing
