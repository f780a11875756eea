// Pieces shared by the AVX-512 BF16 kernels (avx512bf16 wide and narrow, amx; exp and prefetch:
// kernel_avx512_common.h): the V pair interleave, the unpack position order, the wide tiles'
// common state (Q pairs, scores, P pairs, V pairs, O; rows in lanes) and their SF. Include only
// after `#pragma GCC target("avx512f,...,avx512bf16")`; everything here has internal linkage, so
// no other translation unit can pick it up.
#pragma once

#include "cpu/x86_intrinsics.h"

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/problem.h"
#include "cpu/chunk_kernel.h"
#include "cpu/kernel_avx512_common.h"
#include "cpu/kernel_avx512_parts.h"
#include "cpu/scratch.h"

namespace mixpa::cpu::avx512 {
namespace {

inline std::uint32_t load_pair(const bf16* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// 32 elements of a cache row (KV: bf16, or an fp8 the amx flavour reads) as bf16 patterns, in
// dim order. fp8 values are exact in bf16 (e4m3 as value / 256: CacheRow512's fp16 halves and
// kFactor), so a bf16 product computes on them what it computes on bf16 caches.
template <class KV>
inline __m512i bf16_chunk(const KV* src) {
  if constexpr (std::is_same_v<KV, bf16>) {
    return _mm512_loadu_si512(src);
  } else {
    __m512 a, b;
    CacheRow512<KV>::pair(src, a, b);
    return (__m512i)_mm512_cvtne2ps_pbh(b, a);  // elements 0-15 from a, 16-31 from b
  }
}

// vi[jp][dim] = V rows (2jp, 2jp+1) paired per dim within 128-bit lanes (vpunpck{l,h}wd), for
// jp0 <= jp < pairs; rows outside the span [begin, valid) pair as 0 and are never loaded (KV:
// the cache's element type, converted to bf16 on the way).
// Meanwhile the V rows of `next` (a page id, or -1) are prefetched, spread over the pairs.
template <class KV = bf16>
inline void interleave_v(const Problem* pr, std::int64_t kv_head, std::int64_t dim, std::uint32_t* vi, std::int64_t page,
                         std::int64_t begin, std::int64_t valid, std::int64_t jp0, std::int64_t pairs, std::int64_t next) {
  const std::int64_t bs = pr->shape.block_size;
  for (std::int64_t jp = jp0; jp < pairs; ++jp) {
    prefetch_rows(pr, kv_head, dim, next, jp * bs / pairs, (jp + 1) * bs / pairs, 2);
    const KV* a = 2 * jp >= begin && 2 * jp < valid ? pr->value_row_as<KV>(page, 2 * jp, kv_head) : nullptr;
    const KV* b = 2 * jp + 1 >= begin && 2 * jp + 1 < valid ? pr->value_row_as<KV>(page, 2 * jp + 1, kv_head) : nullptr;
    for (std::int64_t c = 0; c < dim; c += 32) {
      const __m512i va = a ? bf16_chunk(a + c) : _mm512_setzero_si512();
      const __m512i vb = b ? bf16_chunk(b + c) : _mm512_setzero_si512();
      _mm512_store_si512(vi + jp * dim + c, _mm512_unpacklo_epi16(va, vb));
      _mm512_store_si512(vi + jp * dim + c + 16, _mm512_unpackhi_epi16(va, vb));
    }
  }
}

// Two bf16 1.0s per 32-bit lane: vdpbf16ps(sum, P pairs, ones) is l_i's sum of the rounded P.
inline __m512bh bf16_ones() { return (__m512bh)_mm512_set1_epi32(0x3f803f80); }

// Dim of unpack position `pos`: per 32 dims, positions 0-15 hold dims 8L+i, 16-31 hold 8L+4+i.
inline std::int64_t dim_of_position(std::int64_t pos) {
  const std::int64_t q = pos % 16;
  return pos / 32 * 32 + (q / 4) * 8 + (pos % 32) / 16 * 4 + q % 4;
}

// The state both wide BF16 tiles (avx512bf16, amx) start from: RV zmm of rows in lanes, W = RV *
// 16. `pairs` is the number of token pairs the P and V buffers hold (bs / 2 + 1, or padded to
// the AMX k-step).
template <int RV>
struct PairRows {
  static constexpr int kLanes = 16, W = RV * kLanes;
  const ChunkJob& job;
  const Problem* pr;
  std::int64_t dim, bs;
  std::uint32_t* qt;  // [dim/2][W]    Q pairs, lanes = rows
  float* s;           // [bs][W]       scaled scores of one page (S^T)
  std::uint32_t* pp;  // [pairs][W]    bf16 P pairs of one page, lanes = rows
  std::uint32_t* vi;  // [pairs][dim]  V pairs of one page, unpack position order
  float* o;           // [dim * W]     running unnormalised output (the flavour's order)
  simd::LaneRows<simd::Avx512, RV> st;
  simd::RowLimits<simd::Avx512, RV> lim;  // each row's causal limit and window (rows = job_row's pairs)

  PairRows(const ChunkJob& j, std::int64_t pairs)
      : job(j), pr(j.problem), dim(pr->shape.head_dim), bs(pr->shape.block_size) {
    qt = static_cast<std::uint32_t*>(scratch(0, dim / 2 * W * 4));
    s = static_cast<float*>(scratch(1, bs * W * 4));
    pp = static_cast<std::uint32_t*>(scratch(2, pairs * W * 4));
    vi = static_cast<std::uint32_t*>(scratch(3, pairs * dim * 4));
    o = static_cast<float*>(scratch(4, dim * W * 4));
    // Q pairs of each row's (new token, head), transposed; the rows' limits and state.
    lim.init(job, st, [&](int r, const JobRow* jr) {
      const bf16* q = jr != nullptr ? pr->query_row_as<bf16>(job.batch, jr->token, jr->head) : nullptr;
      for (std::int64_t p = 0; p < dim / 2; ++p) qt[p * W + r] = q != nullptr ? load_pair(q + 2 * p) : 0u;
    });
    for (std::int64_t i = 0; i < dim * W; ++i) o[i] = 0.0f;
  }

  // Vector SF: running max, P = bf16(exp(s - M)) as token pairs, l_i = sum of rounded P, alpha.
  // s: [bs][W] scaled scores of tokens [begin, valid); pp: pairs [begin/2, ceil(valid/2)) (a
  // token before begin pairs as P = 0).
  void softmax_pairs(std::int64_t begin, std::int64_t valid) {
    alignas(64) static constexpr std::int16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                                 21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26,
                                                                 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i idx = _mm512_load_si512(kInterleave);
    const __m512bh ones = bf16_ones();
    for (int v = 0; v < RV; ++v) {
      const __m512 m_old = _mm512_loadu_ps(st.m + v * kLanes);
      __m512 mx = m_old;
      for (std::int64_t j = begin; j < valid; ++j) mx = _mm512_max_ps(mx, _mm512_load_ps(s + j * W + v * kLanes));
      st.alpha[v] = exp512(_mm512_sub_ps(m_old, mx));
      __m512 sum = _mm512_setzero_ps();
      for (std::int64_t jp = begin / 2; jp < (valid + 1) / 2; ++jp) {
        const __m512 a = 2 * jp >= begin ? exp512(_mm512_sub_ps(_mm512_load_ps(s + 2 * jp * W + v * kLanes), mx))
                                         : _mm512_setzero_ps();
        const __m512 b = 2 * jp + 1 < valid ? exp512(_mm512_sub_ps(_mm512_load_ps(s + (2 * jp + 1) * W + v * kLanes), mx))
                                            : _mm512_setzero_ps();
        const __m512i pair = _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(b, a));
        _mm512_store_si512(pp + jp * W + v * kLanes, pair);
        sum = _mm512_dpbf16_ps(sum, (__m512bh)pair, ones);
      }
      _mm512_storeu_ps(st.m + v * kLanes, mx);
      st.l_i[v] = sum;
    }
  }

  // Write-back: o of row r at unpack position pos is o[index(r, pos)]; m and l per row.
  template <class Index>
  void write_back(const ChunkOut& out, Index index) const {
    for (int r = 0; r < job.rows; ++r) {
      for (std::int64_t pos = 0; pos < dim; ++pos) out.o[r * dim + dim_of_position(pos)] = o[index(r, pos)];
      out.m[r] = st.m[r];
      out.l[r] = st.l[r];
    }
  }
};

}  // namespace
}  // namespace mixpa::cpu::avx512
