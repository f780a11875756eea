// Reference executor: the origin's kernel numerics written as plainly as possible.
// For each row (request b, new token t, head h) and each page of its visible tokens:
// x = logit(k_scale * q.k) (scale, soft-cap, ALiBi), M_i = max(M_{i-1}, rowmax);
// p = bf16(exp(x - M_i)) (fp16 for an F16 cache); l_i = sum p; oi = p.V; UP merges;
// finally out = v_scale * O / (L + e^(sink - M)) and lse = M + log(L).
#include "reference/reference.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "core/element.h"
#include "core/page_walk.h"
#include "core/parallel.h"
#include "core/softmax_state.h"

namespace mixpa {

void run_reference(const Problem& pr, const Plan& /*plan*/, const Options& options, const Results& res) {
  const Shape& s = pr.shape;
  const Variant& var = pr.variant;
  const std::int64_t dim = s.head_dim;
  std::vector<float> scores(s.block_size), p(s.block_size), o(dim), oi(dim), q(dim), kv(dim);
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t t = 0; t < s.q_len; ++t) {
      const TokenRange seen = pr.row_visible(b, t);
      const std::int64_t pos = pr.position(b, t);
      for (std::int64_t h = 0; h < s.num_heads; ++h) {
        if (options.cancelled && options.cancelled()) throw Interrupted();
        const std::int64_t g = h / s.group();
        query_floats(pr, b, t, h, q.data());
        SoftmaxState state;
        for (PageWalk w(pr, b, seen); w.is_valid(); ++w) {
          const PageSpan& pg = *w;
          // SF: logits of the visible rows; rows outside the span are masked out (never loaded).
          float row_max = -std::numeric_limits<float>::infinity();
          for (std::int64_t j = pg.begin; j < pg.end; ++j) {
            key_floats(pr, pg.page, j, g, kv.data());
            float acc = 0.0f;
            for (std::int64_t d = 0; d < dim; ++d) acc += q[d] * kv[d];
            scores[j] = var.logit(acc * pr.k_scale, h, pg.token0 + j, pos);
            row_max = std::max(row_max, scores[j]);
          }
          const float m_i = std::max(state.m, row_max);
          float l_i = 0.0f;
          for (std::int64_t j = pg.begin; j < pg.end; ++j) {
            p[j] = round_p(pr.kv_dtype, std::exp(scores[j] - m_i));
            l_i += p[j];
          }
          // PV on the rounded probabilities; masked rows take no part (not even 0 * NaN).
          std::fill(oi.begin(), oi.end(), 0.0f);
          for (std::int64_t j = pg.begin; j < pg.end; ++j) {
            value_floats(pr, pg.page, j, g, kv.data());
            for (std::int64_t d = 0; d < dim; ++d) oi[d] += p[j] * kv[d];
          }
          // UP
          state.merge(o.data(), oi.data(), m_i, l_i, dim);
        }
        const std::int64_t row = pr.out_row(b, t, h);
        float* dst = res.out + row * dim;
        state.finalize(o.data(), dst, dim, var.sink(h));
        if (pr.v_scale != 1.0f)
          for (std::int64_t d = 0; d < dim; ++d) dst[d] *= pr.v_scale;
        if (res.lse) res.lse[row] = state.lse();
      }
    }
  }
}

