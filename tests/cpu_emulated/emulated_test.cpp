// The avx512 and avx512bf16 kernel flavours compiled against SIMDe (MIXPA_CPU_EMULATED, see
// src/cpu/x86_intrinsics.h) so their exact code runs on any x86-64, this AVX2-only CI machine
// included: against exact float64 (plain and every variant, split-KV included), group kernel vs
// chunk kernel bitwise, thread-count determinism, and bitwise against the outputs the kernels gave
// before the chunk-driver restructure (hashes recorded then, under the same emulation; native
// avx2 and scalar are pinned the same way). Shapes are small: emulation is ~10-50x slower.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "common/check.h"
#include "common/variants.h"
#include "cpu/chunk_kernel.h"
#include "cpu/cpu_executor.h"

namespace mixpa {
namespace {

using testing::small_spec;

struct Flavour {
  const char* name;
  cpu::ChunkKernel chunk;
  cpu::GroupKernel group;
};

std::vector<Flavour> emulated_flavours() {
  return {{"avx512", &cpu::emulated::attend_chunk_avx512, &cpu::emulated::attend_group_avx512},
          {"avx512_nogroup", &cpu::emulated::attend_chunk_avx512, nullptr},
          {"avx512bf16", &cpu::emulated::attend_chunk_avx512bf16, nullptr}};
}

testing::ExecutorFn executor(const Flavour& f) {
  return [f](const Problem& p, const Plan& plan, const Options& o, const Results& r) {
    cpu::run_with_kernels(p, plan, o, r, f.chunk, f.group);
  };
}

std::uint64_t fnv(const std::vector<float>& v) {
  std::uint64_t h = 1469598103934665603ull;
  for (float x : v) {
    std::uint32_t u;
    std::memcpy(&u, &x, 4);
    for (int b = 0; b < 4; ++b) h = (h ^ ((u >> (8 * b)) & 0xffu)) * 1099511628211ull;
  }
  return h;
}

// The plain cases whose outputs are pinned bitwise (wide and narrow tiles, partial pages,
// split-KV, GQA groups that take the avx512 group kernel).
std::vector<CaseSpec> pinned_specs() {
  return {small_spec("pin_edges", 4, 16, 1, 128, 16, {0, 1, 17, 70}),
          small_spec("pin_q64_hd64", 1, 64, 1, 64, 64, {130}),
          small_spec("pin_gqa4", 1, 32, 8, 128, 32, {100}),
          small_spec("pin_gqa2_hd256", 1, 4, 2, 256, 16, {33}),
          small_spec("pin_rows20", 1, 20, 1, 128, 32, {50}),
          small_spec("pin_split", 1, 16, 2, 64, 32, {5000})};
}

testing::RunOutput run_plain(const CaseSpec& spec, const testing::ExecutorFn& run, int threads = 0) {
  return testing::run_variant(testing::make_variant_case(spec, 3, {"plain"}), run, threads);
}

// Hashes of out for pinned_specs(), recorded before the restructure.
struct Pinned {
  const char* flavour;
  std::vector<std::uint64_t> hashes;
};

TEST(CpuEmulated, PrintsAndMatchesPinnedOutputs) {
  std::vector<std::pair<std::string, testing::ExecutorFn>> runs;
  for (const Flavour& f : emulated_flavours()) runs.emplace_back(f.name, executor(f));
  for (cpu::Isa isa : {cpu::Isa::kAvx2, cpu::Isa::kScalar})
    if (cpu::isa_supported(isa))
      runs.emplace_back(std::string(cpu::isa_name(isa)),
                        [isa](const Problem& p, const Plan& plan, const Options& o, const Results& r) {
                          cpu::run_with_isa(p, plan, o, r, isa);
                        });
  const std::vector<Pinned> pinned = {
#include "pinned_hashes.inc"
  };
  for (const auto& [name, run] : runs) {
    std::vector<std::uint64_t> got;
    for (const CaseSpec& spec : pinned_specs()) got.push_back(fnv(run_plain(spec, run).out));
    std::string line = "{\"" + name + "\", {";
    for (std::uint64_t h : got) line += std::to_string(h) + "ull, ";
    std::cout << line << "}},\n";
    for (const Pinned& p : pinned)
      if (name == p.flavour) EXPECT_EQ(got, p.hashes) << name << " changed its bits";
  }
}

// Hashes of out and lse of every variant kind over variant_shapes() (one per kind: all shapes
// hashed in turn), recorded on the kernels before the group and bf16 kernels moved onto the
// chunk driver: every variant path (soft-cap, ALiBi, windows starting mid-page, sinks, split-KV)
// must keep its bits through a restructure, not only the plain cases.
TEST(CpuEmulated, PrintsAndMatchesPinnedVariantOutputs) {
  std::vector<std::pair<std::string, testing::ExecutorFn>> runs;
  for (const Flavour& f : emulated_flavours()) runs.emplace_back(f.name, executor(f));
  for (cpu::Isa isa : {cpu::Isa::kAvx2, cpu::Isa::kScalar})
    if (cpu::isa_supported(isa))
      runs.emplace_back(std::string(cpu::isa_name(isa)),
                        [isa](const Problem& p, const Plan& plan, const Options& o, const Results& r) {
                          cpu::run_with_isa(p, plan, o, r, isa);
                        });
  const std::vector<Pinned> pinned = {
#include "pinned_variant_hashes.inc"
  };
  for (const auto& [name, run] : runs) {
    std::vector<std::uint64_t> got;
    for (const testing::VariantSpec& v : testing::variant_kinds()) {
      std::vector<float> all;
      for (const CaseSpec& spec : testing::variant_shapes()) {
        const testing::RunOutput r = testing::run_variant(testing::make_variant_case(spec, 5, v), run);
        all.insert(all.end(), r.out.begin(), r.out.end());
        all.insert(all.end(), r.lse.begin(), r.lse.end());
      }
      got.push_back(fnv(all));
    }
    std::string line = "{\"" + name + "\", {";
    for (std::uint64_t h : got) line += std::to_string(h) + "ull, ";
    std::cout << line << "}},\n";
    bool found = false;
    for (const Pinned& p : pinned)
      if (name == p.flavour) {
        found = true;
        EXPECT_EQ(got, p.hashes) << name << " changed the bits of a variant";
      }
    EXPECT_TRUE(found) << name << " has no pinned variant hashes";
  }
}

class Emulated : public ::testing::TestWithParam<Flavour> {};

TEST_P(Emulated, PlainShapesAgreeWithExact) {
  for (const CaseSpec& spec : pinned_specs()) {
    const auto vc = testing::make_variant_case(spec, 11, {"plain"});
    testing::expect_variant_close(vc, testing::run_variant(vc, executor(GetParam())), testing::exact_variant(vc));
  }
}

TEST_P(Emulated, VariantsAgreeWithExact) {
  for (const CaseSpec& spec : testing::variant_shapes())
    for (const testing::VariantSpec& v : testing::variant_kinds()) {
      const auto vc = testing::make_variant_case(spec, 5, v);
      testing::expect_variant_close(vc, testing::run_variant(vc, executor(GetParam())), testing::exact_variant(vc));
    }
}

TEST_P(Emulated, BitwiseIdenticalForAnyThreadCount) {
  const auto vc = testing::make_variant_case(small_spec("det", 2, 32, 8, 64, 32, {4200, 300}), 5, {"all", 1.5, 3000, true, true});
  const auto one = testing::run_variant(vc, executor(GetParam()), 1);
  for (int threads : {2, 3}) {
    const auto many = testing::run_variant(vc, executor(GetParam()), threads);
    EXPECT_EQ(one.out, many.out) << threads;
    EXPECT_EQ(one.lse, many.lse) << threads;
  }
}

INSTANTIATE_TEST_SUITE_P(Flavours, Emulated, ::testing::ValuesIn(emulated_flavours()),
                         [](const auto& info) { return std::string(info.param.name); });

// The SIMD layer's tanh in zmm (simd.h), as tests/cpu checks the ymm one natively.
TEST(CpuEmulated, TanhIsAccurateToOneMillionth) {
  constexpr std::int64_t kN = 1 << 16;
  std::vector<float> x(kN), y(kN);
  for (std::int64_t i = 0; i < kN; ++i) x[i] = static_cast<float>(-30.0 + 60.0 * static_cast<double>(i) / kN);
  x[0] = 1e-30f;
  x[1] = 50.0f;
  cpu::emulated::tanh_avx512(x.data(), y.data(), kN);
  for (std::int64_t i = 0; i < kN; ++i) {
    const double want = std::tanh(static_cast<double>(x[i]));
    ASSERT_LE(std::abs(y[i] - want), 1e-6 * std::abs(want)) << "x = " << x[i];
  }
  EXPECT_EQ(y[1], 1.0f);
}

// The avx512 flavour's one-rounding exp, as tests/cpu checks it natively.
TEST(CpuEmulated, ExpBf16IsWithinOneUlpOfCorrectlyRounded) {
  constexpr std::int64_t kN = 1 << 16;
  std::vector<float> x(kN), p(kN);
  for (std::int64_t i = 0; i < kN; ++i) x[i] = static_cast<float>(-87.25 * static_cast<double>(i) / kN);
  cpu::emulated::exp_bf16_avx512(x.data(), p.data(), kN);
  std::int64_t differ = 0;
  for (std::int64_t i = 0; i < kN; ++i) {
    const float want = bf16::from_float(static_cast<float>(std::exp(static_cast<double>(x[i])))).to_float();
    ASSERT_EQ(bf16::from_float(p[i]).to_float(), p[i]) << "not a bf16 value at x = " << x[i];
    if (p[i] == want) continue;
    ++differ;
    ASSERT_LE(std::abs(p[i] - want), std::ldexp(1.0f, std::ilogb(want) - 7)) << "x = " << x[i];
  }
  EXPECT_LT(differ, kN / 1000);
}

}  // namespace
}  // namespace mixpa
