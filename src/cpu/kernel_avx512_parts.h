// Pieces of the AVX-512F (fp32 FMA) kernels, wide and narrow: widening bf16 rows to fp32 in
// "position" order and rounding P to bf16. Include only after the flavour's
// `#pragma GCC target`; everything here has internal linkage.
#pragma once

#include "cpu/x86_intrinsics.h"

#include <cstdint>

#include "cpu/simd_avx512.h"
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

// P = bf16(exp(x)) for x <= 0 (x = score - running max), kept in fp32: simd.h's one-rounding
// exp (11 instructions instead of exp512's 11 plus 5 for an integer bf16 rounding; one
// vrndscaleps is the rounding).
inline __m512 exp_bf16(__m512 x) { return simd::exp_bf16<simd::Avx512>(x); }

}  // namespace
}  // namespace mixpa::cpu::avx512
