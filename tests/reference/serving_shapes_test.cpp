// SPEC §6 dtypes and shapes on the reference executor, against exact float64 attention over the
// dequantised inputs: fp16 / fp8 caches with their scales, fp16 queries, q_len 1..16 with its
// causal limit per row, any head_dim multiple of 16 and block_size 1..256, int64 indices. And
// the invalid inputs of these keys.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/poison.h"
#include "core/element.h"

namespace mixpa::testing {
namespace {

CaseSpec serving(std::string name, DType kv, DType q, std::int64_t q_len, std::int64_t head_dim, std::int64_t bs,
                 std::vector<std::int32_t> lens, std::int64_t heads = 8, std::int64_t kv_heads = 2) {
  CaseSpec s = small_spec(std::move(name), static_cast<std::int64_t>(lens.size()), heads, kv_heads, head_dim, bs, lens);
  s.kv_dtype = kv;
  s.query_dtype = q;
  s.q_len = q_len;
  return s;
}

std::vector<CaseSpec> serving_specs() {
  std::vector<CaseSpec> v = {
      serving("f16_cache", DType::kF16, DType::kBF16, 1, 128, 16, {0, 1, 37, 100}),
      serving("f16_all", DType::kF16, DType::kF16, 1, 64, 32, {65, 3}),
      serving("e4m3", DType::kF8E4M3, DType::kBF16, 1, 128, 16, {70, 17, 1}),
      serving("e5m2", DType::kF8E5M2, DType::kF16, 1, 128, 64, {129, 64}),
      serving("q_len2", DType::kBF16, DType::kBF16, 2, 64, 16, {2, 40, 0, 17}),
      serving("q_len4_gqa32_8", DType::kBF16, DType::kBF16, 4, 64, 16, {4, 57}, 32, 8),
      serving("q_len16", DType::kF16, DType::kF16, 16, 32, 8, {16, 100}),
      serving("hd16", DType::kBF16, DType::kBF16, 1, 16, 16, {20, 5}),
      serving("hd80", DType::kBF16, DType::kBF16, 1, 80, 16, {33, 70}),
      serving("hd96", DType::kF8E4M3, DType::kBF16, 3, 96, 32, {40, 3}),
      serving("hd192", DType::kBF16, DType::kBF16, 1, 192, 16, {50}),
      serving("bs1", DType::kBF16, DType::kBF16, 1, 64, 1, {1, 9, 0}),
      serving("bs8_q_len3", DType::kBF16, DType::kBF16, 3, 64, 8, {3, 30}),
      serving("bs256", DType::kBF16, DType::kBF16, 1, 64, 256, {300, 255}),
  };
  CaseSpec scaled = serving("e4m3_scales", DType::kF8E4M3, DType::kBF16, 2, 64, 16, {45, 2});
  scaled.k_scale = 0.25;
  scaled.v_scale = 3.0;
  v.push_back(scaled);
  CaseSpec wide = serving("int64_indices", DType::kBF16, DType::kBF16, 1, 64, 16, {40, 0, 17});
  wide.int64_indices = true;
  v.push_back(wide);
  // Mixed with the variants: a window per row, ALiBi relative to each row's position, sinks.
  v.push_back(with_variant(serving("q_len4_window", DType::kF16, DType::kBF16, 4, 64, 16, {4, 77}), 0, 5, false, false));
  v.push_back(with_variant(serving("q_len3_alibi_sinks_e5m2", DType::kF8E5M2, DType::kBF16, 3, 80, 8, {30, 3}), 0, -1,
                           true, true));
  v.push_back(with_variant(serving("softcap_hd48_bs3", DType::kF8E4M3, DType::kF16, 2, 48, 3, {11, 2}), 5.0, 7, true, true));
  return v;
}

class ServingShapes : public ::testing::TestWithParam<CaseSpec> {};

TEST_P(ServingShapes, ReferenceAgreesWithExact) {
  const Case c = generate_case(GetParam(), 11);
  std::vector<float> lse;
  const std::vector<float> out = run_case(c, "reference", {}, &lse);
  std::vector<double> ref_lse;
  const std::vector<double> ref = exact(c, {}, &ref_lse);
  expect_close_to_exact(c, out, ref);
  expect_lse_close_to_exact(c, lse, ref_lse);
}

INSTANTIATE_TEST_SUITE_P(Spec6, ServingShapes, ::testing::ValuesIn(serving_specs()),
                         [](const auto& info) { return info.param.name; });

// The sim computes every §6 dtype and shape bit for bit as the reference (out and lse), with
// --check on (the pipes' slots, sized from the plan, are used cleanly) and a stride loop that
// reuses the pipes across logical blocks.
TEST_P(ServingShapes, SimIsBitwiseTheReferenceAndCheckClean) {
  const Case c = generate_case(GetParam(), 11);
  std::vector<float> lse_ref, lse_sim;
  const std::vector<float> ref = run_case(c, "reference", {}, &lse_ref);
  for (const int blocks : {3, 24}) {
    Options o;
    o.hw_blocks = blocks;
    o.sim.check = true;
    const std::vector<float> sim = run_case(c, "sim", o, &lse_sim);
    ASSERT_EQ(ref.size(), sim.size());
    for (std::size_t i = 0; i < ref.size(); ++i)
      ASSERT_EQ(std::bit_cast<std::uint32_t>(ref[i]), std::bit_cast<std::uint32_t>(sim[i]))
          << "hw_blocks " << blocks << " element " << i << ": " << ref[i] << " vs " << sim[i];
    for (std::size_t i = 0; i < lse_ref.size(); ++i)
      ASSERT_EQ(std::bit_cast<std::uint32_t>(lse_ref[i]), std::bit_cast<std::uint32_t>(lse_sim[i]))
          << "hw_blocks " << blocks << " lse row " << i;
  }
}

// Shapes whose (token, head) rows cross a tile boundary (q_len * group > q_tile), with a window
// per row, and NaN / Inf in the cache rows no query row sees (past the contexts and before
// every row's window): the sim still equals the reference bit for bit, and both are finite.
TEST(ServingShapes, SimTilesSplitAcrossTokensAndMaskedRowsStayUnread) {
  std::vector<CaseSpec> specs = {
      serving("q_len10_group8", DType::kBF16, DType::kBF16, 10, 64, 16, {10, 75}, 8, 1),
      serving("q_len5_group3_f16", DType::kF16, DType::kF16, 5, 32, 4, {9, 5, 0}, 6, 2),
      with_variant(serving("q_len7_group10_e4m3_window", DType::kF8E4M3, DType::kBF16, 7, 48, 5, {7, 60}, 20, 2), 0,
                   3, true, true),
  };
  for (const CaseSpec& spec : specs) {
    Case c = generate_case(spec, 4);
    ASSERT_GT(poison_unused_cache_rows(c), 0) << spec.name;
    std::vector<float> lse_ref, lse_sim;
    const std::vector<float> ref = run_case(c, "reference", {}, &lse_ref);
    Options o;
    o.hw_blocks = 2;
    o.sim.check = true;
    const std::vector<float> sim = run_case(c, "sim", o, &lse_sim);
    for (std::size_t i = 0; i < ref.size(); ++i) {
      ASSERT_TRUE(std::isfinite(ref[i])) << spec.name << " element " << i;
      ASSERT_EQ(std::bit_cast<std::uint32_t>(ref[i]), std::bit_cast<std::uint32_t>(sim[i])) << spec.name << " element " << i;
    }
    for (std::size_t i = 0; i < lse_ref.size(); ++i)
      ASSERT_EQ(std::bit_cast<std::uint32_t>(lse_ref[i]), std::bit_cast<std::uint32_t>(lse_sim[i])) << spec.name << " lse " << i;
    expect_close_to_exact(c, sim, exact(c));
  }
}

// The causal limit of q_len > 1 is per row: row p of request b equals a q_len-1 request whose
// context ends at its position (n - q_len + p + 1), bit for bit on the reference.
TEST(ServingShapes, EachNewTokenIsItsOwnQLenOneRequest) {
  CaseSpec spec = serving("q4", DType::kBF16, DType::kBF16, 4, 64, 16, {37});
  const Case c = generate_case(spec, 5);
  const std::vector<float> out = run_case(c, "reference");
  const std::int64_t heads = spec.num_heads, dim = spec.head_dim;
  for (std::int64_t p = 0; p < 4; ++p) {
    Case one = c;
    one.spec.q_len = 1;
    one.context_lens = {static_cast<std::int32_t>(37 - 4 + p + 1)};
    one.query.assign(c.query.begin() + p * heads * dim, c.query.begin() + (p + 1) * heads * dim);
    const std::vector<float> single = run_case(one, "reference");
    for (std::int64_t i = 0; i < heads * dim; ++i)
      ASSERT_EQ(single[i], out[p * heads * dim + i]) << "token " << p << " element " << i;
  }
}

// fp8 decoding is exact: every e4m3 / e5m2 code against its definition.
TEST(ServingShapes, Fp8DecodeMatchesTheFormats) {
  for (int b = 0; b < 256; ++b) {
    const int sign = b & 0x80 ? -1 : 1;
    const int e4 = (b >> 3) & 15, m3 = b & 7;
    const float v4 = e4m3::from_bits(static_cast<std::uint8_t>(b)).to_float();
    if (e4 == 15 && m3 == 7) {
      EXPECT_TRUE(std::isnan(v4)) << b;
    } else {
      const double want = e4 == 0 ? sign * m3 * std::ldexp(1.0, -9) : sign * (1 + m3 / 8.0) * std::ldexp(1.0, e4 - 7);
      EXPECT_EQ(v4, want) << b;
    }
    const int e5 = (b >> 2) & 31, m2 = b & 3;
    const float v5 = e5m2::from_bits(static_cast<std::uint8_t>(b)).to_float();
    if (e5 == 31) {
      EXPECT_TRUE(m2 == 0 ? std::isinf(v5) : std::isnan(v5)) << b;
    } else {
      const double want = e5 == 0 ? sign * m2 * std::ldexp(1.0, -16) : sign * (1 + m2 / 4.0) * std::ldexp(1.0, e5 - 15);
      EXPECT_EQ(v5, want) << b;
    }
  }
}

struct Invalid {
  const char* what;
  std::function<void(Case&, Options&)> mutate;
  const char* message;
};

TEST(ServingShapes, InvalidInputsNameTheRule) {
  const CaseSpec base = serving("base", DType::kF8E4M3, DType::kBF16, 2, 64, 16, {20, 2});
  const std::vector<Invalid> cases = {
      {"k_scale on bf16", [](Case& c, Options& o) { c.spec.kv_dtype = DType::kBF16; c.key_cache.resize(c.key_bytes.size()); c.value_cache.resize(c.key_bytes.size()); o.k_scale = 2.0; },
       "k_scale: given for a BF16 cache"},
      {"negative v_scale", [](Case&, Options& o) { o.v_scale = -1.0; }, "v_scale: -1 must be a positive finite number"},
      {"zero k_scale", [](Case&, Options& o) { o.k_scale = 0.0; }, "k_scale: 0 must be a positive finite number"},
      {"nan k_scale", [](Case&, Options& o) { o.k_scale = std::nan(""); }, "k_scale: nan must be a positive finite number"},
      {"context below q_len", [](Case& c, Options&) { c.context_lens[1] = 1; }, "context_lens[1] = 1 is below q_len 2"},
      {"q_len 17", [](Case& c, Options&) { c.spec.q_len = 17; }, "query: q_len is 17"},
  };
  for (const Invalid& t : cases) {
    Case c = generate_case(base, 1);
    Options o = case_options(c, {});
    t.mutate(c, o);
    if (c.spec.q_len == 17) {  // a query of 17 new tokens (the buffer grows to match the shape)
      c.query.resize(c.spec.batch * 17 * c.spec.num_heads * c.spec.head_dim);
      c.context_lens = {20, 20};
    }
    std::vector<float> out(c.out_elements());
    try {
      run(c.inputs(), o, c.output_view(out.data()));
      ADD_FAILURE() << t.what << ": accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(t.message), std::string::npos) << t.what << ": " << e.what();
    }
  }
}

TEST(ServingShapes, ShapeRulesOfSpec6) {
  const auto rejects = [](CaseSpec s, const char* message) {
    const Case c = generate_case(s, 1);
    std::vector<float> out(c.out_elements());
    try {
      run(c.inputs(), case_options(c, {}), c.output_view(out.data()));
      ADD_FAILURE() << s.name << ": accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << s.name << ": " << e.what();
    }
  };
  rejects(serving("hd40", DType::kBF16, DType::kBF16, 1, 40, 16, {5}), "head_dim 40 is not supported");
  rejects(serving("hd272", DType::kBF16, DType::kBF16, 1, 272, 16, {5}), "head_dim 272 is not supported");
  rejects(serving("bs257", DType::kBF16, DType::kBF16, 1, 64, 257, {5}), "block_size 257 is not supported");
}

TEST(ServingShapes, Int64ValuesOutsideInt32AreRejected) {
  CaseSpec s = serving("wide", DType::kBF16, DType::kBF16, 1, 64, 16, {20, 2});
  s.int64_indices = true;
  Case c = generate_case(s, 1);
  std::vector<float> out(c.out_elements());
  c.block_table64[1] = std::int64_t{1} << 33;
  try {
    run(c.inputs(), case_options(c, {}), c.output_view(out.data()));
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("block_table[0][1] = 8589934592 is outside int32 range"), std::string::npos)
        << e.what();
  }
  c = generate_case(s, 1);
  c.context_lens64[0] = -(std::int64_t{1} << 40);
  try {
    run(c.inputs(), case_options(c, {}), c.output_view(out.data()));
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("context_lens[0] = -1099511627776 is outside int32 range"), std::string::npos)
        << e.what();
  }
}

// An executor that has not grown a feature says so by name; auto picks one that computes it.
TEST(ServingShapes, AutoFallsBackAndNamedExecutorsExplain) {
  const Case c = generate_case(serving("e4m3_q2", DType::kF8E4M3, DType::kBF16, 2, 64, 16, {20}), 3);
  std::vector<float> out(c.out_elements());
  Options o = case_options(c, {});
  o.executor = "auto";
  EXPECT_NO_THROW(run(c.inputs(), o, c.output_view(out.data())));
  expect_close_to_exact(c, out, exact(c));
}

}  // namespace
}  // namespace mixpa::testing
