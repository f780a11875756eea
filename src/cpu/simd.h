// The cpu kernels' small SIMD layer, in Highway's shape: a descriptor type D names a vector
// target (its vector type V, mask type M and lane count), the ops are static functions of D, and
// the math written once on top of them takes the descriptor: exp, exp rounded to bf16, tanh and
// the score epilogue (scale -> soft-cap -> ALiBi, SPEC §6) exist here only, for every target.
//
// Descriptors live next to their target's intrinsics: simd_avx2.h (Avx2: 8 x f32) and
// simd_avx512.h (Avx512: 16 x f32). A kernel includes one of those (never simd.h directly) after
// its `#pragma GCC target`: a template takes the target of the place it is defined, not of its
// instantiation. Internal linkage keeps each copy in its own translation unit.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "core/problem.h"
#include "core/variant.h"
#include "cpu/chunk_kernel.h"

namespace mixpa::cpu::simd {
// Internal linkage: these are compiled under each flavour's target pragma, and must never be
// merged with another translation unit's copy (which may be built for another target).
namespace {

// exp(x) for x <= 0 (arguments are score - running max): Cody-Waite reduction x = n ln2 + r,
// degree-6 Taylor polynomial (about 1 ulp), 2^n applied exactly. Below -87.3 (and -inf) it is 0.
// (The clamp only changes lanes the mask zeroes: it keeps n in the exponent range.)
template <class D>
inline typename D::V exp_neg(typename D::V x) {
  const typename D::M live = D::ge(x, D::set(-87.3f));
  x = D::max(x, D::set(-87.3f));
  const typename D::V n = D::round_nearest(D::mul(x, D::set(1.44269504f)));
  typename D::V r = D::fnmadd(n, D::set(0.693145752f), x);
  r = D::fnmadd(n, D::set(1.42860677e-6f), r);
  typename D::V p = D::set(1.0f / 720);
  p = D::fmadd(p, r, D::set(1.0f / 120));
  p = D::fmadd(p, r, D::set(1.0f / 24));
  p = D::fmadd(p, r, D::set(1.0f / 6));
  p = D::fmadd(p, r, D::set(0.5f));
  p = D::fmadd(p, r, D::set(1.0f));
  p = D::fmadd(p, r, D::set(1.0f));
  return D::scale_pow2(live, p, n);
}

// P = bf16(exp(x)) for x <= 0, kept in fp32, with one rounding: exp(x) = 2^n * 2^f, n = floor(x
// log2 e), f in [0, 1), so 2^f lies in [1, 2), where bf16 keeps 7 fraction bits: rounding 2^f to a
// multiple of 2^-7 (nearest even) *is* the bf16 rounding, and the scaling by 2^n is exact. 2^f is
// a degree-5 polynomial with p(0) = 1 exactly (relative error 3.3e-7, 2^-21.6, against the bf16
// half-ulp 2^-9: a tie is decided differently from the correctly rounded exp only within that
// distance, i.e. for ~0.02% of P, by one bf16 ulp, and never for P = 1 at the running max).
// Below -87.3 (and -inf) P is 0.
template <class D>
inline typename D::V exp_bf16(typename D::V x) {
  const typename D::M live = D::ge(x, D::set(-87.3f));
  x = D::max(x, D::set(-87.3f));
  const typename D::V t = D::mul(x, D::set(1.44269504f));
  const typename D::V n = D::round_down(t);
  const typename D::V f = D::sub(t, n);
  typename D::V p = D::set(1.852192566730082e-3f);
  p = D::fmadd(p, f, D::set(9.037778712809086e-3f));
  p = D::fmadd(p, f, D::set(5.579707399010658e-2f));
  p = D::fmadd(p, f, D::set(2.4015982449054718e-1f));
  p = D::fmadd(p, f, D::set(6.931524872779846e-1f));
  p = D::fmadd(p, f, D::set(1.0f));
  return D::scale_pow2(live, D::round_to_7_bits(p), n);
}

// P = fp16(exp(x)) for x <= 0, kept in fp32 (SPEC §6: P rounded to fp16 when the cache is F16):
// exp_neg's fp32 value rounded to the nearest fp16 (ties to even, subnormal halves kept, as
// round_to_f16). Needs D::round_to_f16 (avx2: F16C's vcvtps2ph / vcvtph2ps).
template <class D>
inline typename D::V exp_f16(typename D::V x) {
  return D::round_to_f16(exp_neg<D>(x));
}

// tanh(y), relative error ~2e-7 (tested against double): |y| < 0.625 an odd polynomial
// (Cephes tanhf's), else (1 - e) / (1 + e) with e = exp(-2|y|) <= 0.287 (no cancellation), the
// sign copied back. Saturates to +-1 (e = 0) for |y| > 43.6.
template <class D>
inline typename D::V tanh(typename D::V y) {
  using V = typename D::V;
  const V a = D::abs(y);
  const V z = D::mul(y, y);
  V p = D::set(-5.70498872745e-3f);
  p = D::fmadd(p, z, D::set(2.06390887954e-2f));
  p = D::fmadd(p, z, D::set(-5.37397155531e-2f));
  p = D::fmadd(p, z, D::set(1.33314422036e-1f));
  p = D::fmadd(p, z, D::set(-3.33332819422e-1f));
  const V small = D::fmadd(D::mul(p, z), y, y);
  const V e = exp_neg<D>(D::mul(a, D::set(-2.0f)));
  const V large = D::copy_sign(D::div(D::sub(D::set(1.0f), e), D::add(D::set(1.0f), e)), y);
  return D::select(D::lt(a, D::set(0.625f)), small, large);
}

// Per-chunk constants of the score epilogue: soft-cap c, and ALiBi's position of the query
// (pos = context_len - 1, token t adds slope_h * (t - pos)).
struct ScoreParams {
  float softcap = 0;
  std::int64_t pos = 0;
  const float* slopes = nullptr;  // [num_heads] or nullptr
};

inline ScoreParams score_params(const Problem& pr, std::int64_t batch) {
  return {pr.variant.softcap, pr.context_len(batch) - 1, pr.variant.alibi_slopes};
}

// The score epilogue's constants in vectors: the soft-cap c (used when `softcap`).
template <class D>
struct Epilogue {
  typename D::V cap;
  bool softcap = false;
};

template <class D>
inline Epilogue<D> epilogue_of(const ScoreParams& sp) {
  return {D::set(sp.softcap), sp.softcap > 0.0f};
}

// The score epilogue of SPEC §6 on scaled scores x (x = scale * q.k already), in the order
// Variant::logit uses: soft-cap x = c * tanh(x / c), then ALiBi x += slope * delta, where
// delta = float(t - pos) of each lane's token and slope each lane's row slope (0 without ALiBi:
// an exact no-op). F = kScorePlain compiles to nothing; otherwise the soft-cap is one uniform,
// predicted branch per call, so the kernels need two instantiations (plain, variant), not four.
template <unsigned F, class D>
inline typename D::V score_epilogue(typename D::V x, const Epilogue<D>& e, typename D::V slope, typename D::V delta) {
  if constexpr ((F & kScoreSoftcap) != 0)
    if (e.softcap) x = D::mul(e.cap, tanh<D>(D::div(x, e.cap)));
  if constexpr ((F & kScoreAlibi) != 0) x = D::add(x, D::mul(slope, delta));
  return x;
}

// The instantiation for a call's variant: kScorePlain, or kScoreVariant (soft-cap and ALiBi
// compiled in, each a no-op when the call lacks it).
inline constexpr unsigned kScoreVariant = kScoreSoftcap | kScoreAlibi;

// Runs fn.template operator()<F>() with F the call's instantiation as a compile-time value.
template <class Fn>
inline void with_score_features(unsigned features, Fn&& fn) {
  if (features == kScorePlain) return fn.template operator()<kScorePlain>();
  return fn.template operator()<kScoreVariant>();
}

// The one FMA step of both fp32 matmuls with rows in lanes (avx2 and avx512 wide tiles):
// acc[a][v] += x[v] * broadcast(b[a * kStride]) for a < A, v < RV. QK: x = Q at one position, b
// = that position of A tokens' K rows; PV: x = P of one token, b = A positions of its V row.
// Fully unrolled: the A x RV chains stay in registers.
template <class D, int RV, int A, int kStride>
inline void fma_step(typename D::V (&acc)[A][RV], const float* x, const float* b) {
  typename D::V xv[RV];
#pragma GCC unroll 4
  for (int v = 0; v < RV; ++v) xv[v] = D::load(x + v * D::kLanes);
#pragma GCC unroll 16
  for (int a = 0; a < A; ++a) {
    const typename D::V bc = D::broadcast(b + a * kStride);
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) acc[a][v] = D::fmadd(xv[v], bc, acc[a][v]);
  }
}

template <class D, int RV, int A>
inline void zero(typename D::V (&acc)[A][RV]) {
#pragma GCC unroll 16
  for (int a = 0; a < A; ++a)
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) acc[a][v] = D::zero();
}

