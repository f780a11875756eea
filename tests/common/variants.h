// Attention variants (SPEC §6) on generated cases, for executor tests: a case with soft-cap,
// window, ALiBi slopes and sinks, run through any executor function and checked against exact
// float64 (out and lse).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/check.h"
#include "core/plan.h"
#include "core/problem.h"
#include "core/validate.h"
#include "reference/reference.h"

namespace mixpa::testing {

struct VariantSpec {
  std::string name;
  double softcap = 0;
  std::int64_t window_left = -1;
  bool alibi = false;
  // Sinks: none when !sinks; else sink_h = sink_base + U(-1, 1).
  bool sinks = false;
  float sink_base = 0.0f;
};

struct VariantCase {
  Case c;
  VariantSpec variant;
  std::vector<float> slopes, sinks;
  Options options;

  Inputs inputs() const {
    Inputs in = c.inputs();
    if (!slopes.empty()) in.alibi_slopes = TensorView::contiguous(slopes.data(), DType::kF32, {c.spec.num_heads});
    if (!sinks.empty()) in.sinks = TensorView::contiguous(sinks.data(), DType::kF32, {c.spec.num_heads});
    return in;
  }
  std::string name() const { return c.spec.name + "/" + variant.name; }
};

inline VariantCase make_variant_case(const CaseSpec& spec, std::uint64_t seed, const VariantSpec& v) {
  VariantCase vc{generate_case(spec, seed), v, {}, {}, {}};
  vc.options.scale = vc.c.scale;
  vc.options.softcap = v.softcap;
  vc.options.window_left = v.window_left;
  const std::int64_t heads = spec.num_heads;
  if (v.alibi)  // the usual geometric slopes 2^(-8 (h + 1) / heads)
    for (std::int64_t h = 0; h < heads; ++h)
      vc.slopes.push_back(static_cast<float>(std::exp2(-8.0 * static_cast<double>(h + 1) / static_cast<double>(heads))));
  if (v.sinks) {
    std::mt19937 gen(static_cast<std::uint32_t>(seed * 7 + 1));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (std::int64_t h = 0; h < heads; ++h) vc.sinks.push_back(v.sink_base + u(gen));
  }
  return vc;
}

struct RunOutput {
  std::vector<float> out, lse;
};

// An executor as the tests call it: fills Results for a validated problem and its plan.
using ExecutorFn = std::function<void(const Problem&, const Plan&, const Options&, const Results&)>;

inline RunOutput run_variant(const VariantCase& vc, const ExecutorFn& run, int threads = 0) {
  RunOutput r;
  OutputView view = output_view(r.out, vc.c);
  r.lse.assign(vc.c.spec.batch * vc.c.spec.num_heads, -12345.0f);
  view.lse = r.lse.data();
  Options options = vc.options;
  options.num_threads = threads;
  const Problem p = validate(vc.inputs(), options, view);
  const Plan plan = make_plan(p.shape, p.variant.scale);
  run(p, plan, options, Results{r.out.data(), r.lse.data()});
  return r;
}

struct ExactOutput {
  std::vector<double> out, lse;
};

inline ExactOutput exact_variant(const VariantCase& vc) {
  std::vector<float> dummy;
  const Problem p = validate(vc.inputs(), vc.options, output_view(dummy, vc.c));
  ExactOutput e;
  e.out.resize(vc.c.out_elements());
  e.lse.resize(vc.c.spec.batch * vc.c.spec.num_heads);
  exact_attention_f64(p, e.out.data(), {}, e.lse.data());
  return e;
}

// SPEC §6's checks of out and lse; returns the max abs error of out.
inline double expect_variant_close(const VariantCase& vc, const RunOutput& got, const ExactOutput& want) {
  const AccuracyReport r = compare_to_exact(got.out.data(), want.out.data(), static_cast<std::int64_t>(got.out.size()));
  EXPECT_TRUE(r.pass()) << vc.name() << ": " << r.failures << " out elements outside the bound, max abs error "
                        << r.max_abs_error << ", worst at " << r.worst_index << " (got "
                        << (r.worst_index >= 0 ? got.out[r.worst_index] : 0.0f) << ", exact "
                        << (r.worst_index >= 0 ? want.out[r.worst_index] : 0.0) << ")";
  const AccuracyReport l = compare_lse_to_exact(got.lse.data(), want.lse.data(), static_cast<std::int64_t>(got.lse.size()));
  EXPECT_TRUE(l.pass()) << vc.name() << ": " << l.failures << " lse elements outside the bound, worst at "
                        << l.worst_index << " (got " << (l.worst_index >= 0 ? got.lse[l.worst_index] : 0.0f)
                        << ", exact " << (l.worst_index >= 0 ? want.lse[l.worst_index] : 0.0) << ")";
  return r.max_abs_error;
}

// The variant list every cpu flavour runs: each alone and combined.
inline std::vector<VariantSpec> variant_kinds() {
  return {
      {"plain_lse"},
      {"softcap", 2.0},
      {"softcap_sharp", 0.7},
      {"alibi", 0, -1, true},
      {"window0", 0, 0},           // the query token alone
      {"window5", 0, 5},           // smaller than a page
      {"window40", 0, 40},         // crosses pages
      {"window_huge", 0, 100000},  // larger than every context
      {"sinks", 0, -1, false, true, 0.0f},
      {"sinks_above_all", 0, -1, false, true, 60.0f},
      {"all", 1.5, 37, true, true, 0.5f},
      {"all_split", 3.0, 4500, true, true, -1.0f},
  };
}

// Shapes for the variants: partial pages, context 0 and 1, GQA (narrow and wide tiles), and long
// contexts over few logical blocks (split-KV, window starting mid-chunk).
inline std::vector<CaseSpec> variant_shapes() {
  return {
      small_spec("v_edge_bs16", 5, 16, 1, 128, 16, {0, 1, 17, 100, 64}, 0.5),
      small_spec("v_gqa4_hd64", 2, 16, 4, 64, 32, {70, 33}, 0.3),
      small_spec("v_gqa2_hd256", 2, 8, 4, 256, 16, {40, 9}, 0.1),
      small_spec("v_q64", 1, 64, 1, 128, 64, {130}, 0.2),
      small_spec("v_split", 1, 16, 2, 128, 32, {6000}, 0.3),
  };
}

}  // namespace mixpa::testing
