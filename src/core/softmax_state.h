// The online-softmax state of one query row, shared by the reference, sim, cpu and the
// split-KV merge: m is the running maximum of scaled scores, l the sum of (bf16-rounded)
// exp(score - m), and o (held by the caller, head_dim floats) the unnormalised output.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace mixpa {

struct SoftmaxState {
  float m = -std::numeric_limits<float>::infinity();
  float l = 0.0f;

  bool empty() const { return l == 0.0f && m == -std::numeric_limits<float>::infinity(); }

  // Folds a partial (o_part, m_part, l_part) into (o, m, l), rescaling both to the larger max.
  // This is the vector core's UP step when m_part is the new running max (its factor is
  // exp(0) = 1 exactly), and the split-KV log-sum-exp merge in general.
  // An empty state takes the partial as is: no 0 * garbage, no exp(-inf - -inf) = NaN.
  // An empty partial (m_part = -inf, l_part = 0) leaves the state unchanged.
  void merge(float* o, const float* o_part, float m_part, float l_part, std::int64_t dim) {
    if (m_part == -std::numeric_limits<float>::infinity() && l_part == 0.0f) return;
    if (empty()) {
      for (std::int64_t d = 0; d < dim; ++d) o[d] = o_part[d];
      m = m_part;
      l = l_part;
      return;
    }
    const Factors f = fold(m_part, l_part);
    for (std::int64_t d = 0; d < dim; ++d) o[d] = f.alpha * o[d] + f.beta * o_part[d];
  }

  // The scalar half of merge() on a non-empty state: folds (m_part, l_part) into (m, l) and
  // returns the factors o must take (o = alpha * o + beta * o_part). The factor of the larger
  // max is exp(0) = 1 exactly, so it is not computed (one exp per merge, not two).
  struct Factors {
    float alpha, beta;
  };
  Factors fold(float m_part, float l_part) {
    const float m_new = m > m_part ? m : m_part;
    const float alpha = m_new == m ? 1.0f : std::exp(m - m_new);
    const float beta = m_new == m_part ? 1.0f : std::exp(m_part - m_new);
    l = alpha * l + beta * l_part;
    m = m_new;
    return {alpha, beta};
  }

  // 1 / (l + e^(sink - m)): what finalize() multiplies o by (a non-empty state only).
  float inverse_denominator(float sink = -std::numeric_limits<float>::infinity()) const {
    const float denom = sink == -std::numeric_limits<float>::infinity() ? l : l + std::exp(sink - m);
    return 1.0f / denom;
  }

  // out = o / (l + e^(sink - m)); an empty state (no visible token) yields zeros. The sink is
  // one more softmax term with no value row (SPEC §6); sink = -inf (none) adds an exact 0, so
  // the plain case is o / l bit for bit. A sink far above every score gives out ~ 0, not NaN.
  void finalize(const float* o, float* out, std::int64_t dim,
                float sink = -std::numeric_limits<float>::infinity()) const {
    if (empty()) {
      for (std::int64_t d = 0; d < dim; ++d) out[d] = 0.0f;
      return;
    }
    const float inv = inverse_denominator(sink);
    for (std::int64_t d = 0; d < dim; ++d) out[d] = o[d] * inv;
  }

  // log(sum exp(score)) of the rows folded so far; -inf when empty.
  float lse() const { return empty() ? m : m + std::log(l); }
};

}  // namespace mixpa
