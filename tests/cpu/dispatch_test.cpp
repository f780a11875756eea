// How `auto` picks the cpu kernel flavour (a pure function of measured rates, tested with
// injected ones so it is tested on every machine; the real calibration on whatever flavours
// this CPU runs), the thread pool's hand-out under spinning and sleeping workers, the reuse of
// plans across calls, and DecodePlan: bitwise mixpa::run, validated once, snapshots the tables.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "common/check.h"
#include "cpu/cpu_executor.h"
#include "cpu/dispatch.h"
#include "cpu/thread_pool.h"
#include "mixpa/decode_plan.h"

namespace mixpa {
namespace {

using cpu::FlavourRate;
using cpu::Isa;
using cpu::TileClass;
using testing::small_spec;

// Sets MIXPA_CPU_ISA for one scope and restores what was there.
class ScopedIsaEnv {
 public:
  explicit ScopedIsaEnv(const char* value) {
    if (const char* old = std::getenv("MIXPA_CPU_ISA")) old_ = old, had_ = true;
    if (value) setenv("MIXPA_CPU_ISA", value, 1);
    else unsetenv("MIXPA_CPU_ISA");
  }
  ~ScopedIsaEnv() {
    if (had_) setenv("MIXPA_CPU_ISA", old_.c_str(), 1);
    else unsetenv("MIXPA_CPU_ISA");
  }

 private:
  std::string old_;
  bool had_ = false;
};

// The Xeon: vdpbf16ps at half the fp32 FMA rate. cpuid order would take avx512bf16.
TEST(ChooseFlavour, TakesTheFastestMeasuredNotTheCpuidOrder) {
  const FlavourRate xeon[] = {{Isa::kAvx512Bf16, 171}, {Isa::kAvx512, 350}, {Isa::kAvx2, 180}};
  const cpu::FlavourChoice c = cpu::choose_flavour(xeon, TileClass::kWide);
  EXPECT_EQ(c.isa, Isa::kAvx512);
  EXPECT_EQ(c.reason, "avx512: 350 GFLOP/s on 16-row tiles > avx512bf16 171, avx2 180 (measured, KV read from memory)");
  ASSERT_EQ(c.rates.size(), 3u);

  const FlavourRate zen5[] = {{Isa::kAvx512Bf16, 1100}, {Isa::kAvx512, 350}, {Isa::kAvx2, 175}};
  EXPECT_EQ(cpu::choose_flavour(zen5, TileClass::kWide).isa, Isa::kAvx512Bf16);
  const FlavourRate spr[] = {{Isa::kAmx, 2400}, {Isa::kAvx512Bf16, 240}, {Isa::kAvx512, 330}};
  EXPECT_EQ(cpu::choose_flavour(spr, TileClass::kWide).isa, Isa::kAmx);
  const FlavourRate narrow[] = {{Isa::kAmx, 90}, {Isa::kAvx512Bf16, 60}, {Isa::kAvx512, 120}};
  const cpu::FlavourChoice n = cpu::choose_flavour(narrow, TileClass::kNarrow);
  EXPECT_EQ(n.isa, Isa::kAvx512);
  EXPECT_NE(n.reason.find("on 4-row tiles"), std::string::npos) << n.reason;
}

TEST(ChooseFlavour, IgnoresFailedMeasurementsAndBreaksTiesByOrder) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  const FlavourRate bad[] = {{Isa::kAmx, nan}, {Isa::kAvx512Bf16, inf}, {Isa::kAvx512, 0}, {Isa::kAvx2, -5},
                             {Isa::kScalar, 2.5}};
  const cpu::FlavourChoice c = cpu::choose_flavour(bad, TileClass::kWide);
  EXPECT_EQ(c.isa, Isa::kScalar);
  EXPECT_EQ(c.reason, "scalar: 2.5 GFLOP/s on 16-row tiles (measured, KV read from memory)");
  const FlavourRate tie[] = {{Isa::kAvx512, 300}, {Isa::kAvx512Bf16, 300}};
  EXPECT_EQ(cpu::choose_flavour(tie, TileClass::kWide).isa, Isa::kAvx512);
  EXPECT_EQ(cpu::choose_flavour({}, TileClass::kWide).isa, Isa::kScalar);
  EXPECT_EQ(cpu::tile_class_of_rows(8), TileClass::kNarrow);
  EXPECT_EQ(cpu::tile_class_of_rows(9), TileClass::kWide);
  EXPECT_EQ(cpu::tile_class_of_rows(16), TileClass::kWide);
  EXPECT_EQ(cpu::tile_class_of_rows(17), TileClass::kTall);
  EXPECT_EQ(cpu::tile_class_of_rows(64), TileClass::kTall);
}

// The real calibration, on every flavour this CPU runs: a finite positive rate each.
TEST(Calibrate, MeasuresEveryFlavourThisCpuRuns) {
  const std::vector<Isa> isas = cpu::supported_isas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.back(), Isa::kScalar);
  for (TileClass tile : cpu::kTileClasses) {
    const std::vector<FlavourRate> rates = cpu::calibrate(isas, tile, 1);
    ASSERT_EQ(rates.size(), isas.size());
    for (std::size_t i = 0; i < isas.size(); ++i) {
      EXPECT_EQ(rates[i].isa, isas[i]);
      EXPECT_TRUE(std::isfinite(rates[i].gflops) && rates[i].gflops > 0) << cpu::isa_name(isas[i]);
    }
    EXPECT_TRUE(cpu::isa_supported(cpu::choose_flavour(rates, tile).isa));
  }
}

