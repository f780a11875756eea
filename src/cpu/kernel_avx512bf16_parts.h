// Pieces shared by the two AVX-512 BF16 kernels (wide tiles: rows in lanes; narrow tiles:
// rows x columns in lanes). Include only after `#pragma GCC target("avx512f,...,avx512bf16")`;
// everything here has internal linkage, so no other translation unit can pick it up.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "core/problem.h"

namespace mixpa::cpu::avx512 {
namespace {

// exp(x) for x <= 0 (arguments are score - running max): Cody-Waite reduction, degree-6
// polynomial (about 1 ulp), vscalefps for 2^n. Below -87.3 (and -inf) the result is 0.
inline __m512 exp512(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(live, p, n);
}

inline void prefetch_row(const bf16* row, std::int64_t dim) {
  for (std::int64_t b = 0; b < dim * 2; b += 64) _mm_prefetch(reinterpret_cast<const char*>(row) + b, _MM_HINT_T0);
}

// vi[jp][dim] = V rows (2jp, 2jp+1) paired per dim within 128-bit lanes (vpunpck{l,h}wd), for
// jp < pairs; rows at or past `valid` pair as 0 and are never loaded. Meanwhile the K rows of
// `next_page` (if >= 0) are prefetched.
inline void interleave_v(const Problem* pr, std::int64_t kv_head, std::int64_t dim, std::uint32_t* vi, std::int64_t page,
                         std::int64_t valid, std::int64_t pairs, std::int64_t next_page) {
  for (std::int64_t jp = 0; jp < pairs; ++jp) {
    const bf16* a = 2 * jp < valid ? pr->value_row(page, 2 * jp, kv_head) : nullptr;
    const bf16* b = 2 * jp + 1 < valid ? pr->value_row(page, 2 * jp + 1, kv_head) : nullptr;
    if (next_page >= 0 && 2 * jp + 1 < pr->shape.block_size) {
      prefetch_row(pr->key_row(next_page, 2 * jp, kv_head), dim);
      prefetch_row(pr->key_row(next_page, 2 * jp + 1, kv_head), dim);
    }
    for (std::int64_t c = 0; c < dim; c += 32) {
      const __m512i va = a ? _mm512_loadu_si512(a + c) : _mm512_setzero_si512();
      const __m512i vb = b ? _mm512_loadu_si512(b + c) : _mm512_setzero_si512();
      _mm512_store_si512(vi + jp * dim + c, _mm512_unpacklo_epi16(va, vb));
      _mm512_store_si512(vi + jp * dim + c + 16, _mm512_unpackhi_epi16(va, vb));
    }
  }
}

// Dim of unpack position `pos`: per 32 dims, positions 0-15 hold dims 8L+i, 16-31 hold 8L+4+i.
inline std::int64_t dim_of_position(std::int64_t pos) {
  const std::int64_t q = pos % 16;
  return pos / 32 * 32 + (q / 4) * 8 + (pos % 32) / 16 * 4 + q % 4;
}

}  // namespace
}  // namespace mixpa::cpu::avx512
