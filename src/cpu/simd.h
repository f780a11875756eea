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

#include <cstdint>

#include "core/problem.h"
#include "core/variant.h"

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

}  // namespace
}  // namespace mixpa::cpu::simd
