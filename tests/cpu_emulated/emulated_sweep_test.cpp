// The avx512 and avx512bf16 kernels (under SIMDe emulation, see emulated_test.cpp) on random
// problems of what they compute (common/sweep.h: draw_origin for both; draw_wide, draw_fast and
// draw_multi for avx512's dtypes, tiles and q_len; draw_multi_bf16 for both wide tiles' q_len),
// with any heads, lengths, layout, index width
// and variants, NaN / Inf in the rows no query row sees: against exact float64, out and lse, and
// the avx512 group kernel bit for bit its chunk kernel.
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

// The avx512 kernels on a drawn problem, against exact float64 (out and lse): with `grouped`, the
// group kernel, bit for bit its chunk kernel; else the chunk kernel alone. With `bf16dot`, the
// avx512bf16 chunk kernel too (bf16 caches and queries only: what it computes).
void check_avx512(const testing::Drawn& d, std::uint64_t seed, bool grouped, bool bf16dot) {
  SCOPED_TRACE(d.text);
  const Case c = testing::sweep_case(d, seed);
  std::vector<double> ref_lse;
  const std::vector<double> ref = testing::exact(c, {}, &ref_lse);
  auto check = [&](const char* name, const Got& got) {
    SCOPED_TRACE(name);
    testing::expect_close_to_exact(c, got.out, ref);
    testing::expect_lse_close_to_exact(c, got.lse, ref_lse);
  };
  const Got chunks = run_kernels(c, &cpu::emulated::attend_chunk_avx512, nullptr);
  check("avx512", chunks);
  if (grouped) {
    const Got group = run_kernels(c, &cpu::emulated::attend_chunk_avx512, &cpu::emulated::attend_group_avx512);
    EXPECT_EQ(group.out, chunks.out) << "the avx512 group kernel differs from its chunk kernel";
    EXPECT_EQ(group.lse, chunks.lse) << "the avx512 group kernel differs from its chunk kernel";
  }
  if (bf16dot && c.spec.kv_dtype == DType::kBF16 && c.spec.query_dtype == DType::kBF16) check("avx512bf16", run_kernels(c, &cpu::emulated::attend_chunk_avx512bf16, nullptr));
}

std::uint64_t seed_of(int param) { return static_cast<std::uint64_t>(param); }

class EmulatedSweep : public ::testing::TestWithParam<int> {};
TEST_P(EmulatedSweep, RandomOriginProblemAgreesWithExact) {
  check_avx512(testing::draw_origin(seed_of(GetParam())), seed_of(GetParam()), true, true);
}
INSTANTIATE_TEST_SUITE_P(Seeds, EmulatedSweep, ::testing::Range(0, 40));

// The avx512 wide tile on what it computes beyond the origin's problems (draw_wide: more than 8
// query rows per kv head, every cache and query dtype, fp8 scales, the variants).
class EmulatedWideSweep : public ::testing::TestWithParam<int> {};
TEST_P(EmulatedWideSweep, RandomWideProblemAgreesWithExact) {
  check_avx512(testing::draw_wide(seed_of(GetParam())), seed_of(GetParam()), false, false);
}
INSTANTIATE_TEST_SUITE_P(Seeds, EmulatedWideSweep, ::testing::Range(0, 24));

// The avx512 narrow kernels and group kernel on every cache and query dtype (draw_fast: q_len 1,
// head_dim 64/128/256, block_size 16..128, fp8 scales, the variants).
class EmulatedFastShapeSweep : public ::testing::TestWithParam<int> {};
TEST_P(EmulatedFastShapeSweep, RandomFastShapeProblemAgreesWithExact) {
  check_avx512(testing::draw_fast(seed_of(GetParam())), seed_of(GetParam()), true, false);
}
INSTANTIATE_TEST_SUITE_P(Seeds, EmulatedFastShapeSweep, ::testing::Range(0, 24));

// The avx512 wide tile on multi-token decode (draw_multi: q_len 2..16, per-row causal limits and
// windows, every dtype and variant), through the group kernel (which hands q_len > 1 tiles on).
class EmulatedMultiTokenSweep : public ::testing::TestWithParam<int> {};
TEST_P(EmulatedMultiTokenSweep, RandomMultiTokenProblemAgreesWithExact) {
  check_avx512(testing::draw_multi(seed_of(GetParam())), seed_of(GetParam()), true, true);
}
INSTANTIATE_TEST_SUITE_P(Seeds, EmulatedMultiTokenSweep, ::testing::Range(0, 24));

// The avx512bf16 wide tile (and avx512's) on bf16 multi-token decode (draw_multi_bf16): rows of
// (new token, head) pairs, each row's causal limit and window; tiles of <= 8 rows included.
class EmulatedMultiTokenBf16Sweep : public ::testing::TestWithParam<int> {};
TEST_P(EmulatedMultiTokenBf16Sweep, RandomBf16MultiTokenProblemAgreesWithExact) {
  check_avx512(testing::draw_multi_bf16(seed_of(GetParam())), seed_of(GetParam()), false, true);
}
INSTANTIATE_TEST_SUITE_P(Seeds, EmulatedMultiTokenBf16Sweep, ::testing::Range(0, 24));

}  // namespace
}  // namespace mixpa
