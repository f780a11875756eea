// Executor "cpu": every kernel flavour this machine runs against exact attention on the
// coverage shapes and more, bitwise thread-count determinism, NaN in masked rows, and the
// split-KV plan it shares with other executors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "common/check.h"
#include "common/variants.h"
#include "core/split_kv.h"
#include "cpu/chunk_kernel.h"
#include "cpu/cpu_executor.h"

namespace mixpa {
namespace {

using cpu::Isa;
}  // namespace
namespace cpu {
inline void PrintTo(Isa isa, std::ostream* os) { *os << isa_name(isa); }
}  // namespace cpu
namespace {
using testing::coverage_specs;
using testing::exact;
using testing::small_spec;

std::vector<Isa> all_isas() { return {Isa::kAmx, Isa::kAvx512Bf16, Isa::kAvx512, Isa::kAvx2, Isa::kScalar}; }

// Runs the cpu executor with a forced kernel flavour and thread count.
std::vector<float> run_isa(const Case& c, Isa isa, int threads = 0) {
  Options options;
  options.scale = c.scale;
  options.num_threads = threads;
  std::vector<float> out;
  const OutputView view = testing::output_view(out, c);
  const Problem p = validate(c.inputs(), options, view);
  const Plan plan = make_plan(p.shape, p.variant.scale);
  cpu::run_with_isa(p, plan, options, out.data(), isa);
  return out;
}

// More shapes than the shared coverage list: GQA groups 1..128, every head_dim and block
// size, and long contexts that split into several KV chunks.
std::vector<CaseSpec> cpu_specs() {
  std::vector<CaseSpec> specs = coverage_specs();
  specs.push_back(small_spec("gqa1_mha", 2, 8, 8, 128, 16, {37, 5}));
  specs.push_back(small_spec("gqa2", 2, 8, 4, 64, 32, {100, 64}));
  specs.push_back(small_spec("gqa8_hd256", 2, 16, 2, 256, 64, {129, 3}));
  specs.push_back(small_spec("gqa48", 1, 96, 2, 128, 16, {77}));
  specs.push_back(small_spec("gqa64_bs128", 1, 64, 1, 128, 128, {300}));
  specs.push_back(small_spec("gqa128", 1, 128, 1, 64, 32, {90}));
  specs.push_back(small_spec("gqa3_odd", 2, 9, 3, 64, 16, {31, 18}));
  specs.push_back(small_spec("split_long", 1, 16, 1, 128, 32, {9000}));
  specs.push_back(small_spec("split_gqa", 2, 32, 8, 128, 64, {5000, 4097}));
  specs.push_back(small_spec("split_hd64_bs16", 1, 20, 4, 64, 16, {6001}));
  return specs;
}

class CpuCoverage : public ::testing::TestWithParam<std::tuple<Isa, CaseSpec>> {};

TEST_P(CpuCoverage, AgreesWithExact) {
  const auto& [isa, spec] = GetParam();
  if (!cpu::isa_supported(isa)) GTEST_SKIP() << "this CPU cannot run " << cpu::isa_name(isa);
  const Case c = generate_case(spec, 11);
  const double err = testing::expect_close_to_exact(c, run_isa(c, isa), exact(c));
  EXPECT_LT(err, 2e-3);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CpuCoverage, ::testing::Combine(::testing::ValuesIn(all_isas()),
                                                                 ::testing::ValuesIn(cpu_specs())),
                         [](const auto& info) {
                           return std::string(cpu::isa_name(std::get<0>(info.param))) + "_" +
                                  std::get<1>(info.param).name;
                         });

class CpuIsa : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!cpu::isa_supported(GetParam())) GTEST_SKIP() << "this CPU cannot run " << cpu::isa_name(GetParam());
  }
};

// Chunk boundaries come from the shapes only: 1, 2, 3 and 8 threads give the same bits.
TEST_P(CpuIsa, BitwiseIdenticalForAnyThreadCount) {
  for (const CaseSpec& spec : {small_spec("det_split", 2, 32, 8, 128, 64, {7000, 2500}),
                               small_spec("det_batch", 9, 16, 1, 64, 16, {300, 0, 17, 1, 64, 999, 5, 6, 7})}) {
    const Case c = generate_case(spec, 5);
    const auto one = run_isa(c, GetParam(), 1);
    for (int threads : {2, 3, 8}) EXPECT_EQ(one, run_isa(c, GetParam(), threads)) << spec.name << " threads " << threads;
  }
}

