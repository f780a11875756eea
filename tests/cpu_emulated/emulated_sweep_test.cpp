// The avx512 and avx512bf16 kernels (under SIMDe emulation, see emulated_test.cpp) on random
// problems of what they compute (common/sweep.h draw_origin: bf16, q_len 1, head_dim 64/128/256,
// block_size 16..128, with any heads, lengths, layout, index width and variants, NaN / Inf in
// the rows no query row sees): against exact float64, out and lse, and the avx512 group kernel
// bit for bit its chunk kernel.
#include <gtest/gtest.h>

#include <vector>

#include "common/check.h"
#include "common/run_cpu.h"
#include "common/sweep.h"
#include "cpu/chunk_kernel.h"
#include "cpu/cpu_executor.h"

namespace mixpa {
namespace {

using Got = testing::RunOutput;
using testing::run_kernels;

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

// The avx512 wide tile on what it computes beyond the origin's problems (draw_wide: more than 8
// query rows per kv head, every cache and query dtype, fp8 scales, the variants): against exact.
class EmulatedWideSweep : public ::testing::TestWithParam<int> {};

TEST_P(EmulatedWideSweep, RandomWideProblemAgreesWithExact) {
  const auto seed = static_cast<std::uint64_t>(GetParam());
  const testing::Drawn d = testing::draw_wide(seed);
  SCOPED_TRACE(d.text);
  const Case c = testing::sweep_case(d, seed);
  std::vector<double> ref_lse;
  const std::vector<double> ref = testing::exact(c, {}, &ref_lse);
  const Got got = run_kernels(c, &cpu::emulated::attend_chunk_avx512, nullptr);
  testing::expect_close_to_exact(c, got.out, ref);
  testing::expect_lse_close_to_exact(c, got.lse, ref_lse);
}

INSTANTIATE_TEST_SUITE_P(Seeds, EmulatedWideSweep, ::testing::Range(0, 24));

// The avx512 narrow kernels and group kernel on every cache and query dtype (draw_fast: q_len 1,
// head_dim 64/128/256, block_size 16..128, fp8 scales, the variants): against exact, and the
// group kernel bit for bit its chunk kernel.
class EmulatedFastShapeSweep : public ::testing::TestWithParam<int> {};

TEST_P(EmulatedFastShapeSweep, RandomFastShapeProblemAgreesWithExact) {
  const auto seed = static_cast<std::uint64_t>(GetParam());
  const testing::Drawn d = testing::draw_fast(seed);
  SCOPED_TRACE(d.text);
  const Case c = testing::sweep_case(d, seed);
  std::vector<double> ref_lse;
  const std::vector<double> ref = testing::exact(c, {}, &ref_lse);
  const Got grouped = run_kernels(c, &cpu::emulated::attend_chunk_avx512, &cpu::emulated::attend_group_avx512);
  const Got chunks = run_kernels(c, &cpu::emulated::attend_chunk_avx512, nullptr);
  testing::expect_close_to_exact(c, grouped.out, ref);
  testing::expect_lse_close_to_exact(c, grouped.lse, ref_lse);
  EXPECT_EQ(grouped.out, chunks.out) << "the avx512 group kernel differs from its chunk kernel";
  EXPECT_EQ(grouped.lse, chunks.lse) << "the avx512 group kernel differs from its chunk kernel";
}

INSTANTIATE_TEST_SUITE_P(Seeds, EmulatedFastShapeSweep, ::testing::Range(0, 24));

}  // namespace
}  // namespace mixpa
