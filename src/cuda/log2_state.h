// The online-softmax state of one query row in the kernel's log2 units (m = running max of
// scale * log2(e) * q.k, l = sum of the rounded exp2(x - m)): SoftmaxState of core/softmax_state.h
// with exp2 in place of exp, so that the kernel never multiplies by log2(e) per element.
// Host + device: the kernel's cross-warp and split-KV merges and the CPU emulation test
// combine states through exactly these functions.
#pragma once

#include <cmath>

#include "cuda/tile_layout.h"

namespace mixpa::cuda {

struct Log2State {
  float m = -INFINITY;  // -inf: no visible token folded in yet
  float l = 0.0f;

  // The factor that rescales this state's (o, l) to a common maximum m_all >= m; 0 when the
  // combined state is empty (m_all = -inf), so no (-inf) - (-inf) = NaN and no 0 * garbage.
  MIXPA_HOST_DEVICE float weight(float m_all) const { return m_all == -INFINITY ? 0.0f : exp2f(m - m_all); }
};

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