// fma_step with the stride at run time (head_dims without a template instantiation).
template <class D, int RV, int A>
inline void fma_step_strided(typename D::V (&acc)[A][RV], const float* x, const float* b, std::int64_t stride) {
  typename D::V xv[RV];
#pragma GCC unroll 4
  for (int v = 0; v < RV; ++v) xv[v] = D::load(x + v * D::kLanes);
#pragma GCC unroll 16
  for (int a = 0; a < A; ++a) {
    const typename D::V bc = D::broadcast(b + a * stride);
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) acc[a][v] = D::fmadd(xv[v], bc, acc[a][v]);
  }
}

// UP, the one update of the online softmax (SPEC §3): O = alpha * O + oi, L = alpha * L + l_i.
template <class D>
inline typename D::V up(typename D::V alpha, typename D::V old, typename D::V add) {
  return D::fmadd(alpha, old, add);
}

// The running state of a head tile whose rows live in SIMD lanes (RV vectors of D::kLanes rows;
// the avx2, avx512, avx512bf16 and amx wide tiles): m, l and alpha are plain vectors, so SF and
// UP need no horizontal step. Also the score epilogue's constants per row.
template <class D, int RV>
struct LaneRows {
  using V = typename D::V;
  static constexpr int kLanes = D::kLanes, W = RV * kLanes;
  alignas(64) float m[W], l[W];  // running max / sum of the rounded P, per row
  V alpha[RV], l_i[RV];          // this page's rescale exp(M_old - M_new) and sum of P
  V slope[RV];                   // ALiBi slope per row (0 without, and past the tile's rows)
  Epilogue<D> epi;
  std::int64_t pos = 0;  // the query's position (ALiBi)