TEST(AutoChoice, IsSupportedAndExplainsItself) {
  ScopedIsaEnv env(nullptr);
  std::vector<Isa> simd = cpu::supported_isas();
  std::erase(simd, Isa::kScalar);
  for (TileClass tile : cpu::kTileClasses) {
    const cpu::FlavourChoice& c = cpu::auto_choice(tile);
    EXPECT_TRUE(cpu::isa_supported(c.isa));
    EXPECT_EQ(c.reason.rfind(std::string(cpu::isa_name(c.isa)) + ": ", 0), 0u) << c.reason;
    if (simd.size() == 1) {
      EXPECT_EQ(c.isa, simd[0]);
      EXPECT_NE(c.reason.find("the only SIMD flavour"), std::string::npos) << c.reason;
    } else if (simd.size() > 1) {
      EXPECT_EQ(c.rates.size(), simd.size());
      EXPECT_NE(c.reason.find("(measured, KV read from memory"), std::string::npos) << c.reason;
    }
  }
  EXPECT_EQ(cpu::default_isa(), cpu::auto_choice(TileClass::kWide).isa);
}

TEST(AutoChoice, EnvironmentForcesAFlavour) {
  {
    ScopedIsaEnv env("scalar");
    EXPECT_EQ(cpu::auto_choice(TileClass::kWide).isa, Isa::kScalar);
    EXPECT_EQ(cpu::auto_choice(TileClass::kNarrow).reason, "scalar: forced by MIXPA_CPU_ISA");
  }
  {
    ScopedIsaEnv env("avx9000");
    EXPECT_THROW(cpu::auto_choice(TileClass::kWide), Error);
  }
  for (Isa isa : {Isa::kAmx, Isa::kAvx512Bf16, Isa::kAvx512, Isa::kAvx2}) {
    if (cpu::isa_supported(isa)) continue;
    ScopedIsaEnv env(std::string(cpu::isa_name(isa)).c_str());
    EXPECT_THROW(cpu::auto_choice(TileClass::kWide), Error) << cpu::isa_name(isa);
  }
}

