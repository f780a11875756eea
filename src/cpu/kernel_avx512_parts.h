// Pieces of the AVX-512F (fp32 FMA) kernels, wide and narrow: widening bf16 rows to fp32 in
// "position" order and rounding P to bf16. Include only after the flavour's
// `#pragma GCC target`; everything here has internal linkage.
#pragma once

#include <immintrin.h>

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

// dst[0, dim) = the bf16 row src in position order; dim is a multiple of 32.
inline void widen_row(const bf16* src, float* dst, std::int64_t dim) {
  const __m512i odd_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (std::int64_t c = 0; c < dim; c += 32) {
    const __m512i x = _mm512_loadu_si512(src + c);
    _mm512_store_ps(dst + c, _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)));
    _mm512_store_ps(dst + c + 16, _mm512_castsi512_ps(_mm512_and_si512(x, odd_mask)));
  }
}

// Round to nearest even bf16, kept as fp32 (P is finite and non-negative here).
inline __m512 round_bf16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd);
  return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

}  // namespace
}  // namespace mixpa::cpu::avx512
