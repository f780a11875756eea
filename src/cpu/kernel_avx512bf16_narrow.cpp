// AVX-512 BF16 chunk kernel for narrow head tiles (<= 8 rows: GQA decode, e.g. 32/8 heads).
//
// With 16 rows per zmm a 4-row tile would leave 12 of 16 lanes idle. Here a zmm holds
// RS = 16 / C rows x C columns: lane r*C + c. In QK the C columns are C consecutive bf16
// pairs of head_dim (the K operand is a broadcast C-pair chunk of one K row, a plain load),
// summed per row afterwards by a permute butterfly that also packs C tokens into one vector
// (lane r*C + t). In PV the C columns are C output positions (the V operand is a broadcast
// C-pair chunk of the interleaved V rows). Every lane does useful work: per token QK costs
// head_dim / (2C) vdpbf16ps instead of head_dim / 2. The page loop is the chunk driver's
// (chunk_driver.h); the state is the narrow avx512 kernel's (kernel_avx512_common.h).
#include "cpu/x86_intrinsics.h"

#include <cstdint>
#include <cstring>

#include "cpu/chunk_driver.h"
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

// One narrow head tile as the chunk driver's stages; F = the score features.
template <int C, unsigned F>
struct NarrowBf16Tile {
  const ChunkJob& job;
  const Problem* pr;
  std::int64_t dim, bs;
  std::uint32_t* qt;  // [dim / 2C][16]   lane r*C + c = Q_r pair (p*C + c)
  float* s;           // [bs / C][16]     lane r*C + t = score of row r, token g*C + t
  std::uint32_t* pp;  // [bs / 2][16]     lane r*C + c = P pair jp of row r
  std::uint32_t* vi;  // [bs / 2][dim]    V pairs, unpack position order
  float* ot;          // [dim / C][16]    lane r*C + c = O of row r at position v*C + c
  avx512::ColumnRows<C> st;
  __m512 scale;

  explicit NarrowBf16Tile(const ChunkJob& j) : job(j), pr(j.problem), dim(pr->shape.head_dim), bs(pr->shape.block_size) {
    const std::int64_t padded = (bs + 15) / 16 * 16;
    qt = static_cast<std::uint32_t*>(scratch(0, dim / (2 * C) * 64));
    s = static_cast<float*>(scratch(1, padded / C * 64));
    pp = static_cast<std::uint32_t*>(scratch(2, padded / 2 * 64));
    vi = static_cast<std::uint32_t*>(scratch(3, padded / 2 * dim * 4));
    ot = static_cast<float*>(scratch(4, dim / C * 64));
    for (std::int64_t p = 0; p < dim / (2 * C); ++p)
      for (int lane = 0; lane < 16; ++lane) {
        const int r = lane / C;
        std::uint32_t w = 0;
        if (r < job.rows) std::memcpy(&w, pr->query_row(job.batch, job.head_begin + r) + 2 * (p * C + lane % C), 4);
        qt[p * 16 + lane] = w;
      }
    for (std::int64_t i = 0; i < dim / C * 16; ++i) ot[i] = 0.0f;
    st.init(*pr, job.batch, job.head_begin, job.rows);
    scale = _mm512_set1_ps(pr->variant.scale);
  }

  // The first page's K and V rows into L2 before its QK.
  void first(const PageSpan& span) { avx512::prefetch_rows(pr, job.kv_head, dim, span.page, 0, bs); }