// Every item exactly once, for any n and thread count, with workers that sleep at once and with
// workers that spin; also with calls from several threads at once (serialised by the pool).
TEST(ThreadPool, EveryItemExactlyOnceSpinningOrSleeping) {
  cpu::ThreadPool pool;
  for (std::int64_t spin_ns : {std::int64_t{0}, std::int64_t{200'000}}) {
    pool.set_spin_ns(spin_ns);
    for (int round = 0; round < 200; ++round) {
      const std::int64_t n = round % 37;
      const int threads = 1 + round % 5;
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
      pool.parallel_for(n, threads, [&](std::int64_t i) { hits[i].fetch_add(1); });
      for (std::int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n " << n << " item " << i;
    }
  }
  EXPECT_LE(pool.workers(), 4);
  std::atomic<std::int64_t> total{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t)
    callers.emplace_back([&] {
      for (int r = 0; r < 50; ++r) pool.parallel_for(20, 3, [&](std::int64_t i) { total.fetch_add(i + 1); });
    });
  for (auto& c : callers) c.join();
  EXPECT_EQ(total.load(), 3 * 50 * 210);
}

// Results written by workers are visible to the caller when parallel_for returns.
TEST(ThreadPool, WritesOfItemsAreVisibleAfterTheCall) {
  cpu::ThreadPool pool;
  pool.set_spin_ns(50'000);
  std::vector<std::int64_t> out(1000, -1);
  for (int round = 0; round < 50; ++round) {
    pool.parallel_for(1000, 3, [&](std::int64_t i) { out[i] = i * round; });
    for (std::int64_t i = 0; i < 1000; ++i) ASSERT_EQ(out[i], i * round);
  }
}

std::vector<float> run_cpu_case(const Case& c, int threads = 0) {
  Options o;
  o.num_threads = threads;
  return testing::run_case(c, "cpu", o);
}

// A repeated call reuses its plan; a call with other context lengths or shapes must not.
TEST(PlanReuse, ChangedContextLengthsOrShapesArePlannedAfresh) {
  const Case a = generate_case(small_spec("reuse_a", 3, 32, 8, 128, 64, {5000, 0, 300}), 3);
  Case b = generate_case(small_spec("reuse_a", 3, 32, 8, 128, 64, {5000, 0, 300}), 3);
  b.context_lens = {77, 4100, 0};  // same shapes and cache, other lengths
  const Case d = generate_case(small_spec("reuse_d", 2, 16, 1, 64, 16, {40, 33}), 4);
  const std::vector<float> first_a = run_cpu_case(a), first_b = run_cpu_case(b);
  testing::expect_close_to_exact(a, first_a, testing::exact(a));
  testing::expect_close_to_exact(b, first_b, testing::exact(b));
  const std::vector<float> out_d = run_cpu_case(d);
  testing::expect_close_to_exact(d, out_d, testing::exact(d));
  EXPECT_EQ(run_cpu_case(a), first_a);
  EXPECT_EQ(run_cpu_case(a), first_a);
  EXPECT_EQ(run_cpu_case(b), first_b);
  EXPECT_EQ(run_cpu_case(a, 1), first_a);
}

LayerInputs layer_of(const Case& c) {
  const Inputs in = c.inputs();
  return {in.query, in.key_cache, in.value_cache};
}

// Layers with their own query and KV cache, run through one plan: bitwise mixpa::run for each,
// on every flavour this CPU runs (forced for both the plan and run).
TEST(DecodePlan, BitwiseRunForEveryLayerAndFlavour) {
  for (const CaseSpec& spec : {small_spec("plan_gqa", 2, 32, 8, 128, 64, {5000, 97}),
                               small_spec("plan_mha16", 3, 16, 1, 128, 128, {300, 0, 129}),
                               small_spec("plan_wide64", 1, 64, 1, 64, 32, {200})}) {
    std::vector<Case> layers;
    for (std::uint64_t seed = 1; seed <= 3; ++seed) layers.push_back(generate_case(spec, seed));
    // One block table and context lengths for the step: every layer uses layer 0's.
    for (Case& l : layers) l.block_table = layers[0].block_table, l.context_lens = layers[0].context_lens;
    for (Isa isa : cpu::supported_isas()) {
      ScopedIsaEnv env(std::string(cpu::isa_name(isa)).c_str());
      Options o;
      o.executor = "cpu";
      o.scale = spec.scale;
      DecodePlan plan(layers[0].inputs(), o);
      EXPECT_EQ(plan.executor(), "cpu");
      EXPECT_EQ(plan.kernels(), cpu::isa_name(isa));
      EXPECT_EQ(plan.kernels_reason(), std::string(cpu::isa_name(isa)) + ": forced by MIXPA_CPU_ISA");
      for (int pass = 0; pass < 2; ++pass)
        for (const Case& l : layers) {
          std::vector<float> got;
          plan.run(layer_of(l), testing::output_view(got, l));
          EXPECT_EQ(got, testing::run_case(l, "cpu", o)) << spec.name << " " << cpu::isa_name(isa);
        }
    }
  }
}

TEST(DecodePlan, OtherExecutorsAndAutoMatchRun) {
  const Case c = generate_case(small_spec("plan_ref", 2, 16, 4, 64, 16, {50, 3}), 9);
  for (const char* executor : {"auto", "reference", "sim"}) {
    Options o;
    o.executor = executor;
    o.scale = c.scale;
    DecodePlan plan(c.inputs(), o);
    std::vector<float> got;
    plan.run(layer_of(c), testing::output_view(got, c));
    EXPECT_EQ(got, testing::run_case(c, executor, o)) << executor;
    EXPECT_EQ(plan.kernels().empty(), plan.executor() != "cpu") << executor;
  }
}

// The plan keeps its own block table and context lengths: the caller's may change afterwards.
TEST(DecodePlan, SnapshotsBlockTableAndContextLengths) {
  Case c = generate_case(small_spec("plan_snap", 2, 16, 1, 128, 32, {100, 64}), 2);
  Options o;
  o.executor = "cpu";
  o.scale = c.scale;
  DecodePlan plan(c.inputs(), o);
  const std::vector<float> before = testing::run_case(c, "cpu", o);
  for (auto& p : c.block_table) p = 1 << 30;  // out of range: would be invalid input now
  c.context_lens = {1 << 30, -1};
  std::vector<float> got;
  plan.run(layer_of(c), testing::output_view(got, c));
  EXPECT_EQ(got, before);
}

TEST(DecodePlan, LayerOfAnotherShapeIsRejectedAndOutUntouched) {
  const Case c = generate_case(small_spec("plan_a", 2, 16, 1, 128, 32, {100, 64}), 2);
  const Case other = generate_case(small_spec("plan_b", 2, 16, 1, 128, 32, {100, 64}, 0.0884, 99), 2);
  const Case narrow = generate_case(small_spec("plan_c", 2, 16, 1, 64, 32, {100, 64}), 2);
  Options o;
  o.scale = c.scale;
  DecodePlan plan(c.inputs(), o);
  std::vector<float> out;
  const OutputView view = testing::output_view(out, c);
  LayerInputs bad = layer_of(c);
  bad.key_cache = other.inputs().key_cache;  // 99 pages instead of the plan's
  try {
    plan.run(bad, view);
    FAIL() << "a key_cache of another shape was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("key_cache"), std::string::npos) << e.what();
  }
  EXPECT_THROW(plan.run(layer_of(narrow), view), Error);
  LayerInputs missing = layer_of(c);
  missing.value_cache = TensorView{};
  EXPECT_THROW(plan.run(missing, view), Error);
  OutputView wrong = view;
  wrong.shape[1] = 8;
  EXPECT_THROW(plan.run(layer_of(c), wrong), Error);
  for (float v : out) ASSERT_EQ(v, -12345.0f);
  Case invalid = generate_case(small_spec("plan_bad", 1, 16, 1, 128, 32, {10}), 2);
  invalid.block_table[0] = -1;
  EXPECT_THROW(DecodePlan(invalid.inputs(), o), Error);
}

// Sinks (the plan's, or a layer's own) and lse through a plan: bitwise mixpa::run.
TEST(DecodePlan, SinksAndLseMatchRun) {
  const Case c = generate_case(small_spec("plan_sinks", 3, 16, 4, 64, 32, {300, 0, 41}), 6);
  std::vector<float> plan_sinks(16), layer_sinks(16);
  for (int h = 0; h < 16; ++h) plan_sinks[h] = 0.25f * h - 1.0f, layer_sinks[h] = 2.0f - 0.5f * h;
  Inputs in = c.inputs();
  in.sinks = TensorView::contiguous(plan_sinks.data(), DType::kF32, {16});
  Options o;
  o.scale = c.scale;
  DecodePlan plan(in, o);
  for (const std::vector<float>* sinks : {&plan_sinks, &layer_sinks}) {
    Inputs want_in = c.inputs();
    want_in.sinks = TensorView::contiguous(sinks->data(), DType::kF32, {16});
    std::vector<float> want, got, want_lse(3 * 16), got_lse(3 * 16);
    OutputView wv = testing::output_view(want, c), gv = testing::output_view(got, c);
    wv.lse = want_lse.data();
    gv.lse = got_lse.data();
    run(want_in, o, wv);
    LayerInputs layer = layer_of(c);
    if (sinks == &layer_sinks) layer.sinks = want_in.sinks;
    plan.run(layer, gv);
    EXPECT_EQ(got, want);
    EXPECT_EQ(got_lse, want_lse);
    EXPECT_EQ(got_lse[16], -std::numeric_limits<float>::infinity());  // request 1 has context 0
  }
  std::vector<float> bad(8, 0.0f), out;
  LayerInputs layer = layer_of(c);
  layer.sinks = TensorView::contiguous(bad.data(), DType::kF32, {8});
  EXPECT_THROW(plan.run(layer, testing::output_view(out, c)), Error);
}

// Every context length 0: zeros, through run() and through a plan.
TEST(DecodePlan, ContextLengthsAllZeroGiveZeros) {
  const Case c = generate_case(small_spec("plan_zero", 4, 16, 1, 128, 128, {0}), 2);
  Options o;
  o.scale = c.scale;
  DecodePlan plan(c.inputs(), o);
  std::vector<float> got;
  plan.run(layer_of(c), testing::output_view(got, c));
  for (float v : got) ASSERT_EQ(v, 0.0f);
  EXPECT_EQ(got, testing::run_case(c, "cpu", o));
}

}  // namespace
}  // namespace mixpa