  // State init: m = -inf, l = 0, the epilogue's constants for query heads [head_begin, + rows).
  void init(const Problem& pr, std::int64_t batch, std::int64_t head_begin, int rows) {
    for (int r = 0; r < W; ++r) {
      m[r] = -__builtin_inff();
      l[r] = 0.0f;
    }
    const ScoreParams sp = score_params(pr, batch);
    alignas(64) float sl[W];
    for (int r = 0; r < W; ++r) sl[r] = sp.slopes != nullptr && r < rows ? sp.slopes[head_begin + r] : 0.0f;
    for (int v = 0; v < RV; ++v) slope[v] = D::load(sl + v * kLanes);
    epi = epilogue_of<D>(sp);
    pos = sp.pos;
  }

  // The same for tiles whose rows are (new token, head) pairs (SPEC §6 q_len 1..16): row r is
  // token tokens[r] of query head heads[r], at position pos - back_r (back_r = q_len - 1 -
  // tokens[r]; pos is the last row's, context_len - 1).
  V back[RV];
  void init_rows(const Problem& pr, std::int64_t batch, const std::int64_t* heads, const std::int64_t* tokens,
                 int rows) {
    for (int r = 0; r < W; ++r) {
      m[r] = -__builtin_inff();
      l[r] = 0.0f;
    }
    const ScoreParams sp = score_params(pr, batch);
    alignas(64) float sl[W], bk[W];
    for (int r = 0; r < W; ++r) {
      sl[r] = sp.slopes != nullptr && r < rows ? sp.slopes[heads[r]] : 0.0f;
      bk[r] = r < rows ? static_cast<float>(pr.shape.q_len - 1 - tokens[r]) : 0.0f;
    }
    for (int v = 0; v < RV; ++v) {
      slope[v] = D::load(sl + v * kLanes);
      back[v] = D::load(bk + v * kLanes);
    }
    epi = epilogue_of<D>(sp);
    pos = sp.pos;
  }

  // The logits of rows [v * kLanes, + kLanes) for one token from their raw dot products.
  template <unsigned F>
  V logit(V dot, V scale, int v, std::int64_t token) const {
    return score_epilogue<F, D>(D::mul(dot, scale), epi, slope[v], D::set(static_cast<float>(token - pos)));
  }
  // The same after init_rows: ALiBi's t - pos_r = (t - pos) + back_r per row (q_len 1: + 0, exact).
  template <unsigned F>
  V logit_rows(V dot, V scale, int v, std::int64_t token) const {
    return score_epilogue<F, D>(D::mul(dot, scale), epi, slope[v],
                                D::add(D::set(static_cast<float>(token - pos)), back[v]));
  }