  // Cube QK for 16 tokens from j0 (rows outside the span [begin, valid) read a zero row and score
  // -inf); meanwhile a share of the next page's K rows is prefetched.
  void qk_block(const PageSpan& span, std::int64_t j0) {
    const std::int64_t page = span.page, begin = span.begin, valid = span.end;
    avx512::prefetch_rows(pr, job.kv_head, dim, span.next_page, j0 * bs / valid, (j0 + 16) * bs / valid, 1);
    constexpr int NT = 16;
    const bf16* k[NT];
    for (int j = 0; j < NT; ++j) k[j] = j0 + j >= begin && j0 + j < valid ? pr->key_row(page, j0 + j, job.kv_head) : kZeroRow;
    __m512 acc[NT];
#pragma GCC unroll 16
    for (int j = 0; j < NT; ++j) acc[j] = _mm512_setzero_ps();
    for (std::int64_t p = 0; p < dim / (2 * C); ++p) {
      const __m512bh q = (__m512bh)_mm512_load_si512(qt + p * 16);
#pragma GCC unroll 16
      for (int j = 0; j < NT; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], q, (__m512bh)bcst_words<C>(k[j] + 2 * p * C));
    }
    for (int g = 0; g < NT / C; ++g) {
      const std::int64_t first = j0 + g * C;
      const __m512 sc = st.template logit<F>(reduce_tokens<C>(acc + g * C), scale, span.token0 + first);
      __mmask16 live = 0;
      for (int lane = 0; lane < 16; ++lane)
        live |= static_cast<__mmask16>((first + lane % C >= begin && first + lane % C < valid) << lane);
      _mm512_store_ps(s + (first / C) * 16, _mm512_mask_blend_ps(live, _mm512_set1_ps(-__builtin_inff()), sc));
    }
  }

  void qk(const PageSpan& span) {
    for (std::int64_t b = span.begin / 16; b < (span.end + 15) / 16; ++b) qk_block(span, b * 16);
  }

  // Vector SF: running max per row (butterfly max over its C lanes), P pairs, l_i.
  void softmax(const PageSpan& span) {
    const std::int64_t g0 = span.begin / 16 * 16 / C, groups = (span.end + 15) / 16 * 16 / C;
    const __m512 mx = st.running_max(s, g0, groups);
    const __m512bh ones = avx512::bf16_ones();
    __m512i spread[C / 2];
    for (int h = 0; h < C / 2; ++h) {  // lane r*C + c <- word r*(C/2) + h of the converted group
      alignas(64) std::int32_t idx[16];
      for (int lane = 0; lane < 16; ++lane) idx[lane] = lane / C * (C / 2) + h;
      spread[h] = _mm512_load_si512(idx);
    }
    __m512 sum = _mm512_setzero_ps();
    for (std::int64_t g = g0; g < groups; ++g) {
      const __m512 e = exp512(_mm512_sub_ps(_mm512_load_ps(s + g * 16), mx));
      const __m512i words = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(e));
      for (int h = 0; h < C / 2; ++h) {
        const __m512i pair = _mm512_permutexvar_epi32(spread[h], words);
        _mm512_store_si512(pp + (g * (C / 2) + h) * 16, pair);
        sum = _mm512_dpbf16_ps(sum, (__m512bh)pair, ones);
      }
    }
    st.l_i = sum;
  }

  // Cube PV then vector UP over blocks of up to 16 position vectors: O = alpha * O + oi; then
  // L = alpha * L + l_i.
  void pv(const PageSpan& span) {
    const std::int64_t jp0 = span.begin / 16 * 8, pairs = (span.end + 15) / 16 * 8;
    interleave_v(pr, job.kv_head, dim, vi, span.page, span.begin, span.end, jp0, pairs, span.next_page);
    constexpr int TD = 16;
    const std::int64_t vectors = dim / C;
    for (std::int64_t v0 = 0; v0 < vectors; v0 += TD) {
      __m512 acc[TD];
#pragma GCC unroll 16
      for (int u = 0; u < TD; ++u) acc[u] = _mm512_setzero_ps();
      const int n = vectors - v0 < TD ? static_cast<int>(vectors - v0) : TD;
      for (std::int64_t jp = jp0; jp < pairs; ++jp) {
        const __m512bh p = (__m512bh)_mm512_load_si512(pp + jp * 16);
        const std::uint32_t* vrow = vi + jp * dim + v0 * C;
        if (n == TD) {
#pragma GCC unroll 16
          for (int u = 0; u < TD; ++u) acc[u] = _mm512_dpbf16_ps(acc[u], p, (__m512bh)bcst_words<C>(vrow + u * C));
        } else {
          for (int u = 0; u < n; ++u) acc[u] = _mm512_dpbf16_ps(acc[u], p, (__m512bh)bcst_words<C>(vrow + u * C));
        }
      }
      for (int u = 0; u < n; ++u) {
        float* o = ot + (v0 + u) * 16;
        _mm512_store_ps(o, simd::up<simd::Avx512>(st.alpha, _mm512_load_ps(o), acc[u]));
      }
    }
    st.update_l();
  }

  void finish(const ChunkOut& out) {
    for (int r = 0; r < job.rows; ++r) {
      for (std::int64_t pos = 0; pos < dim; ++pos) out.o[r * dim + dim_of_position(pos)] = ot[(pos / C) * 16 + r * C + pos % C];
      out.m[r] = st.m_of(r);
      out.l[r] = st.l_of(r);
    }
  }
};

template <int C, unsigned F>
void attend(const ChunkJob& job, const ChunkOut& out) {
  NarrowBf16Tile<C, F> tile(job);
  drive_chunk(tile, job, out);
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
