// The attention variant of one call (SPEC §6), validated once by validate() and read by every
// executor at three fixed points:
//   the score epilogue   x = scale * (q . k);  soft-cap x = c * tanh(x / c);  ALiBi x += a_h * (t - pos)
//   the visible tokens   a row at position pos sees [lo, pos], lo = max(0, pos - window_left)
//   the finalize         out = o / (l + e^(sink_h - m)),  lse = m + log(l) (the sink not included)
// The plain case (no soft-cap, no ALiBi, no window, no sinks) is bit for bit §1's operation:
// every hook is skipped or adds an exact zero.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace mixpa {

// Which score-epilogue steps a call needs, as a compile-time set for the SIMD paths: an
// executor instantiates its softmax step per feature set, so the plain case pays nothing.
enum ScoreFeatures : unsigned {
  kScorePlain = 0,
  kScoreSoftcap = 1u << 0,
  kScoreAlibi = 1u << 1,
};

struct Variant {
  float scale = 1.0f;
  float softcap = 0.0f;                 // > 0: soft-cap after the scale; 0 = none
  std::int64_t window_left = -1;        // >= 0: the query sees itself and window_left tokens before
  const float* alibi_slopes = nullptr;  // [num_heads] or nullptr
  const float* sinks = nullptr;         // [num_heads] (natural-log units) or nullptr

  bool has_softcap() const { return softcap > 0.0f; }
  bool has_alibi() const { return alibi_slopes != nullptr; }
  bool has_window() const { return window_left >= 0; }
  bool has_sinks() const { return sinks != nullptr; }
  unsigned score_features() const {
    return (has_softcap() ? kScoreSoftcap : 0u) | (has_alibi() ? kScoreAlibi : 0u);
  }

  // The logit of a raw dot product for query head `head` at position `pos` and token `t`,
  // in the order SPEC §6 gives (scale, then soft-cap, then ALiBi). The reference and sim
  // call exactly this, so they agree bit for bit; the SIMD paths follow the same order.
  float logit(float dot, std::int64_t head, std::int64_t t, std::int64_t pos) const {
    float x = dot * scale;
    if (has_softcap()) x = softcap * std::tanh(x / softcap);
    if (has_alibi()) x += alibi_slopes[head] * static_cast<float>(t - pos);
    return x;
  }
  // The same in float64, for exact attention.
  double logit_f64(double dot, std::int64_t head, std::int64_t t, std::int64_t pos) const {
    double x = dot * static_cast<double>(scale);
    if (has_softcap()) {
      const double c = softcap;
      x = c * std::tanh(x / c);
    }
    if (has_alibi()) x += static_cast<double>(alibi_slopes[head]) * static_cast<double>(t - pos);
    return x;
  }

  // First visible token of a row at position `pos` (the last visible one is pos itself).
  std::int64_t first_visible(std::int64_t pos) const {
    return has_window() ? std::max<std::int64_t>(0, pos - window_left) : 0;
  }

  // The sink logit of a head; -inf (a term e^-inf = 0) without sinks.
  float sink(std::int64_t head) const {
    return has_sinks() ? sinks[head] : -std::numeric_limits<float>::infinity();
  }
};

// The tokens [begin, end) the query rows of a request of `context_len` tokens see, together:
// row p of q_len sits at pos = context_len - q_len + p and sees [first_visible(pos), pos], so
// the union is [first_visible(context_len - q_len), context_len). Empty for context 0.
struct TokenRange {
  std::int64_t begin = 0;
  std::int64_t end = 0;
  std::int64_t size() const { return end - begin; }
  bool empty() const { return end <= begin; }
};

inline TokenRange visible_tokens(const Variant& v, std::int64_t context_len, std::int64_t q_len = 1) {
  if (context_len <= 0) return {};
  return {v.first_visible(std::max<std::int64_t>(0, context_len - q_len)), context_len};
}

}  // namespace mixpa
