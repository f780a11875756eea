// AVX-512 BF16 flavour of the chunk kernel (vdpbf16ps for both matmuls).
//
// Layout: the head tile's rows live in SIMD lanes (16 rows per zmm, RV = 1..4 zmm per tile),
// so the online-softmax state m, l and the rescale factor are plain vectors and no horizontal
// reduction is ever needed:
//   QK  s[j]   (lanes = rows) += Qt[p] . bcst(K_j pair p)     Qt = Q as bf16 pairs, transposed once
//   SF  P pairs of tokens (2jp, 2jp+1) interleaved per lane, rounded to bf16 (vcvtne2ps2bf16)
//   PV  ot[d]  (lanes = rows) += Ppair[jp] . bcst(V pair (2jp, 2jp+1) at d)
// Each K/V row is read from memory once per tile and used by all its rows. V rows are
// interleaved in pairs within 128-bit lanes (vpunpck{l,h}wd); `ot` is kept in that
// position order and put back in dim order once per chunk.
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
// GCC 12 flags its own _mm512_undefined_* helpers as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "cpu/kernel_avx512bf16_parts.h"

namespace mixpa::cpu {
MIXPA_CPU_FLAVOURS_BEGIN
namespace {

using avx512::dim_of_position;
using avx512::exp512;
using avx512::interleave_v;
using avx512::prefetch_rows;

constexpr int kLanes = 16;

inline std::uint32_t load_pair(const bf16* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Everything one chunk works on. Widths: W = RV * 16 lanes.
struct Tile {
  const ChunkJob* job;
  const Problem* pr;
  std::int64_t dim, bs;
  std::uint32_t* qt;  // [dim/2][W]   Q pairs, lanes = rows
  float* s;           // [bs][W]      scaled scores of one page
  std::uint32_t* pp;  // [bs/2][W]    bf16 P pairs of one page
  std::uint32_t* vi;  // [bs/2][dim]  V pairs of one page, unpack position order
  float* ot;          // [dim][W]     running unnormalised output, position order
  float m[64], l[64];  // running max / sum per row
  __m512 slope[4];     // score epilogue: ALiBi slope per row (0 without)
  simd::Epilogue<simd::Avx512> epi;
  std::int64_t pos;    // the query's position
};

// QK for NJ consecutive valid tokens starting at j0; writes s[j0 .. j0+NJ).
template <int RV, unsigned F, int NJ>
inline void qk_tokens(Tile& t, std::int64_t page, std::int64_t j0, std::int64_t token0, __m512 scale) {
  constexpr int W = RV * kLanes, PB = RV == 3 ? 2 : 8 / RV;
  const bf16* k[NJ];
  for (int j = 0; j < NJ; ++j) {
    k[j] = t.pr->key_row(page, j0 + j, t.job->kv_head);
  }
  __m512 acc[NJ][RV];
#pragma GCC unroll 16
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) acc[j][v] = _mm512_setzero_ps();
  // Fully unrolled so the NJ x RV accumulators stay in registers as independent chains.
  for (std::int64_t p0 = 0; p0 < t.dim / 2; p0 += PB) {
    __m512bh q[PB][RV];
#pragma GCC unroll 8
    for (int b = 0; b < PB; ++b)
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) q[b][v] = (__m512bh)_mm512_load_si512(t.qt + (p0 + b) * W + v * kLanes);
#pragma GCC unroll 8
    for (int b = 0; b < PB; ++b)
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) {
        const __m512bh kk = (__m512bh)_mm512_set1_epi32(static_cast<int>(load_pair(k[j] + 2 * (p0 + b))));
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v) acc[j][v] = _mm512_dpbf16_ps(acc[j][v], q[b][v], kk);
      }
  }
  for (int j = 0; j < NJ; ++j) {
    const __m512 delta = _mm512_set1_ps(static_cast<float>(token0 + j0 + j - t.pos));
    for (int v = 0; v < RV; ++v)
      _mm512_store_ps(t.s + (j0 + j) * W + v * kLanes,
                      (simd::score_epilogue<F, simd::Avx512>(_mm512_mul_ps(acc[j][v], scale), t.epi, t.slope[v], delta)));
  }
}

// Cube QK: scores of the page's valid tokens; meanwhile prefetch the next page.
template <int RV, unsigned F>
void qk_page(Tile& t, std::int64_t page, std::int64_t begin, std::int64_t valid, std::int64_t token0, std::int64_t next) {
  constexpr int TJ = RV == 3 ? 5 : 16 / RV;
  prefetch_rows(t.pr, t.job->kv_head, t.dim, next, 0, t.bs, 1);
  const __m512 scale = _mm512_set1_ps(t.pr->scale);
  std::int64_t j = begin;
  for (; j + TJ <= valid; j += TJ) qk_tokens<RV, F, TJ>(t, page, j, token0, scale);
  for (; j < valid; ++j) qk_tokens<RV, F, 1>(t, page, j, token0, scale);
}

// Vector SF (shared with the AMX kernel).
template <int RV>
void softmax_page(Tile& t, std::int64_t begin, std::int64_t valid, __m512* alpha, __m512* l_i) {
  avx512::softmax_rows_in_lanes<RV>(t.s, t.m, t.pp, begin, valid, alpha, l_i);
}

