// The reference executor against exact float64 attention on the coverage shapes, plus the
// properties of the golden itself (context 0 gives zeros, masked rows never read, NaN-safe).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "common/check.h"

namespace mixpa {
namespace {

using testing::coverage_specs;
using testing::exact;
using testing::run_case;

class ReferenceCoverage : public ::testing::TestWithParam<CaseSpec> {};

TEST_P(ReferenceCoverage, AgreesWithExact) {
  const Case c = generate_case(GetParam(), 7);
  const auto out = run_case(c, "reference");
  const double err = testing::expect_close_to_exact(c, out, exact(c));
  EXPECT_LT(err, 2e-3);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ReferenceCoverage, ::testing::ValuesIn(coverage_specs()),
                         [](const auto& info) { return info.param.name; });

TEST(Reference, ContextZeroWritesZeros) {
  const Case c = generate_case(testing::small_spec("zeros", 2, 16, 1, 128, 16, {0, 5}), 1);
  const auto out = run_case(c, "reference");
  for (std::int64_t i = 0; i < 16 * 128; ++i) ASSERT_EQ(out[i], 0.0f) << i;
  bool any_nonzero = false;
  for (std::int64_t i = 16 * 128; i < 2 * 16 * 128; ++i) any_nonzero |= out[i] != 0.0f;
  EXPECT_TRUE(any_nonzero);
}

// Rows of a page past the context and pages not used may hold NaN/Inf: they take no part.
TEST(Reference, MaskedRowsMayHoldNaN) {
  Case c = generate_case(testing::small_spec("nan_rows", 2, 16, 1, 128, 16, {20, 7}), 3);
  const auto clean = run_case(c, "reference");
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (std::int64_t b = 0; b < 2; ++b) {
    const std::int64_t len = c.context_lens[b];
    const std::int64_t last = (len - 1) / 16;
    const std::int64_t page = c.block_table[b * c.max_blocks_per_req + last];
    for (std::int64_t row = len % 16; row != 0 && row < 16; ++row) {
      // Poison only if no other request uses this row of this page.
      bool used_elsewhere = false;
      for (std::int64_t o = 0; o < 2; ++o)
        for (std::int64_t j = 0; j * 16 < c.context_lens[o]; ++j)
          if (c.block_table[o * c.max_blocks_per_req + j] == page && (j * 16 + row) < c.context_lens[o])
            used_elsewhere = true;
      if (used_elsewhere) continue;
      for (std::int64_t d = 0; d < 128; ++d) {
        c.key_cache[(page * 16 + row) * 128 + d] = bf16::from_float(nan);
        c.value_cache[(page * 16 + row) * 128 + d] = bf16::from_float(std::numeric_limits<float>::infinity());
      }
    }
  }
  const auto poisoned = run_case(c, "reference");
  EXPECT_EQ(clean, poisoned);
}

TEST(Reference, LargeScaleStaysFinite) {
  const Case c = generate_case(testing::small_spec("scale50", 2, 16, 1, 128, 32, {100, 33}, 50.0), 5);
  const auto out = run_case(c, "reference");
  for (float v : out) ASSERT_TRUE(std::isfinite(v));
  testing::expect_close_to_exact(c, out, exact(c));
}

TEST(Reference, NegativeScaleAgreesWithExact) {
  const Case c = generate_case(testing::small_spec("neg_scale", 2, 16, 1, 128, 32, {100, 33}, -3.0), 5);
  testing::expect_close_to_exact(c, run_case(c, "reference"), exact(c));
}

TEST(ExactAttention, UniformValuesAverage) {
  // With all keys equal the softmax is uniform: out = mean of the value rows.
  Case c = generate_case(testing::small_spec("uniform", 1, 16, 1, 64, 16, {3}), 9);
  for (auto& k : c.key_cache) k = bf16::from_float(0.25f);
  std::vector<double> ref = exact(c);
  const std::int64_t page = c.block_table[0];
  for (std::int64_t d = 0; d < 64; ++d) {
    double mean = 0;
    for (std::int64_t r = 0; r < 3; ++r) mean += c.value_cache[(page * 16 + r) * 64 + d].to_float();
    EXPECT_NEAR(ref[d], mean / 3, 1e-12);
  }
}

TEST(CompareToExact, FlagsNaNAndBound) {
  const float out[3] = {1.0f, 2.0f, std::numeric_limits<float>::quiet_NaN()};
  const double ref[3] = {1.0, 2.0 + 2e-3 + 4e-3 + 1e-4, 0.0};
  const AccuracyReport r = compare_to_exact(out, ref, 3);
  EXPECT_EQ(r.failures, 2);
  EXPECT_FALSE(r.pass());
  const double ok[3] = {1.0, 2.0, 0.0};
  const float fine[3] = {1.0f, 2.0f, 0.0f};
  EXPECT_TRUE(compare_to_exact(fine, ok, 3).pass());
}

}  // namespace
}  // namespace mixpa
