// The variants of SPEC §6 (soft-cap, ALiBi, window, sinks, lse) on the golden executors:
// reference and sim against exact float64 (out and lse), sim bit for bit equal to the
// reference, merge_states over split requests, and every invalid variant input rejected.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>

#include "common/check.h"
#include "core/page_walk.h"

namespace mixpa {
namespace {

using testing::exact;
using testing::run_case;
using testing::variant_specs;

class GoldenVariants : public ::testing::TestWithParam<CaseSpec> {};

TEST_P(GoldenVariants, ReferenceAgreesWithExact) {
  const Case c = generate_case(GetParam(), 11);
  std::vector<float> lse;
  std::vector<double> ref_lse;
  const auto out = run_case(c, "reference", {}, &lse);
  const auto ref = exact(c, {}, &ref_lse);
  testing::expect_close_to_exact(c, out, ref);
  testing::expect_lse_close_to_exact(c, lse, ref_lse);
}

TEST_P(GoldenVariants, SimIsBitwiseTheReference) {
  const Case c = generate_case(GetParam(), 11);
  std::vector<float> lse_ref, lse_sim;
  const auto ref = run_case(c, "reference", {}, &lse_ref);
  Options o;
  o.hw_blocks = 3;  // fewer workers: the stride loop reuses pipes across logical blocks
  const auto sim = run_case(c, "sim", o, &lse_sim);
  ASSERT_EQ(ref.size(), sim.size());
  for (std::size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(std::bit_cast<std::uint32_t>(ref[i]), std::bit_cast<std::uint32_t>(sim[i])) << i;
  for (std::size_t i = 0; i < lse_ref.size(); ++i)
    ASSERT_EQ(std::bit_cast<std::uint32_t>(lse_ref[i]), std::bit_cast<std::uint32_t>(lse_sim[i])) << i;
}

INSTANTIATE_TEST_SUITE_P(Variants, GoldenVariants, ::testing::ValuesIn(variant_specs()),
                         [](const auto& info) { return info.param.name; });

// The variant really changes the result (the tests above would pass if it were ignored everywhere).
TEST(Variant, EachFeatureChangesTheExactResult) {
  const CaseSpec base = testing::small_spec("base", 2, 16, 1, 128, 16, {100, 60}, 1.0);
  const auto plain = exact(generate_case(base, 3));
  for (const CaseSpec& s : {testing::with_variant(base, 1.0, -1, false, false), testing::with_variant(base, 0, 20, false, false),
                            testing::with_variant(base, 0, -1, true, false), testing::with_variant(base, 0, -1, false, true)}) {
    const auto v = exact(generate_case(s, 3));
    double diff = 0;
    for (std::size_t i = 0; i < v.size(); ++i) diff = std::max(diff, std::abs(v[i] - plain[i]));
    EXPECT_GT(diff, 1e-3) << "softcap " << s.softcap << " window " << s.window_left << " alibi " << !s.alibi_slopes.empty();
  }
}

// Exact float64 attention of a window equals exact attention over a context cut to the window.
TEST(Variant, WindowIsTheLastTokensOnly) {
  CaseSpec s = testing::small_spec("w", 1, 16, 1, 128, 16, {100});
  const Case full = generate_case(testing::with_variant(s, 0, 29, false, false), 5);
  const auto windowed = exact(full);
  // Hand-made: the same request with a block table that starts at the window's first page,
  // shifted so the visible tokens [70, 100) become [6, 36) of a 36-token context.
  Case cut = generate_case(s, 5);
  const std::int64_t shift_pages = 4;  // tokens 64.. -> 0..
  for (std::int64_t j = 0; j + shift_pages < cut.max_blocks_per_req; ++j)
    cut.block_table[j] = full.block_table[j + shift_pages];
  cut.context_lens[0] = 36;
  cut.window_left = 29;
  const auto ref = exact(cut);
  for (std::size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(windowed[i], ref[i], 1e-12) << i;
}

TEST(Variant, HighSinkDrivesRowToZeroAndLseIgnoresIt) {
  const Case c = generate_case(testing::with_variant(testing::small_spec("s", 1, 16, 1, 128, 16, {40}), 0, -1, false, true, true), 2);
  std::vector<float> lse, lse_plain;
  const auto out = run_case(c, "reference", {}, &lse);
  Case plain = c;
  plain.has_sinks = false;
  run_case(plain, "reference", {}, &lse_plain);
  for (std::int64_t d = 0; d < 128; ++d) EXPECT_LT(std::abs(out[d]), 1e-20f) << d;  // head 0: sink 60
  for (std::size_t r = 0; r < lse.size(); ++r) EXPECT_EQ(lse[r], lse_plain[r]) << r;
}

TEST(Variant, ContextZeroGivesZerosAndMinusInfLse) {
  const Case c = generate_case(testing::with_variant(testing::small_spec("z", 2, 16, 1, 64, 16, {0, 3}), 2.0, 1, true, true), 2);
  for (const char* executor : {"reference", "sim"}) {
    std::vector<float> lse;
    const auto out = run_case(c, executor, {}, &lse);
    for (std::int64_t i = 0; i < 16 * 64; ++i) ASSERT_EQ(out[i], 0.0f) << executor << " " << i;
    for (std::int64_t h = 0; h < 16; ++h) {
      EXPECT_EQ(lse[h], -std::numeric_limits<float>::infinity()) << executor;
      EXPECT_TRUE(std::isfinite(lse[16 + h])) << executor;
    }
  }
}

TEST(PageWalk, YieldsTheSpanOfEveryPage) {
  Case c = generate_case(testing::small_spec("pw", 1, 16, 1, 64, 16, {100}), 1);
  std::vector<float> dummy;
  const Problem p = validate(c.inputs(), testing::case_options(c, {}), testing::output_view(dummy, c));
  std::vector<PageSpan> spans;
  for (PageWalk w(p, 0, TokenRange{20, 70}); w.is_valid(); ++w) spans.push_back(*w);
  ASSERT_EQ(spans.size(), 4u);  // pages 1..4: [20,32) [32,48) [48,64) [64,70)
  EXPECT_EQ(spans[0].index, 1);
  EXPECT_EQ(spans[0].begin, 4);
  EXPECT_EQ(spans[0].end, 16);
  EXPECT_EQ(spans[0].next_page, c.block_table[2]);
  EXPECT_EQ(spans[3].begin, 0);
  EXPECT_EQ(spans[3].end, 6);
  EXPECT_EQ(spans[3].next_page, -1);
  EXPECT_EQ(spans[3].token0, 64);
  EXPECT_EQ(PageWalk(p, 0, TokenRange{}).is_valid(), false);
}

// Split a request's tokens into k page-aligned pieces, run each as its own request (its pages,
// its length), merge the (out, lse) pairs: equals the whole run within the check's tolerance.
TEST(MergeStates, PiecesMergeToTheWhole) {
  for (double softcap : {0.0, 2.0}) {
    const CaseSpec spec = testing::with_variant(testing::small_spec("m", 1, 16, 2, 128, 16, {200}, 0.3), softcap, -1, false, false);
    const Case whole = generate_case(spec, 9);
    std::vector<float> lse_whole;
    const auto out_whole = run_case(whole, "reference", {}, &lse_whole);
    const std::int64_t cuts[] = {0, 48, 112, 160, 200};
    std::vector<float> o, lse;
    for (int piece = 0; piece + 1 < 5; ++piece) {
      Case part = whole;
      const std::int64_t first_page = cuts[piece] / 16;
      for (std::int64_t j = 0; j < part.max_blocks_per_req; ++j)
        part.block_table[j] = j + first_page < whole.max_blocks_per_req ? whole.block_table[j + first_page] : 0;
      part.context_lens[0] = static_cast<std::int32_t>(cuts[piece + 1] - cuts[piece]);
      std::vector<float> part_lse;
      const auto part_out = run_case(part, "reference", {}, &part_lse);
      if (piece == 0) {
        o = part_out;
        lse = part_lse;
      } else {
        merge_states(o.data(), lse.data(), part_out.data(), part_lse.data(), o.data(), lse.data(), 16, 128);
      }
    }
    for (std::size_t i = 0; i < o.size(); ++i) EXPECT_NEAR(o[i], out_whole[i], 2e-3 + 2e-3 * std::abs(out_whole[i])) << i;
    for (std::size_t r = 0; r < lse.size(); ++r) EXPECT_NEAR(lse[r], lse_whole[r], 4e-3 + 2e-3 * std::abs(lse_whole[r])) << r;
  }
}

TEST(MergeStates, EmptySidesAndGarbage) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float o_a[2] = {nan, nan}, o_b[2] = {1.0f, 2.0f};
  float lse_a[1] = {-inf}, lse_b[1] = {0.5f}, o[2], lse[1];
  merge_states(o_a, lse_a, o_b, lse_b, o, lse, 1, 2);  // an empty side's o is ignored, even NaN
  EXPECT_EQ(o[0], 1.0f);
  EXPECT_EQ(o[1], 2.0f);
  EXPECT_EQ(lse[0], 0.5f);
  lse_b[0] = -inf;
  merge_states(o_a, lse_a, o_a, lse_b, o, lse, 1, 2);
  EXPECT_EQ(o[0], 0.0f);
  EXPECT_EQ(lse[0], -inf);
  lse_a[0] = lse_b[0] = 1.0f;
  merge_states(o_b, lse_a, o_b, lse_b, o, lse, 1, 2);
  EXPECT_NEAR(o[1], 2.0f, 1e-6);
  EXPECT_NEAR(lse[0], 1.0f + std::log(2.0f), 1e-6);
  lse_a[0] = nan;
  EXPECT_THROW(merge_states(o_b, lse_a, o_b, lse_b, o, lse, 1, 2), Error);
}

// Every invalid variant input of SPEC §6 is rejected by validate() with a message naming it.
TEST(VariantValidation, RejectsEachInvalidInput) {
  const Case c = generate_case(testing::small_spec("v", 2, 16, 2, 64, 16, {10, 20}), 1);
  std::vector<float> dummy;
  const OutputView view = testing::output_view(dummy, c);
  auto expect_error = [&](Options o, Inputs in, const std::string& needle) {
    try {
      validate(in, o, view);
      ADD_FAILURE() << "accepted; expected an error naming " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Options o;
  o.softcap = -1;
  expect_error(o, c.inputs(), "softcap");
  o.softcap = std::numeric_limits<double>::infinity();
  expect_error(o, c.inputs(), "softcap");
  o.softcap = 1e300;
  expect_error(o, c.inputs(), "softcap");
  o = {};
  o.window_left = -2;
  expect_error(o, c.inputs(), "window_left");
  o = {};
  std::vector<float> short_slopes(15, 0.1f), slopes(16, 0.1f), bad(16, 0.1f);
  bad[3] = nan;
  Inputs in = c.inputs();
  in.alibi_slopes = TensorView::contiguous(short_slopes.data(), DType::kF32, {15});
  expect_error(o, in, "alibi_slopes");
  in.alibi_slopes = TensorView::contiguous(bad.data(), DType::kF32, {16});
  expect_error(o, in, "alibi_slopes[3]");
  in.alibi_slopes = TensorView::contiguous(slopes.data(), DType::kF32, {4, 4});
  expect_error(o, in, "alibi_slopes");
  in.alibi_slopes = TensorView::contiguous(slopes.data(), DType::kBF16, {16});
  expect_error(o, in, "alibi_slopes");
  in = c.inputs();
  in.sinks = TensorView::contiguous(short_slopes.data(), DType::kF32, {15});
  expect_error(o, in, "sinks");
  in.sinks = TensorView::contiguous(bad.data(), DType::kF32, {16});
  expect_error(o, in, "sinks[3]");
  // Valid ones pass.
  in = c.inputs();
  in.sinks = TensorView::contiguous(slopes.data(), DType::kF32, {16});
  in.alibi_slopes = TensorView::contiguous(slopes.data(), DType::kF32, {16});
  o.softcap = 30;
  o.window_left = 0;
  EXPECT_NO_THROW(validate(in, o, view));
}

// A window skips the pages before it: their block_table entries are not used, so not checked.
TEST(VariantValidation, PagesBeforeTheWindowAreNotRead) {
  Case c = generate_case(testing::small_spec("w", 1, 16, 1, 64, 16, {100}), 1);
  c.block_table[0] = 1 << 30;  // page 0 holds tokens [0, 16): outside a 20-token window
  c.window_left = 19;
  std::vector<float> lse;
  const auto out = run_case(c, "reference", {}, &lse);
  testing::expect_close_to_exact(c, out, exact(c));
  c.window_left = -1;
  EXPECT_THROW(run_case(c, "reference"), Error);
}

}  // namespace
}  // namespace mixpa

namespace mixpa {
namespace {

TEST(KvLayout, HndGivesTheSameBitsAsNhdOnEveryExecutor) {
  const Case nhd = generate_case(testing::with_variant(testing::small_spec("hnd", 3, 16, 4, 64, 16, {50, 0, 90}), 0, -1,
                                                       false, true), 4);
  Case hnd = nhd;
  restore_hnd(hnd);
  for (const char* executor : {"reference", "sim", "cpu"}) {
    const auto a = testing::run_case(nhd, executor);
    const auto b = testing::run_case(hnd, executor);  // the case's kv_layout, as the CLI takes it
    ASSERT_EQ(a.size(), b.size());
    for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << executor << " " << i;
  }
  // The same bytes read as NHD are a different (valid-shaped only if kvh == bs) problem: here
  // [nb, 4, 16, 64] as NHD means block_size 4, which is rejected by name.
  Case misread = hnd;
  misread.kv_layout = KvLayout::kNHD;
  EXPECT_THROW(testing::run_case(misread, "reference"), Error);
  EXPECT_THROW(parse_kv_layout("NDH"), Error);
}

}  // namespace
}  // namespace mixpa