void exact_attention_f64(const Problem& pr, double* out, const std::function<void(double)>& progress, double* lse) {
  const Shape& s = pr.shape;
  const Variant& var = pr.variant;
  const std::int64_t dim = s.head_dim;
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  std::atomic<std::int64_t> done{0};
  // Requests are independent; each is computed by one thread in a fixed order, so the
  // result does not depend on the thread count.
  parallel_chunks(s.batch, s.batch, hardware_threads(), [&](std::int64_t b0, std::int64_t b1) {
  std::vector<double> scores, acc(dim);
  std::vector<float> q(dim), kv(dim);
  const double k_scale = pr.k_scale, v_scale = pr.v_scale;
  for (std::int64_t b = b0; b < b1; ++b) {
    for (std::int64_t t = 0; t < s.q_len; ++t) {
      const TokenRange seen = pr.row_visible(b, t);
      const std::int64_t pos = pr.position(b, t);
      scores.resize(std::max<std::int64_t>(seen.size(), 0));
      for (std::int64_t h = 0; h < s.num_heads; ++h) {
        const std::int64_t g = h / s.group();
        const std::int64_t row = pr.out_row(b, t, h);
        double* o = out + row * dim;
        if (seen.empty()) {
          std::fill(o, o + dim, 0.0);
          if (lse) lse[row] = kNegInf;
          continue;
        }
        query_floats(pr, b, t, h, q.data());
        double mx = kNegInf;
        for (std::int64_t tok = seen.begin; tok < seen.end; ++tok) {
          key_floats(pr, pr.page(b, tok / s.block_size), tok % s.block_size, g, kv.data());
          double dot = 0;
          for (std::int64_t d = 0; d < dim; ++d) dot += static_cast<double>(q[d]) * (k_scale * kv[d]);
          double& x = scores[tok - seen.begin];
          x = var.logit_f64(dot, h, tok, pos);
          mx = std::max(mx, x);
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        double denom = 0;
        for (std::int64_t tok = seen.begin; tok < seen.end; ++tok) {
          const double w = std::exp(scores[tok - seen.begin] - mx);
          denom += w;
          value_floats(pr, pr.page(b, tok / s.block_size), tok % s.block_size, g, kv.data());
          for (std::int64_t d = 0; d < dim; ++d) acc[d] += w * (v_scale * kv[d]);
        }
        if (lse) lse[row] = mx + std::log(denom);
        // The sink joins the denominator only (SPEC §6): e^(s_h - mx), with mx the max of the logits.
        const double with_sink = var.has_sinks() ? denom + std::exp(static_cast<double>(var.sinks[h]) - mx) : denom;
        for (std::int64_t d = 0; d < dim; ++d) o[d] = acc[d] / with_sink;
      }
    }
    const std::int64_t finished = ++done;
    if (progress) progress(static_cast<double>(finished) / static_cast<double>(s.batch));
  }
  });
}

AccuracyReport compare_to_exact(const float* out, const double* exact, std::int64_t n, double atol, double rtol) {
  AccuracyReport r;
  r.max_rel_excess = -std::numeric_limits<double>::infinity();
  for (std::int64_t i = 0; i < n; ++i) {
    const double err = std::abs(static_cast<double>(out[i]) - exact[i]);
    const double excess = err - (atol + rtol * std::abs(exact[i]));
    if (!(err <= r.max_abs_error)) r.max_abs_error = std::isnan(err) ? std::numeric_limits<double>::infinity() : err;
    if (std::isnan(excess) || excess > 0) ++r.failures;
    if (std::isnan(excess) || excess > r.max_rel_excess) {
      r.max_rel_excess = std::isnan(excess) ? std::numeric_limits<double>::infinity() : excess;
      r.worst_index = i;
    }
  }
  if (n == 0) r.max_rel_excess = 0;
  return r;
}

AccuracyReport compare_lse_to_exact(const float* lse, const double* exact, std::int64_t n) {
  AccuracyReport r;
  r.max_rel_excess = n == 0 ? 0 : -std::numeric_limits<double>::infinity();
  for (std::int64_t i = 0; i < n; ++i) {
    double excess;
    if (std::isinf(exact[i]) && exact[i] < 0) {
      // exact -inf only (a row that sees no token)
      excess = (lse[i] == -std::numeric_limits<float>::infinity()) ? -kLseAtol : std::numeric_limits<double>::infinity();
    } else {
      const double err = std::abs(static_cast<double>(lse[i]) - exact[i]);
      excess = err - (kLseAtol + kLseRtol * std::abs(exact[i]));
      if (!(err <= r.max_abs_error)) r.max_abs_error = std::isnan(err) ? std::numeric_limits<double>::infinity() : err;
    }
    if (std::isnan(excess) || excess > 0) ++r.failures;
    if (std::isnan(excess) || excess > r.max_rel_excess) {
      r.max_rel_excess = std::isnan(excess) ? std::numeric_limits<double>::infinity() : excess;
      r.worst_index = i;
    }
  }
  return r;
}

}  // namespace mixpa
