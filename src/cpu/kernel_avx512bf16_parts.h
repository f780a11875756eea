// Pieces shared by the two AVX-512 BF16 kernels (exp and prefetch: kernel_avx512_common.h) (wide tiles: rows in lanes; narrow tiles:
// rows x columns in lanes). Include only after `#pragma GCC target("avx512f,...,avx512bf16")`;
// everything here has internal linkage, so no other translation unit can pick it up.
#pragma once

#include "cpu/x86_intrinsics.h"

#include <cstdint>

#include "core/problem.h"
#include "cpu/kernel_avx512_common.h"

namespace mixpa::cpu::avx512 {
namespace {

// vi[jp][dim] = V rows (2jp, 2jp+1) paired per dim within 128-bit lanes (vpunpck{l,h}wd), for
// jp0 <= jp < pairs; rows outside the span [begin, valid) pair as 0 and are never loaded.
// Meanwhile the V rows of `next` (a page id, or -1) are prefetched, spread over the pairs.
inline void interleave_v(const Problem* pr, std::int64_t kv_head, std::int64_t dim, std::uint32_t* vi, std::int64_t page,
                         std::int64_t begin, std::int64_t valid, std::int64_t jp0, std::int64_t pairs, std::int64_t next) {
  const std::int64_t bs = pr->shape.block_size;
  for (std::int64_t jp = jp0; jp < pairs; ++jp) {
    prefetch_rows(pr, kv_head, dim, next, jp * bs / pairs, (jp + 1) * bs / pairs, 2);
    const bf16* a = 2 * jp >= begin && 2 * jp < valid ? pr->value_row(page, 2 * jp, kv_head) : nullptr;
    const bf16* b = 2 * jp + 1 >= begin && 2 * jp + 1 < valid ? pr->value_row(page, 2 * jp + 1, kv_head) : nullptr;
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

// Vector SF: running max, P = bf16(exp(s - M)) as token pairs, l_i = sum of rounded P.
// Returns the rescale factor alpha = exp(M_old - M_new) and l_i per lane.
// s: [valid][W] scaled scores (lanes = rows) of tokens [begin, valid); m: running max per lane
// (updated); pp: output pairs [begin/2, ceil(valid/2)) (a token before begin pairs as P = 0).
template <int RV>
void softmax_rows_in_lanes(const float* s_, float* m_, std::uint32_t* pp_, std::int64_t begin, std::int64_t valid,
                           __m512* alpha, __m512* l_i) {
  constexpr int kLanes = 16, W = RV * kLanes;
  alignas(64) static constexpr std::int16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                               21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26,
                                                               11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kInterleave);
  const __m512bh ones = (__m512bh)_mm512_set1_epi32(0x3f803f80);
  for (int v = 0; v < RV; ++v) {
    const __m512 m_old = _mm512_loadu_ps(m_ + v * kLanes);
    __m512 mx = m_old;
    for (std::int64_t j = begin; j < valid; ++j) mx = _mm512_max_ps(mx, _mm512_load_ps(s_ + j * W + v * kLanes));
    alpha[v] = exp512(_mm512_sub_ps(m_old, mx));
    __m512 sum = _mm512_setzero_ps();
    for (std::int64_t jp = begin / 2; jp < (valid + 1) / 2; ++jp) {
      const __m512 a = 2 * jp >= begin ? exp512(_mm512_sub_ps(_mm512_load_ps(s_ + 2 * jp * W + v * kLanes), mx))
                                       : _mm512_setzero_ps();
      const __m512 b = 2 * jp + 1 < valid ? exp512(_mm512_sub_ps(_mm512_load_ps(s_ + (2 * jp + 1) * W + v * kLanes), mx))
                                          : _mm512_setzero_ps();
      const __m512i pair = _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(b, a));
      _mm512_store_si512(pp_ + jp * W + v * kLanes, pair);
      sum = _mm512_dpbf16_ps(sum, (__m512bh)pair, ones);
    }
    _mm512_storeu_ps(m_ + v * kLanes, mx);
    l_i[v] = sum;
  }
}

}  // namespace
}  // namespace mixpa::cpu::avx512
