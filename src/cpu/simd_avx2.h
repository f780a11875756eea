// The Avx2 descriptor of the SIMD layer (simd.h): 8 x f32 in a ymm, masks as all-ones lanes.
// Include only after `#pragma GCC target("avx2,fma,f16c")`; everything here is inline.
#pragma once

#include <immintrin.h>

#include "cpu/simd.h"

namespace mixpa::cpu::simd {
// Internal linkage: these are compiled under each flavour's target pragma, and must never be
// merged with another translation unit's copy (which may be built for another target).
namespace {

struct Avx2 {
  using V = __m256;
  using M = __m256;  // lanes of all ones or all zeros
  using VI = __m256i;  // 8 x int32
  static constexpr int kLanes = 8;

  static V set(float x) { return _mm256_set1_ps(x); }
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_load_ps(p); }
  static V loadu(const float* p) { return _mm256_loadu_ps(p); }
  static V broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static void store(float* p, V x) { _mm256_store_ps(p, x); }
  static void storeu(float* p, V x) { _mm256_storeu_ps(p, x); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static V copy_sign(V mag, V sign) {
    return _mm256_or_ps(mag, _mm256_and_ps(sign, _mm256_set1_ps(-0.0f)));
  }
  static M ge(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static M lt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static V select(M m, V yes, V no) { return _mm256_blendv_ps(no, yes, m); }
  static VI load_i32(const std::int32_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }
  static VI set_i32(std::int32_t x) { return _mm256_set1_epi32(x); }
  static M gt_i32(VI a, VI b) { return _mm256_castsi256_ps(_mm256_cmpgt_epi32(a, b)); }
  static M mask_or(M a, M b) { return _mm256_or_ps(a, b); }
  static V round_nearest(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V round_down(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  // x rounded to a multiple of 2^-7, nearest even (both scalings are exact).
  static V round_to_7_bits(V x) { return _mm256_mul_ps(round_nearest(_mm256_mul_ps(x, set(128.0f))), set(1.0f / 128)); }
  // x rounded to the nearest fp16 and back (F16C; include under a target with f16c).
  static V round_to_f16(V x) { return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); }
  // p * 2^n for integral n in [-126, 127] in live lanes, 0 elsewhere (2^n built in the exponent field).
  static V scale_pow2(M live, V p, V n) {
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
  }
};

}  // namespace
}  // namespace mixpa::cpu::simd
