// AVX-512F pieces shared by every AVX-512 flavour (avx512, avx512bf16, amx): the vectorised
// exp, the next-page prefetch and the token-reduction butterfly of the narrow kernels.
// Include only after a `#pragma GCC target` that enables at least avx512f; everything here
// has internal linkage.
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

// Pages are random in memory, so the hardware streamers (which stop at 4 KiB boundaries) do
// not find them: each kernel prefetches the K and V rows of its *next* page while it computes
// the current one, spread over the current page's token blocks so requests stay in flight
// all the time. Into L2 (T1): measured 1.8x vs 1.95x of the roofline for T0 on Case1.
// How many pages ahead of the one being computed the prefetches run (1, 2 and 4 measured
// the same on Case1: 1.57-1.75x of the roofline, within noise).
#ifndef MIXPA_PREFETCH_PAGES
#define MIXPA_PREFETCH_PAGES 1
#endif
constexpr std::int64_t kPrefetchPages = MIXPA_PREFETCH_PAGES;

// `which`: 1 = K rows, 2 = V rows, 3 = both.
inline void prefetch_rows(const Problem* pr, std::int64_t kv_head, std::int64_t dim, std::int64_t page,
                          std::int64_t j0, std::int64_t j1, int which = 3) {
  if (page < 0) return;
  for (std::int64_t j = j0; j < j1 && j < pr->shape.block_size; ++j) {
    if (which & 1)
      for (std::int64_t b = 0; b < dim * 2; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(pr->key_row(page, j, kv_head)) + b, _MM_HINT_T1);
    if (which & 2)
      for (std::int64_t b = 0; b < dim * 2; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(pr->value_row(page, j, kv_head)) + b, _MM_HINT_T1);
  }
}

// The cache lines of one page's K (or V) rows of one kv head, prefetched into L2 one line at
// a time between FMA groups (a kernel calls issue() at the rate that spreads a page's lines over
// its compute), so the requests stay spread
// over the compute instead of queueing in bursts that hold the fill buffers demand loads need.
struct LineStream {
  const char* row0 = nullptr;  // row 0 of the page for the kv head
  std::int64_t row_bytes = 0;  // stride between rows
  int row_shift = 0;           // log2(lines per row)
  std::int64_t next = 0, total = 0;

  void issue() {
    if (next < total) {
      const std::int64_t row = next >> row_shift, line = next & ((1 << row_shift) - 1);
      _mm_prefetch(row0 + row * row_bytes + line * 64, _MM_HINT_T1);
      ++next;
    }
  }
  void finish() {
    while (next < total) issue();
  }
};

// Lines of the K (which = 1) or V (which = 2) rows of `page`; page < 0 gives an empty stream.
inline LineStream page_lines(const Problem* pr, std::int64_t kv_head, std::int64_t dim, std::int64_t page, int which) {
  LineStream s;
  if (page < 0) return s;
  const bool k = which == 1;
  s.row0 = reinterpret_cast<const char*>(k ? pr->key_row(page, 0, kv_head) : pr->value_row(page, 0, kv_head));
  s.row_bytes = (k ? pr->k_strides.row : pr->v_strides.row) * 2;
  s.row_shift = __builtin_ctzll(static_cast<unsigned long long>(dim / 32));  // dim * 2 bytes / 64
  s.total = pr->shape.block_size * (dim / 32);
  return s;
}

// Butterfly indices: combining X and Y over blocks of g lanes (see reduce_tokens).
inline __m512i butterfly_index(int g, bool second) {
  alignas(64) std::int32_t idx[16];
  for (int lane = 0; lane < 16; ++lane) {
    const int base = lane - lane % g, c = lane % g, half = g / 2;
    idx[lane] = c < half ? base + c + (second ? half : 0) : 16 + base + c - (second ? 0 : half);
  }
  return _mm512_load_si512(idx);
}

// a[t] has lanes r*C + c = partial sums of token t; returns lanes r*C + t = full sums.
template <int C>
inline __m512 reduce_tokens(__m512* a) {
  int n = C;
  for (int g = C; g >= 2; g /= 2, n /= 2) {
    const __m512i i1 = butterfly_index(g, false), i2 = butterfly_index(g, true);
    for (int t = 0; t < n / 2; ++t)
      a[t] = _mm512_add_ps(_mm512_permutex2var_ps(a[t], i1, a[t + n / 2]), _mm512_permutex2var_ps(a[t], i2, a[t + n / 2]));
  }
  return a[0];
}

}  // namespace
}  // namespace mixpa::cpu::avx512
