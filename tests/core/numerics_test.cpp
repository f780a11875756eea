// bf16 rounding, the shared online-softmax state, and the case generator.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "core/cases.h"
#include "core/softmax_state.h"

namespace mixpa {
namespace {

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(bf16::from_float(1.0f).bits, 0x3f80);
  EXPECT_EQ(bf16::from_float(1.0f + 0x1p-8f).bits, 0x3f80);         // tie -> even (down)
  EXPECT_EQ(bf16::from_float(1.0f + 3 * 0x1p-8f).bits, 0x3f82);     // tie -> even (up)
  EXPECT_EQ(bf16::from_float(1.0f + 0x1p-8f + 0x1p-20f).bits, 0x3f81);
  EXPECT_TRUE(std::isnan(bf16::from_float(std::numeric_limits<float>::quiet_NaN()).to_float()));
  EXPECT_TRUE(std::isinf(bf16::from_float(std::numeric_limits<float>::infinity()).to_float()));
  EXPECT_EQ(round_to_bf16(-2.5f), -2.5f);
}

TEST(SoftmaxState, MergeEqualsOneShot) {
  // Scores split in two partials merge to the one-shot softmax.
  const float s[4] = {0.5f, 2.0f, -1.0f, 3.0f};
  const float v[4] = {1.0f, -2.0f, 4.0f, 0.5f};
  auto partial = [&](int b, int e, float& m, float& l, float& o) {
    m = -INFINITY;
    for (int i = b; i < e; ++i) m = std::max(m, s[i]);
    l = 0; o = 0;
    for (int i = b; i < e; ++i) { l += std::exp(s[i] - m); o += std::exp(s[i] - m) * v[i]; }
  };
  float m1, l1, o1, m2, l2, o2, ma, la, oa;
  partial(0, 2, m1, l1, o1);
  partial(2, 4, m2, l2, o2);
  partial(0, 4, ma, la, oa);
  SoftmaxState st;
  float o = 123.0f;  // garbage: an empty state must not read it
  st.merge(&o, &o1, m1, l1, 1);
  st.merge(&o, &o2, m2, l2, 1);
  float out, expect = oa / la;
  st.finalize(&o, &out, 1);
  EXPECT_NEAR(out, expect, 1e-6);
  EXPECT_NEAR(st.lse(), ma + std::log(la), 1e-6);
}

TEST(SoftmaxState, EmptyPartsAreNoOps) {
  SoftmaxState st;
  float o = std::numeric_limits<float>::quiet_NaN(), part = 5.0f, out = -1;
  st.merge(&o, &part, -INFINITY, 0.0f, 1);
  EXPECT_TRUE(st.empty());
  st.finalize(&o, &out, 1);
  EXPECT_EQ(out, 0.0f);
  st.merge(&o, &part, 1.0f, 2.0f, 1);
  st.merge(&o, &part, -INFINITY, 0.0f, 1);
  st.finalize(&o, &out, 1);
  EXPECT_FLOAT_EQ(out, 2.5f);
}

TEST(Cases, TableHasTheOriginCases) {
  const CaseSpec& c1 = find_case("Case1");
  EXPECT_EQ(c1.batch, 256);
  EXPECT_EQ(c1.num_heads, 16);
  EXPECT_EQ(c1.block_size, 128);
  EXPECT_EQ(find_case("Case2").num_heads, 64);
  EXPECT_EQ(find_case("SmallCase1").batch, 24);
  EXPECT_THROW(find_case("Case9"), Error);
}

TEST(Cases, GenerationIsDeterministicAndFollowsSpec4) {
  CaseSpec s = find_case("SmallCase1");
  s.batch = 3;
  s.context_lens = {300, 5};
  const Case a = generate_case(s, 42), b = generate_case(s, 42), c = generate_case(s, 43);
  EXPECT_EQ(a.context_lens, (std::vector<std::int32_t>{300, 5, 300}));
  EXPECT_EQ(a.max_blocks_per_req, 256);
  EXPECT_EQ(a.num_blocks, 3 * 3);
  ASSERT_EQ(a.key_cache.size(), b.key_cache.size());
  EXPECT_EQ(0, std::memcmp(a.key_cache.data(), b.key_cache.data(), a.key_cache.size() * 2));
  EXPECT_NE(0, std::memcmp(a.key_cache.data(), c.key_cache.data(), a.key_cache.size() * 2));
  for (auto id : a.block_table) { ASSERT_GE(id, 0); ASSERT_LT(id, a.num_blocks); }
  float qmin = 1, qmax = -1, vmax = 0;
  for (auto q : a.query) { qmin = std::min(qmin, q.to_float()); qmax = std::max(qmax, q.to_float()); }
  for (auto v : a.value_cache) vmax = std::max(vmax, std::abs(v.to_float()));
  EXPECT_GE(qmin, -0.5f); EXPECT_LE(qmax, 0.5f);
  EXPECT_LE(vmax, 1.0f); EXPECT_GT(vmax, 0.9f);
}

}  // namespace
}  // namespace mixpa
