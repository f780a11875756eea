// merge_states: the log-sum-exp merge of two partial results (SPEC §6), row by row.
#include <cmath>
#include <limits>

#include "mixpa/paged_attention.h"

namespace mixpa {

void merge_states(const float* o_a, const float* lse_a, const float* o_b, const float* lse_b, float* o_out,
                  float* lse_out, std::int64_t rows, std::int64_t head_dim) {
  if (rows < 0 || head_dim < 0) throw Error("merge_states: rows and head_dim must be >= 0");
  if (rows > 0 && head_dim > 0 && (!o_a || !o_b || !o_out))
    throw Error("merge_states: o_a, o_b and o_out must not be null");
  if (rows > 0 && (!lse_a || !lse_b || !lse_out)) throw Error("merge_states: lse_a, lse_b and lse_out must not be null");
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (std::int64_t r = 0; r < rows; ++r) {
    const float a = lse_a[r], b = lse_b[r];
    if (std::isnan(a) || std::isnan(b) || a == std::numeric_limits<float>::infinity() ||
        b == std::numeric_limits<float>::infinity())
      throw Error("merge_states: lse of row " + std::to_string(r) + " is NaN or +inf; must be finite or -inf");
    const float* xa = o_a + r * head_dim;
    const float* xb = o_b + r * head_dim;
    float* y = o_out + r * head_dim;
    if (a == kNegInf && b == kNegInf) {
      for (std::int64_t d = 0; d < head_dim; ++d) y[d] = 0.0f;
      lse_out[r] = kNegInf;
      continue;
    }
    // In float64: e^(lse - max) never overflows, and the weights sum to 1 up to rounding.
    const double m = a > b ? a : b;
    const double ea = std::exp(static_cast<double>(a) - m), eb = std::exp(static_cast<double>(b) - m);
    const double sum = ea + eb;
    const double wa = ea / sum, wb = eb / sum;
    // A side with lse -inf has weight 0 and takes no part (its o may be anything, as 0 * NaN is NaN).
    for (std::int64_t d = 0; d < head_dim; ++d) {
      const double ya = wa > 0 ? wa * static_cast<double>(xa[d]) : 0.0;
      const double yb = wb > 0 ? wb * static_cast<double>(xb[d]) : 0.0;
      y[d] = static_cast<float>(ya + yb);
    }
    lse_out[r] = static_cast<float>(m + std::log(sum));
  }
}

}  // namespace mixpa
