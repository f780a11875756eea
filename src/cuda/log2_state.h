// The online-softmax state of one query row in the kernel's log2 units (m = running max of
// scale * log2(e) * q.k, l = sum of the rounded exp2(x - m)): SoftmaxState of core/softmax_state.h
// with exp2 in place of exp, so that the kernel never multiplies by log2(e) per element.
// Host + device: the kernel's cross-warp and split-KV merges and the CPU emulation test
// combine states through exactly these functions.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/kernel_params.h"
#include "cuda/tile_layout.h"

namespace mixpa::cuda {

struct Log2State {
  float m = -INFINITY;  // -inf: no visible token folded in yet
  float l = 0.0f;

  // The factor that rescales this state's (o, l) to a common maximum m_all >= m; 0 when the
  // combined state is empty (m_all = -inf), so no (-inf) - (-inf) = NaN and no 0 * garbage.
  MIXPA_HOST_DEVICE float weight(float m_all) const { return m_all == -INFINITY ? 0.0f : exp2f(m - m_all); }

  MIXPA_HOST_DEVICE bool empty() const { return m == -INFINITY; }
  // SoftmaxState::finalize: out = o / (l + e^(sink - m)); sink2 = log2(e) * sink, -inf = none
  // (the plain case divides by l bit for bit). The caller writes zeros for an empty state.
  MIXPA_HOST_DEVICE float denominator(float sink2) const { return sink2 == -INFINITY ? l : l + exp2f(sink2 - m); }
  // log(sum e^x) over the folded tokens, natural log (SPEC §6: the sink not included).
  MIXPA_HOST_DEVICE float lse() const { return empty() ? -INFINITY : (m + log2f(l)) * 0.69314718055994531f; }
};

inline constexpr float kLog2e = 1.4426950408889634f;

// The score epilogue of SPEC §6 in log2 units, in its order: scale, soft-cap, ALiBi.
// kSoftcap: x = c tanh(scale dot / c); kAlibi: x += slope (t - pos); the result times log2(e),
// folded into the constants (softcap_log2 = c log2 e, slope2 = slope log2 e). The kernel
// instantiates its softmax step per feature pair, so the plain case is dot * scale_log2.
template <bool kSoftcap, bool kAlibi>
MIXPA_HOST_DEVICE float logit_log2(const KernelParams& p, float dot, float slope2, int t_minus_pos) {
  float x = kSoftcap ? p.softcap_log2 * tanhf(dot * p.softcap_pre) : dot * p.scale_log2;
  if (kAlibi) x += slope2 * static_cast<float>(t_minus_pos);
  return x;
}

// Combines K states m[k * stride], l[k * stride] in the order k = 0..K-1 (deterministic):
// m_all = max m_k, l_all = sum weight_k * l_k. An all-empty set gives the empty state.
template <int K>
MIXPA_HOST_DEVICE Log2State merge_log2_states(const float* m, const float* l, int stride) {
  Log2State all;
  for (int k = 0; k < K; ++k) all.m = fmaxf(all.m, m[k * stride]);
  float sum = 0.0f;
  if (all.m != -INFINITY)
    for (int k = 0; k < K; ++k) sum += Log2State{m[k * stride], 0.0f}.weight(all.m) * l[k * stride];
  all.l = sum;
  return all;
}

}  // namespace mixpa::cuda
