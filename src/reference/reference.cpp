// Reference executor: the origin's kernel numerics written as plainly as possible.
// For each row and each page i: s = q.k (fp32), scaled, masked past the context;
// M_i = max(M_{i-1}, rowmax); p = bf16(exp(s - M_i)); l_i = sum p; oi = p.V; UP merges.
#include "reference/reference.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "core/parallel.h"
#include "core/softmax_state.h"

namespace mixpa {

void run_reference(const Problem& pr, const Plan& /*plan*/, const Options& /*options*/, float* out) {
  const Shape& s = pr.shape;
  const std::int64_t dim = s.head_dim;
  std::vector<float> scores(s.block_size), p(s.block_size), o(dim), oi(dim);
  for (std::int64_t b = 0; b < s.batch; ++b) {
    const std::int64_t len = pr.context_len(b);
    for (std::int64_t h = 0; h < s.num_heads; ++h) {
      const std::int64_t g = h / s.group();
      const bf16* q = pr.query_row(b, h);
      SoftmaxState state;
      for (std::int64_t i = 0; i < pr.num_pages(b); ++i) {
        const std::int64_t page = pr.page(b, i);
        const std::int64_t valid = std::min(s.block_size, len - i * s.block_size);
        // SF: scores of the valid rows; columns past the context are masked out (never loaded).
        float row_max = -std::numeric_limits<float>::infinity();
        for (std::int64_t j = 0; j < valid; ++j) {
          const bf16* k = pr.key_row(page, j, g);
          float acc = 0.0f;
          for (std::int64_t d = 0; d < dim; ++d) acc += q[d].to_float() * k[d].to_float();
          scores[j] = acc * pr.scale;
          row_max = std::max(row_max, scores[j]);
        }
        const float m_i = std::max(state.m, row_max);
        float l_i = 0.0f;
        for (std::int64_t j = 0; j < valid; ++j) {
          p[j] = round_to_bf16(std::exp(scores[j] - m_i));
          l_i += p[j];
        }
        // PV on the rounded probabilities; masked rows take no part (not even 0 * NaN).
        std::fill(oi.begin(), oi.end(), 0.0f);
        for (std::int64_t j = 0; j < valid; ++j) {
          const bf16* v = pr.value_row(page, j, g);
          for (std::int64_t d = 0; d < dim; ++d) oi[d] += p[j] * v[d].to_float();
        }
        // UP
        state.merge(o.data(), oi.data(), m_i, l_i, dim);
      }
      state.finalize(o.data(), out + (b * s.num_heads + h) * dim, dim);
    }
  }
}

void exact_attention_f64(const Problem& pr, double* out, const std::function<void(double)>& progress) {
  const Shape& s = pr.shape;
  const std::int64_t dim = s.head_dim;
  std::atomic<std::int64_t> done{0};
  // Requests are independent; each is computed by one thread in a fixed order, so the
  // result does not depend on the thread count.
  parallel_chunks(s.batch, s.batch, hardware_threads(), [&](std::int64_t b0, std::int64_t b1) {
  std::vector<double> scores, acc(dim);
  for (std::int64_t b = b0; b < b1; ++b) {
    const std::int64_t len = pr.context_len(b);
    scores.resize(len);
    for (std::int64_t h = 0; h < s.num_heads; ++h) {
      const std::int64_t g = h / s.group();
      const bf16* q = pr.query_row(b, h);
      double* o = out + (b * s.num_heads + h) * dim;
      if (len == 0) {
        std::fill(o, o + dim, 0.0);
        continue;
      }
      double mx = -std::numeric_limits<double>::infinity();
      for (std::int64_t t = 0; t < len; ++t) {
        const bf16* k = pr.key_row(pr.page(b, t / s.block_size), t % s.block_size, g);
        double dot = 0;
        for (std::int64_t d = 0; d < dim; ++d)
          dot += static_cast<double>(q[d].to_float()) * static_cast<double>(k[d].to_float());
        scores[t] = dot * static_cast<double>(pr.scale);
        mx = std::max(mx, scores[t]);
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      double denom = 0;
      for (std::int64_t t = 0; t < len; ++t) {
        const double w = std::exp(scores[t] - mx);
        denom += w;
        const bf16* v = pr.value_row(pr.page(b, t / s.block_size), t % s.block_size, g);
        for (std::int64_t d = 0; d < dim; ++d) acc[d] += w * static_cast<double>(v[d].to_float());
      }
      for (std::int64_t d = 0; d < dim; ++d) o[d] = acc[d] / denom;
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

}  // namespace mixpa