// Vector UP for positions [pos0, pos0 + TD): O = alpha * O + oi.
template <int RV, int TD>
inline void update(Tile& t, std::int64_t pos0, const __m512 (&oi)[TD][RV], const __m512* alpha) {
  constexpr int W = RV * kLanes;
  for (int d = 0; d < TD; ++d)
    for (int v = 0; v < RV; ++v) {
      float* o = t.ot + (pos0 + d) * W + v * kLanes;
      _mm512_store_ps(o, _mm512_fmadd_ps(alpha[v], _mm512_load_ps(o), oi[d][v]));
    }
}

// Cube PV then vector UP, TD output positions at a time (accumulators stay in registers).
template <int RV>
void pv_page(Tile& t, std::int64_t page, std::int64_t begin, std::int64_t valid, std::int64_t next, const __m512* alpha) {
  constexpr int W = RV * kLanes, TD = RV >= 3 ? 4 : 16 / RV;
  const std::int64_t jp0 = begin / 2, pairs = (valid + 1) / 2;
  interleave_v(t.pr, t.job->kv_head, t.dim, t.vi, page, begin, valid, jp0, pairs, next);
  for (std::int64_t pos0 = 0; pos0 < t.dim; pos0 += TD) {
    __m512 acc[TD][RV];
    for (int d = 0; d < TD; ++d)
      for (int v = 0; v < RV; ++v) acc[d][v] = _mm512_setzero_ps();
    for (std::int64_t jp = jp0; jp < pairs; ++jp) {
      __m512bh p[RV];
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) p[v] = (__m512bh)_mm512_load_si512(t.pp + jp * W + v * kLanes);
      const std::uint32_t* vrow = t.vi + jp * t.dim + pos0;
#pragma GCC unroll 16
      for (int d = 0; d < TD; ++d) {
        const __m512bh vv = (__m512bh)_mm512_set1_epi32(static_cast<int>(vrow[d]));
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v) acc[d][v] = _mm512_dpbf16_ps(acc[d][v], p[v], vv);
      }
    }
    update<RV, TD>(t, pos0, acc, alpha);
  }
}

template <int RV, unsigned F>
void attend(const ChunkJob& job, const ChunkOut& out) {
  constexpr int W = RV * kLanes;
  const Problem& pr = *job.problem;
  Tile t{&job, &pr, pr.shape.head_dim, pr.shape.block_size, nullptr, nullptr, nullptr, nullptr, nullptr, {}, {}};
  t.qt = static_cast<std::uint32_t*>(scratch(0, t.dim / 2 * W * 4));
  t.s = static_cast<float*>(scratch(1, t.bs * W * 4));
  t.pp = static_cast<std::uint32_t*>(scratch(2, (t.bs / 2 + 1) * W * 4));
  t.vi = static_cast<std::uint32_t*>(scratch(3, (t.bs / 2 + 1) * t.dim * 4));
  t.ot = static_cast<float*>(scratch(4, t.dim * W * 4));
  for (std::int64_t p = 0; p < t.dim / 2; ++p)
    for (int r = 0; r < W; ++r)
      t.qt[p * W + r] = r < job.rows ? load_pair(pr.query_row(job.batch, job.head_begin + r) + 2 * p) : 0u;
  for (std::int64_t i = 0; i < t.dim * W; ++i) t.ot[i] = 0.0f;
  for (int r = 0; r < W; ++r) {
    t.m[r] = -__builtin_inff();
    t.l[r] = 0.0f;
  }
  {
    const simd::ScoreParams sp = simd::score_params(pr, job.batch);
    alignas(64) float sl[64];
    for (int r = 0; r < W; ++r) sl[r] = sp.slopes != nullptr && r < job.rows ? sp.slopes[job.head_begin + r] : 0.0f;
    for (int v = 0; v < RV; ++v) t.slope[v] = _mm512_load_ps(sl + v * kLanes);
    t.epi = simd::epilogue_of<simd::Avx512>(sp);
    t.pos = sp.pos;
  }
  for (PageWalk w(pr, job.batch, job.tokens); w.is_valid(); ++w) {
    const std::int64_t page = w->page, begin = w->begin, valid = w->end, next = w->next_page;
    __m512 alpha[RV], l_i[RV];
    qk_page<RV, F>(t, page, begin, valid, w->token0, next);
    softmax_page<RV>(t, begin, valid, alpha, l_i);
    pv_page<RV>(t, page, begin, valid, next, alpha);
    for (int v = 0; v < RV; ++v)  // UP of the softmax state: L = alpha * L + l_i
      _mm512_storeu_ps(t.l + v * kLanes, _mm512_fmadd_ps(alpha[v], _mm512_loadu_ps(t.l + v * kLanes), l_i[v]));
  }
  for (int r = 0; r < job.rows; ++r) {
    for (std::int64_t pos = 0; pos < t.dim; ++pos) out.o[r * t.dim + dim_of_position(pos)] = t.ot[pos * W + r];
    out.m[r] = t.m[r];
    out.l[r] = t.l[r];
  }
}

}  // namespace

void attend_chunk_avx512bf16(const ChunkJob& job, const ChunkOut& out) {
  if (job.rows <= 8) return attend_chunk_avx512bf16_narrow(job, out);
  simd::with_score_features(job.problem->variant.score_features(), [&]<unsigned F>() {
    switch ((job.rows + kLanes - 1) / kLanes) {
      case 1: return attend<1, F>(job, out);
      case 2: return attend<2, F>(job, out);
      case 3: return attend<3, F>(job, out);
      default: return attend<4, F>(job, out);
    }
  });
}

MIXPA_CPU_FLAVOURS_END
}  // namespace mixpa::cpu

#if MIXPA_CPU_NATIVE
#pragma GCC pop_options
#endif