  // Vector SF on scores s[j * W + lane] of tokens j in [begin, end): running max, P =
  // bf16(exp(s - M)) kept in fp32 in place (exp_bf16: one rounding; kF16P: fp16, exp_f16, for
  // F16 caches), l_i = sum of the rounded P, alpha = exp(M_old - M_new). A row whose scores are
  // all -inf so far (tokens it does not see) keeps M = -inf and gets P = 0, alpha = 0 (the exps
  // of its NaN differences are masked to 0).
  template <bool kF16P = false>
  static V p_of(V x) {
    if constexpr (kF16P) return exp_f16<D>(x);
    else return exp_bf16<D>(x);
  }
  template <bool kF16P = false>
  void softmax(float* s, std::int64_t begin, std::int64_t end) {
    for (int v = 0; v < RV; ++v) {
      const V m_old = D::loadu(m + v * kLanes);
      V mx4[4] = {m_old, m_old, m_old, m_old};  // four chains: vmaxps latency, not throughput
      std::int64_t j = begin;
      for (; j + 4 <= end; j += 4)
        for (int k = 0; k < 4; ++k) mx4[k] = D::max(mx4[k], D::load(s + (j + k) * W + v * kLanes));
      for (; j < end; ++j) mx4[0] = D::max(mx4[0], D::load(s + j * W + v * kLanes));
      const V mx = D::max(D::max(mx4[0], mx4[1]), D::max(mx4[2], mx4[3]));
      alpha[v] = exp_neg<D>(D::sub(m_old, mx));
      V sum0 = D::zero(), sum1 = sum0;
      j = begin;
      for (; j + 2 <= end; j += 2) {  // two independent exp chains
        float* s0 = s + j * W + v * kLanes;
        const V p0 = p_of<kF16P>(D::sub(D::load(s0), mx));
        const V p1 = p_of<kF16P>(D::sub(D::load(s0 + W), mx));
        D::store(s0, p0);
        D::store(s0 + W, p1);
        sum0 = D::add(sum0, p0);
        sum1 = D::add(sum1, p1);
      }
      if (j < end) {
        float* s0 = s + j * W + v * kLanes;
        const V p0 = p_of<kF16P>(D::sub(D::load(s0), mx));
        D::store(s0, p0);
        sum0 = D::add(sum0, p0);
      }
      D::storeu(m + v * kLanes, mx);
      l_i[v] = D::add(sum0, sum1);
    }
  }

  // UP of the softmax state after the page's PV: L = alpha * L + l_i.
  void update_l() {
    for (int v = 0; v < RV; ++v) D::storeu(l + v * kLanes, up<D>(alpha[v], D::loadu(l + v * kLanes), l_i[v]));
  }
};

// Each row's causal limit and window in a tile whose rows are (new token, head) pairs (SPEC §6
// q_len 1..16; job_row), as int32 lanes relative to base = n - q_len (the rows sit at 0..q_len-1):
// its position and its first visible token (padding rows see everything); and the tokens every
// row of the tile sees, [all_lo, all_hi]. A block of tokens inside that range needs no mask
// (q_len 1 without a window: every block of the chunk).
template <class D, int RV>
struct RowLimits {
  using V = typename D::V;
  using VI = typename D::VI;
  static constexpr int kLanes = D::kLanes, W = RV * kLanes;
  VI pos[RV], lo[RV];
  std::int64_t base = 0;
  std::int64_t all_lo = -(std::int64_t{1} << 40), all_hi = std::int64_t{1} << 40;

  // Walks the tile's W rows: q_row(r, &row) for the job's rows (row = job_row(job, r)),
  // q_row(r, nullptr) for the padding rows; then the softmax state of the rows (init_rows).
  template <class QRow>
  void init(const ChunkJob& job, LaneRows<D, RV>& st, QRow&& q_row) {
    const Problem& pr = *job.problem;
    base = pr.context_len(job.batch) - pr.shape.q_len;
    alignas(64) std::int32_t rp[W], rl[W];
    std::int64_t heads[W], tokens[W];
    for (int r = 0; r < W; ++r) {
      if (r < job.rows) {
        const JobRow jr = job_row(job, r);
        heads[r] = jr.head;
        tokens[r] = jr.token;
        q_row(r, &jr);
        rp[r] = static_cast<std::int32_t>(jr.pos - base);
        rl[r] = static_cast<std::int32_t>(jr.first_visible - base);
        all_lo = std::max<std::int64_t>(all_lo, rl[r]);
        all_hi = std::min<std::int64_t>(all_hi, rp[r]);
      } else {
        heads[r] = tokens[r] = 0;
        q_row(r, nullptr);
        rp[r] = std::numeric_limits<std::int32_t>::max();
        rl[r] = std::numeric_limits<std::int32_t>::min();
      }
    }
    for (int v = 0; v < RV; ++v) {
      pos[v] = D::load_i32(rp + v * kLanes);
      lo[v] = D::load_i32(rl + v * kLanes);
    }
    st.init_rows(pr, job.batch, heads, tokens, job.rows);
  }

  // Whether the relative tokens [first, last] hold one that some row does not see.
  bool masked(std::int64_t first, std::int64_t last) const { return first < all_lo || last > all_hi; }
  // x with -inf in the lanes of rows [v * kLanes, + kLanes) that do not see relative token t.
  V hide(V x, int v, std::int32_t t) const {
    const VI tv = D::set_i32(t);
    return D::select(D::mask_or(D::gt_i32(tv, pos[v]), D::gt_i32(lo[v], tv)), D::set(-__builtin_inff()), x);
  }
};

}  // namespace
}  // namespace mixpa::cpu::simd
