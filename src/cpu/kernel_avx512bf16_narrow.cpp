// AVX-512 BF16 chunk kernel for narrow head tiles (<= 8 rows: GQA decode, e.g. 32/8 heads).
//
// With 16 rows per zmm a 4-row tile would leave 12 of 16 lanes idle. Here a zmm holds
// RS = 16 / C rows x C columns: lane r*C + c. In QK the C columns are C consecutive bf16
// pairs of head_dim (the K operand is a broadcast C-pair chunk of one K row, a plain load),
// summed per row afterwards by a permute butterfly that also packs C tokens into one vector
// (lane r*C + t). In PV the C columns are C output positions (the V operand is a broadcast
// C-pair chunk of the interleaved V rows). Every lane does useful work: per token QK costs
// head_dim / (2C) vdpbf16ps instead of head_dim / 2.
#include "cpu/x86_intrinsics.h"

#include <cstdint>
#include <cstring>

#include "core/page_walk.h"
#include "cpu/chunk_kernel.h"
#include "cpu/scratch.h"

#if MIXPA_CPU_NATIVE
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,avx2")
#endif
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "cpu/kernel_avx512bf16_parts.h"

namespace mixpa::cpu {
MIXPA_CPU_FLAVOURS_BEGIN
namespace {

using avx512::dim_of_position;
using avx512::exp512;
using avx512::interleave_v;
using avx512::reduce_tokens;

alignas(64) const bf16 kZeroRow[256] = {};

// C consecutive 32-bit words at p, repeated over the zmm.
template <int C>
inline __m512i bcst_words(const void* p) {
  if constexpr (C == 2) {
    std::int64_t v;
    std::memcpy(&v, p, 8);
    return _mm512_set1_epi64(v);
  } else if constexpr (C == 4) {
    return _mm512_broadcast_i32x4(_mm_loadu_si128(static_cast<const __m128i*>(p)));
  } else if constexpr (C == 8) {
    return _mm512_broadcast_i64x4(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
  } else {
    return _mm512_loadu_si512(p);
  }
}

struct Tile {
  const ChunkJob* job;
  const Problem* pr;
  std::int64_t dim, bs;
  std::uint32_t* qt;  // [dim / 2C][16]   lane r*C + c = Q_r pair (p*C + c)
  float* s;           // [bs / C][16]     lane r*C + t = score of row r, token g*C + t
  std::uint32_t* pp;  // [bs / 2][16]     lane r*C + c = P pair jp of row r
  std::uint32_t* vi;  // [bs / 2][dim]    V pairs, unpack position order
  float* ot;          // [dim / C][16]    lane r*C + c = O of row r at position v*C + c
  alignas(64) float m[16], l[16];
  __m512 slope, column;  // score epilogue: lane r*C + c's ALiBi slope (0 without) and c
  simd::Epilogue<simd::Avx512> epi;
  std::int64_t pos;      // the query's position
};

// Cube QK for 16 tokens from j0 (rows outside the span [begin, valid) read a zero row and score -inf).
template <int C, unsigned F>
void qk_block(Tile& t, std::int64_t page, std::int64_t j0, std::int64_t begin, std::int64_t valid, __m512 scale,
              std::int64_t token0, std::int64_t next) {
  avx512::prefetch_rows(t.pr, t.job->kv_head, t.dim, next, j0 * t.bs / valid, (j0 + 16) * t.bs / valid, 1);
  constexpr int NT = 16;
  const bf16* k[NT];
  for (int j = 0; j < NT; ++j) {
    k[j] = j0 + j >= begin && j0 + j < valid ? t.pr->key_row(page, j0 + j, t.job->kv_head) : kZeroRow;
  }
  __m512 acc[NT];
#pragma GCC unroll 16
  for (int j = 0; j < NT; ++j) acc[j] = _mm512_setzero_ps();
  for (std::int64_t p = 0; p < t.dim / (2 * C); ++p) {
    const __m512bh q = (__m512bh)_mm512_load_si512(t.qt + p * 16);
#pragma GCC unroll 16
    for (int j = 0; j < NT; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], q, (__m512bh)bcst_words<C>(k[j] + 2 * p * C));
  }
  for (int g = 0; g < NT / C; ++g) {
    const std::int64_t first = j0 + g * C;
    const __m512 delta = _mm512_add_ps(_mm512_set1_ps(static_cast<float>(token0 + first - t.pos)), t.column);
    const __m512 sc =
        simd::score_epilogue<F, simd::Avx512>(_mm512_mul_ps(reduce_tokens<C>(acc + g * C), scale), t.epi, t.slope, delta);
    __mmask16 live = 0;
    for (int lane = 0; lane < 16; ++lane)
      live |= static_cast<__mmask16>((first + lane % C >= begin && first + lane % C < valid) << lane);
    _mm512_store_ps(t.s + (first / C) * 16, _mm512_mask_blend_ps(live, _mm512_set1_ps(-__builtin_inff()), sc));
  }
}

// Vector SF: running max per row (butterfly max over its C lanes), P pairs, l_i.
template <int C>
void softmax_page(Tile& t, std::int64_t g0, std::int64_t groups, __m512& alpha, __m512& l_i) {
  const __m512 m_old = _mm512_load_ps(t.m);
  __m512 mx = m_old;
  for (std::int64_t g = g0; g < groups; ++g) mx = _mm512_max_ps(mx, _mm512_load_ps(t.s + g * 16));
  for (int k = 1; k < C; k *= 2) {
    alignas(64) std::int32_t idx[16];
    for (int lane = 0; lane < 16; ++lane) idx[lane] = lane ^ k;
    mx = _mm512_max_ps(mx, _mm512_permutexvar_ps(_mm512_load_si512(idx), mx));
  }
  alpha = exp512(_mm512_sub_ps(m_old, mx));
  const __m512bh ones = (__m512bh)_mm512_set1_epi32(0x3f803f80);
  __m512i spread[C / 2];
  for (int h = 0; h < C / 2; ++h) {  // lane r*C + c <- word r*(C/2) + h of the converted group
    alignas(64) std::int32_t idx[16];
    for (int lane = 0; lane < 16; ++lane) idx[lane] = lane / C * (C / 2) + h;
    spread[h] = _mm512_load_si512(idx);
  }
  __m512 sum = _mm512_setzero_ps();
  for (std::int64_t g = g0; g < groups; ++g) {
    const __m512 e = exp512(_mm512_sub_ps(_mm512_load_ps(t.s + g * 16), mx));
    const __m512i words = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(e));
    for (int h = 0; h < C / 2; ++h) {
      const __m512i pair = _mm512_permutexvar_epi32(spread[h], words);
      _mm512_store_si512(t.pp + (g * (C / 2) + h) * 16, pair);
      sum = _mm512_dpbf16_ps(sum, (__m512bh)pair, ones);
    }
  }
  _mm512_store_ps(t.m, mx);
  l_i = sum;
}

// Cube PV then vector UP over blocks of up to 16 position vectors.
template <int C>
void pv_page(Tile& t, std::int64_t jp0, std::int64_t pairs, const __m512& alpha) {
  constexpr int TD = 16;
  const std::int64_t vectors = t.dim / C;
  for (std::int64_t v0 = 0; v0 < vectors; v0 += TD) {
    __m512 acc[TD];
#pragma GCC unroll 16
    for (int u = 0; u < TD; ++u) acc[u] = _mm512_setzero_ps();
    const int n = vectors - v0 < TD ? static_cast<int>(vectors - v0) : TD;
    for (std::int64_t jp = jp0; jp < pairs; ++jp) {
      const __m512bh p = (__m512bh)_mm512_load_si512(t.pp + jp * 16);
      const std::uint32_t* vrow = t.vi + jp * t.dim + v0 * C;
      if (n == TD) {
#pragma GCC unroll 16
        for (int u = 0; u < TD; ++u) acc[u] = _mm512_dpbf16_ps(acc[u], p, (__m512bh)bcst_words<C>(vrow + u * C));
      } else {
        for (int u = 0; u < n; ++u) acc[u] = _mm512_dpbf16_ps(acc[u], p, (__m512bh)bcst_words<C>(vrow + u * C));
      }
    }
    for (int u = 0; u < n; ++u) {  // UP: O = alpha * O + oi
      float* o = t.ot + (v0 + u) * 16;
      _mm512_store_ps(o, _mm512_fmadd_ps(alpha, _mm512_load_ps(o), acc[u]));
    }
  }
}

template <int C, unsigned F>
void attend(const ChunkJob& job, const ChunkOut& out) {
  const Problem& pr = *job.problem;
  Tile t{&job, &pr, pr.shape.head_dim, pr.shape.block_size, nullptr, nullptr, nullptr, nullptr, nullptr, {}, {}};
  const std::int64_t padded = (t.bs + 15) / 16 * 16;
  t.qt = static_cast<std::uint32_t*>(scratch(0, t.dim / (2 * C) * 64));
  t.s = static_cast<float*>(scratch(1, padded / C * 64));
  t.pp = static_cast<std::uint32_t*>(scratch(2, padded / 2 * 64));
  t.vi = static_cast<std::uint32_t*>(scratch(3, padded / 2 * t.dim * 4));
  t.ot = static_cast<float*>(scratch(4, t.dim / C * 64));
  for (std::int64_t p = 0; p < t.dim / (2 * C); ++p)
    for (int lane = 0; lane < 16; ++lane) {
      const int r = lane / C;
      std::uint32_t w = 0;
      if (r < job.rows) std::memcpy(&w, pr.query_row(job.batch, job.head_begin + r) + 2 * (p * C + lane % C), 4);
      t.qt[p * 16 + lane] = w;
    }
  for (std::int64_t i = 0; i < t.dim / C * 16; ++i) t.ot[i] = 0.0f;
  for (int lane = 0; lane < 16; ++lane) {
    t.m[lane] = -__builtin_inff();
    t.l[lane] = 0.0f;
  }
  const __m512 scale = _mm512_set1_ps(pr.scale);
  {
    const simd::ScoreParams sp = simd::score_params(pr, job.batch);
    alignas(64) float slope[16], column[16];
    for (int lane = 0; lane < 16; ++lane) {
      const int r = lane / C;
      slope[lane] = sp.slopes != nullptr && r < job.rows ? sp.slopes[job.head_begin + r] : 0.0f;
      column[lane] = static_cast<float>(lane % C);
    }
    t.slope = _mm512_load_ps(slope);
    t.column = _mm512_load_ps(column);
    t.epi = simd::epilogue_of<simd::Avx512>(sp);
    t.pos = sp.pos;
  }
  if (PageWalk first(pr, job.batch, job.tokens); first.is_valid())
    avx512::prefetch_rows(&pr, job.kv_head, t.dim, first->page, 0, t.bs);
  for (PageWalk w(pr, job.batch, job.tokens); w.is_valid(); ++w) {
    const std::int64_t page = w->page, begin = w->begin, valid = w->end, next = w->next_page;
    const std::int64_t b0 = begin / 16, blocks = (valid + 15) / 16;
    __m512 alpha, l_i;
    for (std::int64_t b = b0; b < blocks; ++b) qk_block<C, F>(t, page, b * 16, begin, valid, scale, w->token0, next);
    softmax_page<C>(t, b0 * 16 / C, blocks * 16 / C, alpha, l_i);
    interleave_v(t.pr, t.job->kv_head, t.dim, t.vi, page, begin, valid, b0 * 8, blocks * 8, next);
    pv_page<C>(t, b0 * 8, blocks * 8, alpha);
    _mm512_store_ps(t.l, _mm512_fmadd_ps(alpha, _mm512_load_ps(t.l), l_i));  // UP of the softmax state
  }
  for (int r = 0; r < job.rows; ++r) {
    for (std::int64_t pos = 0; pos < t.dim; ++pos)
      out.o[r * t.dim + dim_of_position(pos)] = t.ot[(pos / C) * 16 + r * C + pos % C];
    out.m[r] = t.m[r * C];
    out.l[r] = t.l[r * C];
  }
}

}  // namespace

void attend_chunk_avx512bf16_narrow(const ChunkJob& job, const ChunkOut& out) {
  simd::with_score_features(job.problem->variant.score_features(), [&]<unsigned F>() {
    if (job.rows <= 1) return attend<16, F>(job, out);
    if (job.rows <= 2) return attend<8, F>(job, out);
    if (job.rows <= 4) return attend<4, F>(job, out);
    return attend<2, F>(job, out);
  });
}

MIXPA_CPU_FLAVOURS_END
}  // namespace mixpa::cpu

#if MIXPA_CPU_NATIVE
#pragma GCC pop_options
#endif