// Rows past a request's context hold NaN / Inf in K and V: they must not reach the output.
TEST_P(CpuIsa, MaskedRowsHoldingNaNDoNotLeak) {
  Case c = generate_case(small_spec("nan_rows", 3, 16, 2, 128, 32, {45, 7, 33}), 3);
  const auto clean = run_isa(c, GetParam());
  std::vector<bool> used(c.num_blocks * 32, false);
  for (std::int64_t b = 0; b < 3; ++b)
    for (std::int64_t t = 0; t < c.context_lens[b]; ++t) used[c.block_table[b * c.max_blocks_per_req + t / 32] * 32 + t % 32] = true;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  int poisoned = 0;
  for (std::int64_t row = 0; row < c.num_blocks * 32; ++row) {
    if (used[row]) continue;
    ++poisoned;
    for (std::int64_t d = 0; d < 2 * 128; ++d) {
      c.key_cache[row * 256 + d] = bf16::from_float(nan);
      c.value_cache[row * 256 + d] = bf16::from_float(d % 2 ? inf : nan);
    }
  }
  ASSERT_GT(poisoned, 0);
  EXPECT_EQ(clean, run_isa(c, GetParam()));
}

TEST_P(CpuIsa, SharpSoftmaxAndNegativeScale) {
  for (double scale : {40.0, -3.0}) {
    const Case c = generate_case(small_spec("scale", 2, 16, 1, 128, 32, {100, 33}, scale), 5);
    const auto out = run_isa(c, GetParam());
    for (float v : out) ASSERT_TRUE(std::isfinite(v));
    testing::expect_close_to_exact(c, out, exact(c));
  }
}

INSTANTIATE_TEST_SUITE_P(Flavours, CpuIsa, ::testing::ValuesIn(all_isas()),
                         [](const auto& info) { return std::string(cpu::isa_name(info.param)); });

// A flavour's group kernel (the kv heads of one request over the same pages, page by page)
// gives bitwise the chunk kernel's result for every head, also with NaN in unused rows and
// with more heads than one group holds.
TEST_P(CpuIsa, GroupKernelMatchesChunkKernelBitwise) {
  const cpu::GroupKernel group = cpu::group_kernel(GetParam());
  if (group == nullptr) GTEST_SKIP() << cpu::isa_name(GetParam()) << " has no group kernel";
  for (const CaseSpec& spec : {small_spec("grp_gqa4", 1, 32, 8, 128, 64, {1000}), small_spec("grp_mha", 1, 20, 20, 64, 16, {77}),
                               small_spec("grp_gqa3_hd256", 1, 12, 4, 256, 32, {65}),
                               small_spec("grp_wide", 1, 32, 2, 128, 32, {40})}) {
    Case c = generate_case(spec, 7);
    const std::int64_t row = spec.num_kv_heads * spec.head_dim, bs = spec.block_size;
    std::vector<bool> used(c.num_blocks * bs, false);  // rows outside the context become NaN / Inf
    for (std::int64_t t = 0; t < c.context_lens[0]; ++t) used[c.block_table[t / bs] * bs + t % bs] = true;
    for (std::int64_t r = 0; r < c.num_blocks * bs; ++r)
      for (std::int64_t d = 0; !used[r] && d < row; ++d) {
        c.key_cache[r * row + d] = bf16::from_float(std::numeric_limits<float>::quiet_NaN());
        c.value_cache[r * row + d] = bf16::from_float(std::numeric_limits<float>::infinity());
      }
    Options options;
    options.scale = c.scale;
    std::vector<float> unused;
    const Problem p = validate(c.inputs(), options, testing::output_view(unused, c));
    const Plan plan = make_plan(p.shape, p.variant.scale);
    const std::int64_t floats = plan.q_tile * spec.head_dim;
    std::vector<cpu::ChunkJob> jobs;
    for (std::int64_t b = 0; b < plan.q_loop; ++b) {
      const LogicalBlock lb = plan.logical_block(b);
      jobs.push_back({&p, lb.batch, lb.kv_head, lb.head_begin, lb.rows, TokenRange{bs, c.context_lens[0]}});  // from page 1: a split chunk
    }
    const auto n = static_cast<std::int64_t>(jobs.size());
    std::vector<float> o1(n * floats, 0.0f), m1(n * plan.q_tile), l1(n * plan.q_tile), o2 = o1, m2 = m1, l2 = l1;
    std::vector<cpu::ChunkOut> outs;
    for (std::int64_t h = 0; h < n; ++h) {
      cpu::chunk_kernel(GetParam())(jobs[h], {o1.data() + h * floats, m1.data() + h * plan.q_tile, l1.data() + h * plan.q_tile});
      outs.push_back({o2.data() + h * floats, m2.data() + h * plan.q_tile, l2.data() + h * plan.q_tile});
    }
    group(jobs, outs);
    EXPECT_EQ(o1, o2) << spec.name;
    EXPECT_EQ(m1, m2) << spec.name;
    EXPECT_EQ(l1, l2) << spec.name;
    for (float v : o2) ASSERT_TRUE(std::isfinite(v)) << spec.name;
  }
}

