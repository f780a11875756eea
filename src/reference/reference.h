// The golden executors: the origin's per-page online softmax, and exact float64 attention.
#pragma once

#include <functional>
#include <vector>

#include "core/plan.h"
#include "core/problem.h"
#include "mixpa/paged_attention.h"

namespace mixpa {

// Executor "reference": SPEC §3's numerics page by page, one row at a time, fp32,
// single-threaded: running max, P rounded to bf16, l = row sum of rounded P.
void run_reference(const Problem& problem, const Plan& plan, const Options& options, const Results& out);

// Exact attention in float64 over the dequantised inputs (k_scale * K, v_scale * V; two-pass
// softmax), every variant, dtype and q_len of SPEC §6 included. out: the query's shape
// [batch, (q_len,) heads, head_dim]; lse (optional): [batch, (q_len,) heads], -inf for no token.
// Multi-threaded over requests; `progress` (may be empty) is called with the fraction done,
// possibly from several threads at once.
void exact_attention_f64(const Problem& problem, double* out, const std::function<void(double)>& progress = {},
                         double* lse = nullptr);

// SPEC §1's pass/fail check |out - ref| <= atol + rtol * |ref|, with its figures.
struct AccuracyReport {
  double max_abs_error = 0;
  double max_rel_excess = 0;       // max of |out-ref| - (atol + rtol*|ref|); <= 0 means pass
  std::int64_t worst_index = -1;   // flat index of the largest excess
  std::int64_t failures = 0;       // elements outside the bound (NaN counts as a failure)
  bool pass() const { return failures == 0; }
};
inline constexpr double kCheckAtol = 2e-3;
inline constexpr double kCheckRtol = 2e-3;
AccuracyReport compare_to_exact(const float* out, const double* exact, std::int64_t n, double atol = kCheckAtol,
                                double rtol = kCheckRtol);

// SPEC §6's check of lse: |lse - ref| <= 4e-3 + 2e-3·|ref| where ref is finite, exactly -inf
// where ref is -inf (P rounded to bf16 moves the sum by up to 2^-9 relative).
inline constexpr double kLseAtol = 4e-3;
inline constexpr double kLseRtol = 2e-3;
AccuracyReport compare_lse_to_exact(const float* lse, const double* exact, std::int64_t n);

}  // namespace mixpa
