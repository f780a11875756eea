// Test helpers shared by every suite: run an executor on a generated case and check it
// against exact float64 attention with SPEC §1's bound.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/cases.h"
#include "core/validate.h"
#include "reference/reference.h"

namespace mixpa {
// Parameterised tests print a case by its name.
inline void PrintTo(const CaseSpec& spec, std::ostream* os) { *os << spec.name; }
}  // namespace mixpa

namespace mixpa::testing {

inline OutputView output_view(std::vector<float>& out, const Case& c) {
  out.assign(c.out_elements(), -12345.0f);
  return c.output_view(out.data());
}

// The case's scale and variant (soft-cap, window) unless `options` sets its own.
inline Options case_options(const Case& c, Options options) {
  if (!options.scale) options.scale = c.scale;
  if (options.softcap == 0) options.softcap = c.softcap;
  if (options.window_left == -1) options.window_left = c.window_left;
  if (options.kv_layout == KvLayout::kNHD) options.kv_layout = c.kv_layout;
  if (!options.k_scale && c.spec.k_scale != 0) options.k_scale = c.spec.k_scale;
  if (!options.v_scale && c.spec.v_scale != 0) options.v_scale = c.spec.v_scale;
  return options;
}

// Runs `executor` on `c` and returns its output (and, when `lse` is given, the log-sum-exp).
inline std::vector<float> run_case(const Case& c, const std::string& executor, Options options = {},
                                   std::vector<float>* lse = nullptr) {
  options = case_options(c, options);
  options.executor = executor;
  std::vector<float> out;
  OutputView view = output_view(out, c);
  if (lse) {
    lse->assign(c.lse_elements(), -12345.0f);
    view.lse = lse->data();
  }
  run(c.inputs(), options, view);
  return out;
}

inline std::vector<double> exact(const Case& c, Options options = {}, std::vector<double>* lse = nullptr) {
  options = case_options(c, options);
  std::vector<float> dummy;
  const Problem p = validate(c.inputs(), options, output_view(dummy, c));
  std::vector<double> ref(c.out_elements());
  if (lse) lse->assign(c.lse_elements(), 0.0);
  exact_attention_f64(p, ref.data(), {}, lse ? lse->data() : nullptr);
  return ref;
}

// Asserts SPEC §6's lse check and returns the max abs error of the finite rows.
inline double expect_lse_close_to_exact(const Case& c, const std::vector<float>& lse, const std::vector<double>& ref) {
  const AccuracyReport r = compare_lse_to_exact(lse.data(), ref.data(), static_cast<std::int64_t>(lse.size()));
  EXPECT_TRUE(r.pass()) << c.spec.name << ": " << r.failures << " lse rows outside 4e-3 + 2e-3*|ref|, worst at row "
                        << r.worst_index << " (lse " << (r.worst_index >= 0 ? lse[r.worst_index] : 0.0f) << ", exact "
                        << (r.worst_index >= 0 ? ref[r.worst_index] : 0.0) << ")";
  return r.max_abs_error;
}

// Asserts SPEC §1's check and returns the max abs error.
inline double expect_close_to_exact(const Case& c, const std::vector<float>& out, const std::vector<double>& ref) {
  const AccuracyReport r = compare_to_exact(out.data(), ref.data(), static_cast<std::int64_t>(out.size()));
  EXPECT_TRUE(r.pass()) << c.spec.name << ": " << r.failures << " elements outside 2e-3 + 2e-3*|ref|, max abs error "
                        << r.max_abs_error << ", worst at flat index " << r.worst_index << " (out "
                        << (r.worst_index >= 0 ? out[r.worst_index] : 0.0f) << ", exact "
                        << (r.worst_index >= 0 ? ref[r.worst_index] : 0.0) << ")";
  return r.max_abs_error;
}

// A small random case: the fields most tests vary, with the rest defaulted.
inline CaseSpec small_spec(std::string name, std::int64_t batch, std::int64_t heads, std::int64_t kv_heads,
                           std::int64_t head_dim, std::int64_t block_size, std::vector<std::int32_t> lens,
                           double scale = 0.0884, std::int64_t num_blocks = 0) {
  CaseSpec s;
  s.name = std::move(name);
  s.batch = batch;
  s.num_heads = heads;
  s.num_kv_heads = kv_heads;
  s.head_dim = head_dim;
  s.block_size = block_size;
  s.context_lens = std::move(lens);
  std::int32_t max_len = 1;
  for (auto l : s.context_lens) max_len = std::max(max_len, l);
  s.max_model_len = max_len + 3 * block_size;  // spare table columns that must be ignored
  s.num_blocks = num_blocks;
  s.scale = scale;
  return s;
}

// The shapes every executor must get right (issue 3's list), as one table.
inline std::vector<CaseSpec> coverage_specs() {
  return {
      small_spec("lens_edge_bs16", 6, 16, 1, 128, 16, {0, 1, 15, 16, 17, 100}),
      small_spec("lens_edge_bs128", 5, 16, 1, 128, 128, {0, 1, 127, 128, 129}),
      small_spec("gqa_32_4", 3, 32, 4, 128, 32, {70, 1, 257}),
      small_spec("heads20", 3, 20, 1, 128, 64, {65, 200, 3}),
      small_spec("heads20_gqa5", 2, 20, 4, 64, 16, {33, 48}),
      small_spec("hd64", 4, 16, 2, 64, 16, {40, 0, 17, 90}),
      small_spec("hd256", 3, 8, 1, 256, 32, {31, 33, 64}),
      small_spec("q64", 2, 64, 1, 128, 64, {130, 5}),
      small_spec("q64_heads100", 2, 100, 1, 64, 16, {50, 17}),
      small_spec("gqa64", 2, 128, 2, 64, 32, {40, 97}),
      // Few pages for many requests: pages are shared between requests.
      small_spec("shared_pages", 8, 16, 1, 128, 16, {64, 64, 48, 33, 64, 1, 16, 60}, 0.0884, 5),
      small_spec("sharp_softmax", 3, 16, 1, 128, 32, {100, 257, 64}, 8.0),
      small_spec("bs128_long", 2, 16, 1, 128, 128, {1000, 777}),
  };
}

// ALiBi's geometric slopes for `heads` heads (BLOOM / MPT: 2^(-8 (h + 1) / heads)).
inline std::vector<float> alibi_slopes_for(std::int64_t heads) {
  std::vector<float> s(heads);
  for (std::int64_t h = 0; h < heads; ++h) s[h] = static_cast<float>(std::exp2(-8.0 * static_cast<double>(h + 1) / heads));
  return s;
}

// Sinks spread over [-2, 2], and one far above every score when `high` (out ~ 0 there).
inline std::vector<float> sinks_for(std::int64_t heads, bool high = false) {
  std::vector<float> s(heads);
  for (std::int64_t h = 0; h < heads; ++h) s[h] = static_cast<float>(-2.0 + 4.0 * static_cast<double>(h) / heads);
  if (high) s[0] = 60.0f;
  return s;
}

inline CaseSpec with_variant(CaseSpec s, double softcap, std::int64_t window_left, bool alibi, bool sinks,
                             bool high_sink = false) {
  s.softcap = softcap;
  s.window_left = window_left;
  if (alibi) s.alibi_slopes = alibi_slopes_for(s.num_heads);
  if (sinks) s.sinks = sinks_for(s.num_heads, high_sink);
  return s;
}

// The variants of SPEC §6 (q_len 1) every executor must get right, alone and combined: soft-cap,
// ALiBi, windows smaller than a page / crossing pages / larger than the context, sinks (one above
// every score), with GQA, partial and shared pages, context 0, and long contexts that split-KV.
inline std::vector<CaseSpec> variant_specs() {
  return {
      with_variant(small_spec("softcap", 4, 16, 1, 128, 16, {0, 1, 37, 100}, 1.0), 1.5, -1, false, false),
      with_variant(small_spec("alibi", 3, 16, 2, 64, 32, {70, 5, 200}), 0, -1, true, false),
      with_variant(small_spec("window0", 3, 16, 1, 128, 16, {1, 20, 50}), 0, 0, false, false),
      with_variant(small_spec("window_in_page", 3, 16, 1, 128, 64, {10, 100, 130}), 0, 5, false, false),
      with_variant(small_spec("window_cross", 4, 32, 4, 128, 16, {0, 40, 61, 200}), 0, 37, false, false),
      with_variant(small_spec("window_past_ctx", 2, 16, 1, 64, 16, {30, 9}), 0, 10000, false, false),
      with_variant(small_spec("sinks", 3, 16, 1, 128, 32, {0, 45, 100}), 0, -1, false, true, true),
      with_variant(small_spec("all_gqa", 3, 32, 8, 128, 16, {150, 0, 33}, 0.5), 2.0, 40, true, true),
      with_variant(small_spec("all_q64_shared", 4, 64, 1, 64, 32, {64, 90, 31, 64}, 0.125, 6), 3.0, 50, true, true),
      with_variant(small_spec("all_heads20", 2, 20, 4, 256, 32, {99, 65}), 5.0, 64, true, true),
      // Long contexts over few logical blocks: split-KV; the window skips most pages.
      with_variant(small_spec("split_window", 1, 16, 1, 128, 64, {9000}), 0, 4095, false, false),
      with_variant(small_spec("split_all", 2, 8, 1, 128, 32, {5000, 3000}, 0.2), 4.0, 2500, true, true),
  };
}

}  // namespace mixpa::testing