// SPEC §6's variants (soft-cap, ALiBi, windows smaller than a page, crossing pages and larger than
// the context, sinks, sinks above every score, all combined; split-KV, context 0 and 1, GQA) on
// every flavour against exact float64, out and lse.
class CpuVariants : public CpuIsa {};

testing::ExecutorFn isa_executor(Isa isa) {
  return [isa](const Problem& p, const Plan& plan, const Options& o, const Results& r) { cpu::run_with_isa(p, plan, o, r, isa); };
}

TEST_P(CpuVariants, AgreeWithExact) {
  for (const CaseSpec& spec : testing::variant_shapes())
    for (const testing::VariantSpec& v : testing::variant_kinds()) {
      const auto vc = testing::make_variant_case(spec, 5, v);
      testing::expect_variant_close(vc, testing::run_variant(vc, isa_executor(GetParam())), testing::exact_variant(vc));
    }
}

TEST_P(CpuVariants, BitwiseIdenticalForAnyThreadCount) {
  const auto vc = testing::make_variant_case(small_spec("det_var", 2, 32, 8, 128, 64, {7000, 2500}), 5,
                                             {"all", 2.5, 3000, true, true, 0.5f});
  const auto one = testing::run_variant(vc, isa_executor(GetParam()), 1);
  for (int threads : {2, 3, 8}) {
    const auto many = testing::run_variant(vc, isa_executor(GetParam()), threads);
    EXPECT_EQ(one.out, many.out) << "threads " << threads;
    EXPECT_EQ(one.lse, many.lse) << "threads " << threads;
  }
}

// Rows no request sees (before its window, past its context) hold NaN / Inf: the output and lse
// are bitwise those of the clean cache.
TEST_P(CpuVariants, RowsOutsideTheWindowHoldingNaNDoNotLeak) {
  auto vc = testing::make_variant_case(small_spec("nan_window", 3, 16, 4, 128, 32, {150, 7, 3000}), 3,
                                       {"window", 1.0, 45, true, false});
  const auto clean = testing::run_variant(vc, isa_executor(GetParam()));
  Case& c = vc.c;
  const std::int64_t bs = 32, row = 4 * 128;
  std::vector<bool> seen(c.num_blocks * bs, false);
  for (std::int64_t b = 0; b < 3; ++b)
    for (std::int64_t t = std::max<std::int64_t>(0, c.context_lens[b] - 1 - 45); t < c.context_lens[b]; ++t)
      seen[c.block_table[b * c.max_blocks_per_req + t / bs] * bs + t % bs] = true;
  int poisoned = 0;
  for (std::int64_t r = 0; r < c.num_blocks * bs; ++r) {
    if (seen[r]) continue;
    ++poisoned;
    for (std::int64_t d = 0; d < row; ++d) {
      c.key_cache[r * row + d] = bf16::from_float(std::numeric_limits<float>::quiet_NaN());
      c.value_cache[r * row + d] = bf16::from_float(d % 2 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN());
    }
  }
  ASSERT_GT(poisoned, 0);
  const auto dirty = testing::run_variant(vc, isa_executor(GetParam()));
  EXPECT_EQ(clean.out, dirty.out);
  EXPECT_EQ(clean.lse, dirty.lse);
}

// The shared variant table (tests/common/check.h, the one reference and sim run) on every flavour.
TEST_P(CpuVariants, SharedVariantTableAgreesWithExact) {
  for (const CaseSpec& spec : testing::variant_specs()) {
    const Case c = generate_case(spec, 11);
    const Options options = testing::case_options(c, {});
    std::vector<float> out, lse(c.spec.batch * c.spec.num_heads, -12345.0f);
    OutputView view = testing::output_view(out, c);
    view.lse = lse.data();
    const Problem p = validate(c.inputs(), options, view);
    cpu::run_with_isa(p, make_plan(p.shape, p.variant.scale), options, Results{out.data(), lse.data()}, GetParam());
    std::vector<double> ref_lse;
    const auto ref = exact(c, {}, &ref_lse);
    testing::expect_close_to_exact(c, out, ref);
    testing::expect_lse_close_to_exact(c, lse, ref_lse);
  }
}

