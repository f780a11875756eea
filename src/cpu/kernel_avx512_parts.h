// Pieces of the AVX-512F (fp32 FMA) kernels, wide and narrow: widening bf16 rows to fp32 in
// "position" order and rounding P to bf16. Include only after the flavour's
// `#pragma GCC target`; everything here has internal linkage.
#pragma once

#include "cpu/x86_intrinsics.h"

#include <cstdint>

#include "mixpa/dtype.h"

namespace mixpa::cpu::avx512 {
namespace {

constexpr int kLanes = 16;

// Widening reads 32 bf16 (64 bytes) at a time as 16 words: x << 16 is the even element of each
// word, x & 0xffff0000 the odd one, both exact in fp32. Position p of a row holds, per chunk of
// 32, the even elements first (positions 0-15 = dims 0, 2, .., 30) then the odd ones.
inline std::int64_t position_dim(std::int64_t pos) {
  const std::int64_t q = pos % 32;
  return pos - q + (q < 16 ? 2 * q : 2 * (q - 16) + 1);
}

// One 32-element chunk (64 bytes of bf16) widened: positions 0-15 (its even elements) and
// 16-31 (its odd elements).
inline void widen_chunk(__m512i x, __m512& even, __m512& odd) {
  even = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
  odd = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

// dst[0, dim) = the bf16 row src in position order; dim is a multiple of 32.
inline void widen_row(const bf16* src, float* dst, std::int64_t dim) {
  for (std::int64_t c = 0; c < dim; c += 32) {
    __m512 even, odd;
    widen_chunk(_mm512_loadu_si512(src + c), even, odd);
    _mm512_store_ps(dst + c, even);
    _mm512_store_ps(dst + c + 16, odd);
  }
}

// dst[0, dim) in dim order from a row in position order whose position p is src[p * stride].
inline void store_dim_order(const float* src, std::int64_t stride, float* dst, std::int64_t dim) {
  for (std::int64_t c = 0; c < dim; c += 32)
    for (int i = 0; i < 16; ++i) {
      dst[c + 2 * i] = src[(c + i) * stride];
      dst[c + 2 * i + 1] = src[(c + 16 + i) * stride];
    }
}

// P = bf16(exp(x)) for x <= 0 (x = score - running max), kept in fp32, in 11 instructions instead
// of exp512's 11 plus 5 for an integer bf16 rounding: exp(x) = 2^n * 2^f with n = floor(x log2 e)
// and f in [0, 1), so 2^f lies in [1, 2), where bf16 keeps 7 fraction bits: one vrndscaleps
// (multiples of 2^-7, nearest even) rounds it, and the scaling by 2^n is exact. 2^f is a
// degree-5 polynomial with p(0) = 1 exactly (relative error 3.3e-7, 2^-21.6, against the bf16
// half-ulp 2^-9: a tie is decided differently from the correctly rounded exp only within that
// distance, i.e. for ~0.02% of P, by one bf16 ulp, and never for P = 1 at the running max). The
// argument reduction x log2 e adds a relative error of at most ~2^-24 |x log2 e| (5e-6 at
// x = -87). Below -87.3 (and -inf) P is 0.
inline __m512 exp_bf16(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.852192566730082e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.037778712809086e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.579707399010658e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4015982449054718e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931524872779846e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  p = _mm512_roundscale_ps(p, (7 << 4) | _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_maskz_scalef_ps(live, p, n);
}

}  // namespace
}  // namespace mixpa::cpu::avx512
