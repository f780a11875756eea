// AVX-512F pieces shared by every AVX-512 flavour (avx512, avx512bf16, amx): the vectorised
// exp, the next-page prefetch, and the narrow kernels' token-reduction butterfly and state.
// Include only after a `#pragma GCC target` that enables at least avx512f; everything here
// has internal linkage.
#pragma once

#include "cpu/x86_intrinsics.h"

#include <cstdint>

#include "core/problem.h"
#include "cpu/simd_avx512.h"

namespace mixpa::cpu::avx512 {
namespace {

// exp(x) for x <= 0 (arguments are score - running max): simd.h's, in zmm.
inline __m512 exp512(__m512 x) { return simd::exp_neg<simd::Avx512>(x); }

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

// Row j of `page` for kv head `kv_head` in the K (which = 1) or V (which = 2) cache, as bytes,
// and the byte stride between a page's rows.
// Element sizes come from kv_dtype: 2 bytes for bf16 / f16, 1 for fp8 (the fp32 avx512 kernels).
inline std::int64_t kv_elem_bytes(const Problem* pr) { return pr->kv_is_fp8() ? 1 : 2; }
inline const char* cache_row(const Problem* pr, int which, std::int64_t page, std::int64_t j, std::int64_t kv_head) {
  const std::int64_t off = which == 1 ? pr->key_offset(page, j, kv_head) : pr->value_offset(page, j, kv_head);
  return static_cast<const char*>(which == 1 ? pr->key_data : pr->value_data) + off * kv_elem_bytes(pr);
}
inline std::int64_t cache_row_bytes(const Problem* pr, int which) {
  return (which == 1 ? pr->k_strides.row : pr->v_strides.row) * kv_elem_bytes(pr);
}

// `which`: 1 = K rows, 2 = V rows, 3 = both.
// always_inline: a function whose only effect is prefetches is "const" to GCC (__builtin_prefetch
// touches no memory it models), so a call of it that is not inlined first is deleted as dead.
__attribute__((always_inline)) inline void prefetch_rows(const Problem* pr, std::int64_t kv_head, std::int64_t dim, std::int64_t page,
                          std::int64_t j0, std::int64_t j1, int which = 3) {
  if (page < 0) return;
  const std::int64_t row_bytes = dim * kv_elem_bytes(pr);
  for (std::int64_t j = j0; j < j1 && j < pr->shape.block_size; ++j) {
    if (which & 1)
      for (std::int64_t b = 0; b < row_bytes; b += 64) _mm_prefetch(cache_row(pr, 1, page, j, kv_head) + b, _MM_HINT_T1);
    if (which & 2)
      for (std::int64_t b = 0; b < row_bytes; b += 64) _mm_prefetch(cache_row(pr, 2, page, j, kv_head) + b, _MM_HINT_T1);
  }
}

// Cache lines of rows of one kv head (a page's K or V rows, or a block of them), prefetched one
// line at a time between FMA groups: a kernel calls issue() at the rate that spreads the lines
// over its compute, so requests stay spread out instead of queueing in bursts that hold the fill
// buffers demand loads need. The avx512 kernels stream the next token block into L1 (T0) during
// the current block, so widening does not wait on L2.
template <int kHint>
struct LineStream {
  const char* row = nullptr;   // the row of the next line
  std::int64_t row_bytes = 0;  // stride between rows
  int lines_per_row = 0;
  int line = 0;                // next line within `row`
  std::int64_t left = 0;       // lines not yet issued