INSTANTIATE_TEST_SUITE_P(Flavours, CpuVariants, ::testing::ValuesIn(all_isas()),
                         [](const auto& info) { return std::string(cpu::isa_name(info.param)); });

// The SIMD layer's tanh (soft-cap) against double: relative error below 1e-6 over the range
// soft-capped scores take, exactly +-1 far out, odd.
TEST(CpuAvx2, TanhIsAccurateToOneMillionth) {
  if (!cpu::isa_supported(Isa::kAvx2)) GTEST_SKIP() << "this CPU cannot run avx2";
  constexpr std::int64_t kN = 1 << 18;
  std::vector<float> x(kN), y(kN);
  for (std::int64_t i = 0; i < kN; ++i) x[i] = static_cast<float>(-30.0 + 60.0 * static_cast<double>(i) / kN);
  x[0] = 1e-30f;
  x[1] = -1e-6f;
  x[2] = 0.625f;
  x[3] = -0.62499994f;
  x[4] = 50.0f;
  x[5] = -1e4f;
  x[6] = 0.0f;
  x[7] = 3e-3f;
  cpu::tanh_avx2(x.data(), y.data(), kN);
  double worst = 0;
  for (std::int64_t i = 0; i < kN; ++i) {
    const double want = std::tanh(static_cast<double>(x[i]));
    const double rel = want == 0 ? std::abs(y[i]) : std::abs(y[i] - want) / std::abs(want);
    worst = std::max(worst, rel);
    ASSERT_LT(rel, 1e-6) << "x = " << x[i] << ": " << y[i] << " vs " << want;
  }
  EXPECT_EQ(y[4], 1.0f);
  EXPECT_EQ(y[5], -1.0f);
  EXPECT_EQ(y[6], 0.0f);
  std::cout << "tanh: worst relative error " << worst << "\n";
}

// The avx2 flavour's P = bf16(exp(x)) (simd::exp_bf16, one rounding) within one bf16 ulp of the
// correctly rounded value, rarely apart, and exact at 0 / -inf.
TEST(CpuAvx2, ExpBf16IsWithinOneUlpOfCorrectlyRounded) {
  if (!cpu::isa_supported(Isa::kAvx2)) GTEST_SKIP() << "this CPU cannot run avx2";
  constexpr std::int64_t kN = 1 << 20;
  std::vector<float> x(kN), p(kN);
  for (std::int64_t i = 0; i < kN; ++i) x[i] = static_cast<float>(-87.25 * static_cast<double>(i) / kN);
  cpu::exp_bf16_avx2(x.data(), p.data(), kN);
  std::int64_t differ = 0;
  for (std::int64_t i = 0; i < kN; ++i) {
    const float want = bf16::from_float(static_cast<float>(std::exp(static_cast<double>(x[i])))).to_float();
    ASSERT_EQ(bf16::from_float(p[i]).to_float(), p[i]) << "not a bf16 value at x = " << x[i];
    if (p[i] == want) continue;
    ++differ;
    ASSERT_LE(std::abs(p[i] - want), std::ldexp(1.0f, std::ilogb(want) - 7)) << "x = " << x[i];
  }
  EXPECT_LT(differ, kN / 1000);
  alignas(32) float special[8] = {0.0f, -0.0f, -std::numeric_limits<float>::infinity(), -87.4f, -100.0f, -1e-30f, -1e30f, -0.5f};
  alignas(32) float out[8];
  cpu::exp_bf16_avx2(special, out, 8);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 1.0f);
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_EQ(out[3], 0.0f);
  EXPECT_EQ(out[4], 0.0f);
  EXPECT_EQ(out[5], 1.0f);
  EXPECT_EQ(out[6], 0.0f);
}

TEST(CpuExecutor, IsTheAutoDefaultAndRunsThroughTheApi) {
  // auto = the fastest executor that runs here: cuda where a GPU is present, else cpu.
  const std::vector<std::string> names = executor_names();
  const bool gpu = std::find(names.begin(), names.end(), "cuda") != names.end();
  EXPECT_EQ(names.front(), gpu ? "cuda" : "cpu");
  if (gpu) GTEST_SKIP() << "auto resolves to cuda on this machine";
  const Case c = generate_case(small_spec("api", 3, 16, 1, 128, 64, {200, 0, 64}), 2);
  const auto out = testing::run_case(c, "auto");
  testing::expect_close_to_exact(c, out, exact(c));
  EXPECT_EQ(out, testing::run_case(c, "cpu"));
}

