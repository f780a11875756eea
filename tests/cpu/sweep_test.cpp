// Random SPEC §6 problems (common/sweep.h), drawn from the whole contract at once rather than one
// feature per case: any cache and query dtype, fp8 scales, q_len 1..16, head_dim any multiple of
// 16 up to 256, any block_size up to 256, GQA group sizes that do and do not fill a tile, NHD and
// HND, int32 and int64 indices, context 0 / 1 / partial pages / split-KV lengths, every variant
// (soft-cap, window, ALiBi, sinks) in any combination, and NaN / Inf in every cache row no query
// row sees. Each problem runs on the reference, the sim and every
// cpu flavour this CPU runs that computes it, and is checked against exact float64 attention (out
// and lse, SPEC §1 / §6 bounds); the sim must equal the reference bit for bit, and each cpu
// flavour must give the same bits on 1 and 3 threads. A failure prints the drawn spec, so it can
// be turned into a fixed case.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/run_cpu.h"
#include "common/sweep.h"
#include "cpu/cpu_executor.h"
#include "cpu/dispatch.h"

namespace mixpa {
namespace {

using Got = testing::RunOutput;

Got run_executor(const Case& c, const std::string& executor) {
  Got r;
  r.out = testing::run_case(c, executor, {}, &r.lse);
  return r;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void check_drawn(const testing::Drawn& d, std::uint64_t seed) {
  SCOPED_TRACE(d.text);
  const Case c = testing::sweep_case(d, seed);
  std::vector<double> ref_lse;
  const std::vector<double> ref = testing::exact(c, {}, &ref_lse);
  auto check = [&](const Got& got) {
    testing::expect_close_to_exact(c, got.out, ref);
    testing::expect_lse_close_to_exact(c, got.lse, ref_lse);
  };
  const Got reference = run_executor(c, "reference");
  {
    SCOPED_TRACE("reference");
    check(reference);
  }
  {
    SCOPED_TRACE("sim");
    const Got sim = run_executor(c, "sim");
    check(sim);
    EXPECT_TRUE(same_bits(sim.out, reference.out) && same_bits(sim.lse, reference.lse)) << "sim differs from the reference";
  }
  {
    SCOPED_TRACE("cpu (auto)");
    check(run_executor(c, "cpu"));
  }
  std::vector<float> probe_out;
  const Problem p = validate(c.inputs(), testing::case_options(c, {}), c.output_view((probe_out.assign(c.out_elements(), 0), probe_out.data())));
  for (cpu::Isa isa : {cpu::Isa::kAmx, cpu::Isa::kAvx512Bf16, cpu::Isa::kAvx512, cpu::Isa::kAvx2, cpu::Isa::kScalar}) {
    if (!cpu::isa_supported(isa) || !cpu::flavour_computes(isa, p)) continue;
    SCOPED_TRACE("cpu " + std::string(cpu::isa_name(isa)));
    const Got one = testing::run_isa(c, isa, 1);
    check(one);
    const Got three = testing::run_isa(c, isa, 3);
    EXPECT_TRUE(same_bits(one.out, three.out) && same_bits(one.lse, three.lse)) << "1 and 3 threads differ";
  }
}

void check_seed(std::uint64_t seed) { check_drawn(testing::draw(seed), seed); }

// Fast: 40 draws (every ctest run, sanitizer builds included).
class Sweep : public ::testing::TestWithParam<int> {};
TEST_P(Sweep, RandomSpec6ProblemAgreesWithExactOnEveryExecutor) { check_seed(static_cast<std::uint64_t>(GetParam())); }
INSTANTIATE_TEST_SUITE_P(Seeds, Sweep, ::testing::Range(0, 40));

// Slow: 200 more draws (release ctest only).
class SweepSlow : public ::testing::TestWithParam<int> {};
TEST_P(SweepSlow, RandomSpec6ProblemAgreesWithExactOnEveryExecutor) {
  for (int k = 0; k < 20; ++k) check_seed(1000 + static_cast<std::uint64_t>(GetParam()) * 20 + k);
}
INSTANTIATE_TEST_SUITE_P(Seeds, SweepSlow, ::testing::Range(0, 10));

// Fast: 16 draws of more than 8 query rows per kv head (common/sweep.h draw_wide), where the
// avx512 wide tile reads every dtype.
class WideSweep : public ::testing::TestWithParam<int> {};
TEST_P(WideSweep, RandomWideProblemAgreesWithExactOnEveryExecutor) {
  const auto seed = static_cast<std::uint64_t>(GetParam());
  check_drawn(testing::draw_wide(seed), seed);
}
INSTANTIATE_TEST_SUITE_P(Seeds, WideSweep, ::testing::Range(0, 16));

// Fast: 16 draws of every dtype on the shapes the avx512 kernels compute (common/sweep.h
// draw_fast: mostly <= 8 query rows per kv head, the narrow kernels and group kernel).
class FastShapeSweep : public ::testing::TestWithParam<int> {};
TEST_P(FastShapeSweep, RandomFastShapeProblemAgreesWithExactOnEveryExecutor) {
  const auto seed = static_cast<std::uint64_t>(GetParam());
  check_drawn(testing::draw_fast(seed), seed);
}
INSTANTIATE_TEST_SUITE_P(Seeds, FastShapeSweep, ::testing::Range(0, 16));

// Fast: 16 draws of multi-token decode on the fast shapes (common/sweep.h draw_multi: q_len
// 2..16, every dtype and variant), where the avx512 wide tile applies each row's causal limit
// and window.
class MultiTokenSweep : public ::testing::TestWithParam<int> {};
TEST_P(MultiTokenSweep, RandomMultiTokenProblemAgreesWithExactOnEveryExecutor) {
  const auto seed = static_cast<std::uint64_t>(GetParam());
  check_drawn(testing::draw_multi(seed), seed);
}
INSTANTIATE_TEST_SUITE_P(Seeds, MultiTokenSweep, ::testing::Range(0, 16));

// Fast: 12 draws of bf16 multi-token decode (draw_multi_bf16), which the avx512bf16 and amx wide tiles
// compute too (each row's causal limit and window, tiles of <= 8 rows in one zmm of lanes).
class MultiTokenBf16Sweep : public ::testing::TestWithParam<int> {};
TEST_P(MultiTokenBf16Sweep, RandomBf16MultiTokenProblemAgreesWithExactOnEveryExecutor) {
  const auto seed = static_cast<std::uint64_t>(GetParam());
  check_drawn(testing::draw_multi_bf16(seed), seed);
}
INSTANTIATE_TEST_SUITE_P(Seeds, MultiTokenBf16Sweep, ::testing::Range(0, 12));

}  // namespace
}  // namespace mixpa
