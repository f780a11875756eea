// The Avx512 descriptor of the SIMD layer (simd.h): 16 x f32 in a zmm, __mmask16 masks. Include
// only after the flavour's `#pragma GCC target` (avx512f at least); everything here is inline.
// Under MIXPA_CPU_EMULATED the same intrinsics come from SIMDe (x86_intrinsics.h).
#pragma once

#include "cpu/simd.h"
#include "cpu/x86_intrinsics.h"

namespace mixpa::cpu::simd {
// Internal linkage: these are compiled under each flavour's target pragma, and must never be
// merged with another translation unit's copy (which may be built for another target).
namespace {

struct Avx512 {
  using V = __m512;
  using M = __mmask16;
  using VI = __m512i;  // 16 x int32
  static constexpr int kLanes = 16;

  static V set(float x) { return _mm512_set1_ps(x); }
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_load_ps(p); }
  static V loadu(const float* p) { return _mm512_loadu_ps(p); }
  static V broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static void store(float* p, V x) { _mm512_store_ps(p, x); }
  static void storeu(float* p, V x) { _mm512_storeu_ps(p, x); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V abs(V a) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff)));
  }
  static V copy_sign(V mag, V sign) {
    const __m512i s = _mm512_and_si512(_mm512_castps_si512(sign), _mm512_set1_epi32(static_cast<int>(0x80000000u)));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(mag), s));
  }
  static M ge(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static M lt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static V select(M m, V yes, V no) { return _mm512_mask_blend_ps(m, no, yes); }
  static VI load_i32(const std::int32_t* p) { return _mm512_load_si512(p); }
  static VI set_i32(std::int32_t x) { return _mm512_set1_epi32(x); }
  static M gt_i32(VI a, VI b) { return _mm512_cmpgt_epi32_mask(a, b); }
  static M mask_or(M a, M b) { return static_cast<M>(a | b); }
  static V round_nearest(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT); }
  static V round_down(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  // x rounded to a multiple of 2^-7, nearest even: one vrndscaleps.
  static V round_to_7_bits(V x) { return _mm512_roundscale_ps(x, (7 << 4) | _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // x rounded to the nearest fp16 and back (ties to even, subnormal halves kept: F16C's rounding).
  static V round_to_f16(V x) { return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); }
  // p * 2^n in live lanes, 0 elsewhere.
  static V scale_pow2(M live, V p, V n) { return _mm512_maskz_scalef_ps(live, p, n); }
};

}  // namespace
}  // namespace mixpa::cpu::simd