TEST(CpuExecutor, OriginSmallCase1AgreesWithExact) {
  const Case c = generate_case(find_case("SmallCase1"), 1);
  const double err = testing::expect_close_to_exact(c, testing::run_case(c, "cpu"), exact(c));
  EXPECT_LT(err, 5e-4);
}

TEST(SplitKv, ChunksCoverEveryTokenInOrderOnPageBoundaries) {
  const Case c = generate_case(small_spec("sp", 3, 32, 8, 128, 64, {32768, 0, 100}), 1);
  const Plan plan = make_plan(Shape{3, 32, 8, 128, c.num_blocks, 64, c.max_blocks_per_req}, 1.0f);
  const SplitKvPlan sp = plan_split_kv(plan, c.context_lens.data());
  ASSERT_EQ(sp.first.size(), static_cast<std::size_t>(plan.total_logical_blocks + 1));
  for (std::int64_t b = 0; b < plan.total_logical_blocks; ++b) {
    const std::int64_t len = c.context_lens[plan.logical_block(b).batch];
    std::int64_t next = 0;
    ASSERT_GE(sp.num_chunks(b), 1);
    for (std::int64_t i = sp.first[b]; i < sp.first[b + 1]; ++i) {
      EXPECT_EQ(sp.chunks[i].logical_block, b);
      EXPECT_EQ(sp.chunks[i].tokens.begin, next);
      next = sp.chunks[i].tokens.end;
      if (next < len) EXPECT_EQ(next % 64, 0) << "chunk boundaries fall on page boundaries";
    }
    EXPECT_EQ(next, len);
  }
  // The 32k request is split (few logical blocks); the 100-token one is not (too short).
  EXPECT_GT(sp.num_chunks(0), 4);
  EXPECT_EQ(sp.num_chunks(2 * plan.q_loop), 1);
}

TEST(SplitKv, LargeBatchIsNotSplit) {
  const Plan plan = make_plan(Shape{256, 16, 1, 128, 16384, 128, 256}, 1.0f);
  const std::vector<std::int32_t> lens(256, 8192);
  const SplitKvPlan sp = plan_split_kv(plan, lens.data());
  EXPECT_EQ(sp.chunks.size(), 256u);
}

// The avx512 flavour's P = bf16(exp(x)) (one rounding of a polynomial 2^f, kernel_avx512_parts.h)
// against the correctly rounded bf16 of exp in double: at most one bf16 ulp apart, rarely apart at
// all, exactly 1 at the running max, 0 below the fp32 range and at -inf.
TEST(CpuAvx512, ExpBf16IsWithinOneUlpOfCorrectlyRounded) {
  if (!cpu::isa_supported(cpu::Isa::kAvx512)) GTEST_SKIP() << "this CPU cannot run avx512";
  constexpr std::int64_t kN = 1 << 20;
  std::vector<float> x(kN), p(kN);
  for (std::int64_t i = 0; i < kN; ++i) x[i] = static_cast<float>(-87.25 * static_cast<double>(i) / kN);
  cpu::exp_bf16_avx512(x.data(), p.data(), kN);
  std::int64_t differ = 0;
  for (std::int64_t i = 0; i < kN; ++i) {
    const float want = bf16::from_float(static_cast<float>(std::exp(static_cast<double>(x[i])))).to_float();
    ASSERT_EQ(bf16::from_float(p[i]).to_float(), p[i]) << "not a bf16 value at x = " << x[i];
    if (p[i] == want) continue;
    ++differ;
    const float ulp = std::ldexp(1.0f, std::ilogb(want) - 7);
    ASSERT_LE(std::abs(p[i] - want), ulp) << "x = " << x[i] << ": " << p[i] << " vs " << want;
  }
  EXPECT_LT(differ, kN / 1000) << differ << " of " << kN << " differ by one ulp";
  alignas(64) float special[16] = {0.0f, -0.0f, -std::numeric_limits<float>::infinity(), -87.4f, -100.0f, -1e-30f,
                                   -1e30f, -0.5f, -1.0f, -2.0f, -10.0f, -30.0f, -60.0f, -80.0f, -87.0f, -0.25f};
  alignas(64) float out[16];
  cpu::exp_bf16_avx512(special, out, 16);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 1.0f);
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_EQ(out[3], 0.0f);
  EXPECT_EQ(out[4], 0.0f);
  EXPECT_EQ(out[5], 1.0f);
  EXPECT_EQ(out[6], 0.0f);
  for (int i = 7; i < 16; ++i)
    EXPECT_NEAR(out[i], std::exp(special[i]), std::exp(special[i]) * 0x1p-8) << "x = " << special[i];
}

}  // namespace
}  // namespace mixpa