  void issue() {  // no variable shift or multiply: this runs between FMA groups
    if (left > 0) {
      _mm_prefetch(row + line * 64, static_cast<_mm_hint>(kHint));
      if (++line == lines_per_row) {
        line = 0;
        row += row_bytes;
      }
      --left;
    }
  }
  void finish() {
    while (left > 0) issue();
  }
};
using BlockStream = LineStream<_MM_HINT_T0>;

// The first line of every 4 KiB page of [lo, hi), one per issue(), into L2: a touch that
// starts the L2 streamer on each page well before the kernel reads it. Software prefetches hold
// an L1 fill buffer until their line arrives, which caps line-by-line streams near 7-10 GB/s
// per core here; the streamer fetches the rest of a page it has seen touched without them.
inline LineStream<_MM_HINT_T1> page_starts(const char* lo, const char* hi) {
  LineStream<_MM_HINT_T1> s;
  if (hi <= lo) return s;
  s.row = lo;
  s.row_bytes = 4096;
  s.lines_per_row = 1;
  s.left = (hi - lo + 4095) / 4096;
  return s;
}

// Lines of rows [j0, j0 + rows) of `page` for the K (which = 1) or V (which = 2) cache; page < 0
// or rows <= 0 give an empty stream.
template <int kHint>
inline LineStream<kHint> row_lines(const Problem* pr, std::int64_t kv_head, std::int64_t dim, std::int64_t page,
                                   int which, std::int64_t j0, std::int64_t rows) {
  LineStream<kHint> s;
  if (page < 0 || rows <= 0) return s;
  s.row = cache_row(pr, which, page, j0, kv_head);
  s.row_bytes = cache_row_bytes(pr, which);
  const std::int64_t lines = dim * kv_elem_bytes(pr) / 64;  // dim >= 64: whole lines
  s.lines_per_row = static_cast<int>(lines);
  s.left = rows * lines;
  return s;
}

// Rows [j0, j0 + rows) of `page` (clipped to `valid`), into L1.
inline BlockStream block_lines(const Problem* pr, std::int64_t kv_head, std::int64_t dim, std::int64_t page, int which,
                               std::int64_t j0, std::int64_t rows, std::int64_t valid) {
  return row_lines<_MM_HINT_T0>(pr, kv_head, dim, page, which, j0, valid - j0 < rows ? valid - j0 : rows);
}

// A permutation control vector, built at compile time (a table built per call costs more
// scalar work than the permutes it feeds).
struct LaneTable {
  alignas(64) std::int32_t lane[16];
};

template <class F>
constexpr LaneTable make_lane_table(F f) {
  LaneTable t{};
  for (int i = 0; i < 16; ++i) t.lane[i] = f(i);
  return t;
}

// Butterfly indices: combining X and Y over blocks of G lanes (see reduce_tokens).
template <int G, bool kSecond>
inline __m512i butterfly_index() {
  static constexpr LaneTable kTable = make_lane_table([](int lane) {
    const int base = lane - lane % G, c = lane % G, half = G / 2;
    return c < half ? base + c + (kSecond ? half : 0) : 16 + base + c - (kSecond ? 0 : half);
  });
  return _mm512_load_si512(kTable.lane);
}

// One level of reduce_tokens: a[t] and a[t + N/2] combined over blocks of G lanes.
template <int G, int N>
inline void reduce_level(__m512* a) {
  const __m512i i1 = butterfly_index<G, false>(), i2 = butterfly_index<G, true>();
  for (int t = 0; t < N / 2; ++t)
    a[t] = _mm512_add_ps(_mm512_permutex2var_ps(a[t], i1, a[t + N / 2]), _mm512_permutex2var_ps(a[t], i2, a[t + N / 2]));
  if constexpr (G > 2) reduce_level<G / 2, N / 2>(a);
}

// a[t] has lanes r*C + c = partial sums of token t; returns lanes r*C + t = full sums.
template <int C>
inline __m512 reduce_tokens(__m512* a) {
  if constexpr (C >= 2) reduce_level<C, C>(a);
  return a[0];
}

// x with every lane replaced by the max (or sum) over its aligned group of C lanes (xor butterfly).
template <int K>
inline __m512i xor_index() {
  static constexpr LaneTable kTable = make_lane_table([](int lane) { return lane ^ K; });
  return _mm512_load_si512(kTable.lane);
}

template <int C, bool kMax, int K = 1>
inline __m512 over_row(__m512 x) {
  if constexpr (K < C) {
    const __m512 y = _mm512_permutexvar_ps(xor_index<K>(), x);
    return over_row<C, kMax, 2 * K>(kMax ? _mm512_max_ps(x, y) : _mm512_add_ps(x, y));
  } else {
    return x;
  }
}

// The running state of a narrow head tile (the narrow avx512 and avx512bf16 kernels): a zmm
// holds 16 / C rows x C columns, lane r*C + c; every lane of a row carries the row's m and l.
// Also the score epilogue's constants: scores come C tokens per row in a vector (lane r*C + t).
template <int C>
struct ColumnRows {
  alignas(64) float m[16], l[16];  // per lane: its row's running max / sum of the rounded P
  __m512 alpha, l_i;               // this page's rescale exp(M_old - M_new) and sum of P
  __m512 slope, column;            // lane r*C + c: its row's ALiBi slope (0 without), and c
  simd::Epilogue<simd::Avx512> epi;
  std::int64_t pos = 0;  // the query's position (ALiBi)

  void init(const Problem& pr, std::int64_t batch, std::int64_t head_begin, int rows) {
    const simd::ScoreParams sp = simd::score_params(pr, batch);
    alignas(64) float sl[16], col[16];
    for (int lane = 0; lane < 16; ++lane) {
      const int r = lane / C;
      sl[lane] = sp.slopes != nullptr && r < rows ? sp.slopes[head_begin + r] : 0.0f;
      col[lane] = static_cast<float>(lane % C);
      m[lane] = -__builtin_inff();
      l[lane] = 0.0f;
    }
    slope = _mm512_load_ps(sl);
    column = _mm512_load_ps(col);
    epi = simd::epilogue_of<simd::Avx512>(sp);
    pos = sp.pos;
  }

  // The logits of C tokens from `first` (lane r*C + t: row r, token first + t) from their raw
  // dot products.
  template <unsigned F>
  __m512 logit(__m512 dots, __m512 scale, std::int64_t first) const {
    const __m512 delta = _mm512_add_ps(_mm512_set1_ps(static_cast<float>(first - pos)), column);
    return simd::score_epilogue<F, simd::Avx512>(_mm512_mul_ps(dots, scale), epi, slope, delta);
  }

  // SF's first half over score vectors s[g * 16] for g in [g0, groups): the running max of each
  // row (butterfly over its C lanes), alpha = exp(M_old - M_new); m = M_new. Returns M_new.
  __m512 running_max(const float* s, std::int64_t g0, std::int64_t groups) {
    const __m512 m_old = _mm512_load_ps(m);
    __m512 mx = m_old;
    for (std::int64_t g = g0; g < groups; ++g) mx = _mm512_max_ps(mx, _mm512_load_ps(s + g * 16));
    mx = over_row<C, true>(mx);
    alpha = exp512(_mm512_sub_ps(m_old, mx));
    _mm512_store_ps(m, mx);
    return mx;
  }

  // UP of the softmax state after the page's PV: L = alpha * L + l_i.
  void update_l() { _mm512_store_ps(l, simd::up<simd::Avx512>(alpha, _mm512_load_ps(l), l_i)); }

  // Row r's m and l.
  float m_of(int r) const { return m[r * C]; }
  float l_of(int r) const { return l[r * C]; }
};

}  // namespace
}  // namespace mixpa::cpu::avx512
