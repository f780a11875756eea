// The avx512 and avx512bf16 kernels (under SIMDe emulation, see emulated_test.cpp) on random
// problems of what they compute (common/sweep.h draw_origin: bf16, q_len 1, head_dim 64/128/256,
// block_size 16..128, with any heads, lengths, layout, index width and variants, NaN / Inf in
// the rows no query row sees): against exact float64, out and lse, and the avx512 group kernel
// bit for bit its chunk kernel.
#include <gtest/gtest.h>

#include <vector>

#include "common/check.h"
#include "common/sweep.h"
#include "cpu/chunk_kernel.h"
#include "cpu/cpu_executor.h"

namespace mixpa {
namespace {

struct Got {
  std::vector<float> out, lse;
};

Got run_kernels(const Case& c, cpu::ChunkKernel chunk, cpu::GroupKernel group) {
  const Options options = testing::case_options(c, {});
  Got r;
  r.out.assign(c.out_elements(), -12345.0f);
  r.lse.assign(c.lse_elements(), -12345.0f);
  const Problem p = validate(c.inputs(), options, c.output_view(r.out.data(), r.lse.data()));
  cpu::run_with_kernels(p, make_plan(p.shape, p.variant.scale), options, Results{r.out.data(), r.lse.data()}, chunk, group);
  return r;
}

class EmulatedSweep : public ::testing::TestWithParam<int> {};

TEST_P(EmulatedSweep, RandomOriginProblemAgreesWithExact) {
  const auto seed = static_cast<std::uint64_t>(GetParam());
  const testing::Drawn d = testing::draw_origin(seed);
  SCOPED_TRACE(d.text);
  const Case c = testing::sweep_case(d, seed);
  std::vector<double> ref_lse;
  const std::vector<double> ref = testing::exact(c, {}, &ref_lse);
  const Got grouped = run_kernels(c, &cpu::emulated::attend_chunk_avx512, &cpu::emulated::attend_group_avx512);
  const Got chunks = run_kernels(c, &cpu::emulated::attend_chunk_avx512, nullptr);
  const Got bf16dot = run_kernels(c, &cpu::emulated::attend_chunk_avx512bf16, nullptr);
  for (const auto& [name, got] : {std::pair{"avx512", &grouped}, {"avx512bf16", &bf16dot}}) {
    SCOPED_TRACE(name);
    testing::expect_close_to_exact(c, got->out, ref);
    testing::expect_lse_close_to_exact(c, got->lse, ref_lse);
  }
  EXPECT_EQ(grouped.out, chunks.out) << "the avx512 group kernel differs from its chunk kernel";
  EXPECT_EQ(grouped.lse, chunks.lse) << "the avx512 group kernel differs from its chunk kernel";
}

INSTANTIATE_TEST_SUITE_P(Seeds, EmulatedSweep, ::testing::Range(0, 40));

}  // namespace
}  // namespace mixpa
