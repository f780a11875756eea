// AMX-BF16 flavour of the chunk kernel: the two matmuls on the tile unit (the "cube"), the
// online softmax on AVX-512 (the "vector" side), as in the MIX design.
//
//   QK  S^T[16 tokens x 16 rows] += K rows [16 x 32 dims] (tileloadd straight from the cache)
//                                   . Qt pairs [16 x 16 x 2] (Q transposed once per chunk)
//   SF  rows in lanes (shared with the AVX-512 kernel) -> P pairs [jp][rows]
//   PV  O[16 rows x 16 positions] += P [16 rows x 32 tokens] (P pairs transposed, 16x16 words)
//                                    . V pairs [16 x 16 x 2] (two V rows interleaved)
//   UP  O rows rescaled by alpha before PV accumulates into them (tileloadd / tilestored).
// Narrow tiles (GQA groups < 16) run here too, with idle columns: measured faster than the
// narrow AVX-512 kernel (Decode32k with the cache hot: 1.72 vs 2.43 us per page per core).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "core/page_walk.h"
#include "cpu/chunk_kernel.h"
#include "cpu/scratch.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,avx2,amx-tile,amx-bf16")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "cpu/kernel_avx512bf16_parts.h"

namespace mixpa::cpu {
namespace {

using avx512::dim_of_position;
using avx512::interleave_v;
using avx512::prefetch_rows;

constexpr int kLanes = 16;

// Palette 1, eight tiles of 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  std::uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// 16x16 transpose of 32-bit words: four butterfly stages swapping off-diagonal blocks of b
// (b = 8, 4, 2, 1). Index tables: lanes without bit b keep theirs / take the partner's.
struct TransposeIndex {
  alignas(64) std::int32_t a[4][16], b[4][16];
  TransposeIndex() {
    for (int s = 0, blk = 8; s < 4; ++s, blk /= 2)
      for (int lane = 0; lane < 16; ++lane) {
        a[s][lane] = (lane & blk) == 0 ? lane : 16 + lane - blk;
        b[s][lane] = (lane & blk) == 0 ? lane + blk : 16 + lane;
      }
  }
};
const TransposeIndex kTranspose;

inline void transpose16(__m512i* r) {
  for (int s = 0, blk = 8; s < 4; ++s, blk /= 2) {
    const __m512i xa = _mm512_load_si512(kTranspose.a[s]), xb = _mm512_load_si512(kTranspose.b[s]);
    for (int i = 0; i < 16; ++i)
      if ((i & blk) == 0) {
        const __m512i lo = _mm512_permutex2var_epi32(r[i], xa, r[i + blk]);
        r[i + blk] = _mm512_permutex2var_epi32(r[i], xb, r[i + blk]);
        r[i] = lo;
      }
  }
}

struct Tile {
  const ChunkJob* job;
  const Problem* pr;
  std::int64_t dim, bs, pairs_pad;  // pairs_pad: bs/2 rounded up to 16 (a PV k-step)
  std::uint32_t* qt;   // [dim/2][W]       Q pairs, lanes = rows
  float* s;            // [bs][W]          S^T
  std::uint32_t* pp;   // [pairs_pad][W]   P pairs, lanes = rows
  std::uint32_t* prm;  // [W][pairs_pad]   P pairs row-major (AMX A operand)
  std::uint32_t* vi;   // [pairs_pad][dim] V pairs (AMX B operand)
  float* o;            // [W][dim]         running O, unpack position order
  float m[64], l[64];
  __m512 slope[4];  // score epilogue: ALiBi slope per row (0 without)
  simd::Epilogue<simd::Avx512> epi;
  std::int64_t pos;  // the query's position
};

// Cube QK on the tile unit: S^T for every 16-token block holding valid tokens. Rows of the last
// block past `valid` are still inside the page; their scores are never read.
template <int RV, unsigned F>
void qk_page(Tile& t, std::int64_t page, std::int64_t begin, std::int64_t valid, std::int64_t token0, std::int64_t next) {
  constexpr int W = RV * kLanes;
  const std::int64_t kstride = t.pr->k_strides.row * 2;
  for (std::int64_t j0 = 0; j0 < valid; j0 += 16) {
    prefetch_rows(t.pr, t.job->kv_head, t.dim, next, j0 * t.bs / valid, (j0 + 16) * t.bs / valid, 1);
    const bf16* k = t.pr->key_row(page, j0, t.job->kv_head);
    // Accumulators in tiles 0..RV-1; K alternates between tiles 4/5 and Q between 6/7 so the
    // next load never waits for the tdpbf16ps still reading the previous one. (Tile numbers
    // must be literals: the intrinsics stringize them.)
    const std::uint32_t* q = t.qt;
    auto step4 = [&](std::int64_t c) {
      _tile_loadd(4, k + 32 * c, kstride);
      _tile_loadd(6, q + 16 * c * W, W * 4);
      _tile_dpbf16ps(0, 4, 6);
      if constexpr (RV > 1) { _tile_loadd(7, q + 16 * c * W + 16, W * 4); _tile_dpbf16ps(1, 4, 7); }
      if constexpr (RV > 2) { _tile_loadd(6, q + 16 * c * W + 32, W * 4); _tile_dpbf16ps(2, 4, 6); }
      if constexpr (RV > 3) { _tile_loadd(7, q + 16 * c * W + 48, W * 4); _tile_dpbf16ps(3, 4, 7); }
    };
    auto step5 = [&](std::int64_t c) {
      _tile_loadd(5, k + 32 * c, kstride);
      _tile_loadd(7, q + 16 * c * W, W * 4);
      _tile_dpbf16ps(0, 5, 7);
      if constexpr (RV > 1) { _tile_loadd(6, q + 16 * c * W + 16, W * 4); _tile_dpbf16ps(1, 5, 6); }
      if constexpr (RV > 2) { _tile_loadd(7, q + 16 * c * W + 32, W * 4); _tile_dpbf16ps(2, 5, 7); }
      if constexpr (RV > 3) { _tile_loadd(6, q + 16 * c * W + 48, W * 4); _tile_dpbf16ps(3, 5, 6); }
    };
    _tile_zero(0);
    if constexpr (RV > 1) _tile_zero(1);
    if constexpr (RV > 2) _tile_zero(2);
    if constexpr (RV > 3) _tile_zero(3);
    for (std::int64_t c = 0; c < t.dim / 32; c += 2) {  // head_dim / 32 is even (64, 128, 256)
      step4(c);
      step5(c + 1);
    }
    float* out = t.s + j0 * W;
    _tile_stored(0, out, W * 4);
    if constexpr (RV > 1) _tile_stored(1, out + 16, W * 4);
    if constexpr (RV > 2) _tile_stored(2, out + 32, W * 4);
    if constexpr (RV > 3) _tile_stored(3, out + 48, W * 4);
  }
  const __m512 scale = _mm512_set1_ps(t.pr->scale);
  if constexpr (F == kScorePlain) {
    for (std::int64_t j = 0; j < valid * RV; ++j) _mm512_store_ps(t.s + j * kLanes, _mm512_mul_ps(_mm512_load_ps(t.s + j * kLanes), scale));
  } else {  // the score epilogue on the span's tokens (rows before `begin` are never read)
    for (std::int64_t j = begin; j < valid; ++j) {
      const __m512 delta = _mm512_set1_ps(static_cast<float>(token0 + j - t.pos));
      for (int v = 0; v < RV; ++v) {
        float* x = t.s + (j * RV + v) * kLanes;
        _mm512_store_ps(x, (simd::score_epilogue<F, simd::Avx512>(_mm512_mul_ps(_mm512_load_ps(x), scale), t.epi, t.slope[v], delta)));
      }
    }
  }
}

// P pairs [jp][rows] -> row-major [rows][jp], zero past the page's pairs.
template <int RV>
void transpose_p(Tile& t, std::int64_t pairs) {
  constexpr int W = RV * kLanes;
  for (std::int64_t jp = pairs; jp < t.pairs_pad; ++jp)
    for (int v = 0; v < RV; ++v) _mm512_store_si512(t.pp + jp * W + v * kLanes, _mm512_setzero_si512());
  for (std::int64_t jp0 = 0; jp0 < t.pairs_pad; jp0 += 16)
    for (int v = 0; v < RV; ++v) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(t.pp + (jp0 + i) * W + v * kLanes);
      transpose16(r);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(t.prm + (v * kLanes + i) * t.pairs_pad + jp0, r[i]);
    }
}

// Vector UP (O = alpha * O, per row) then cube PV accumulating P.V into O on the tile unit.
template <int RV>
void pv_page(Tile& t, std::int64_t pairs, const __m512* alpha) {
  constexpr int W = RV * kLanes;
  alignas(64) float a[W];
  for (int v = 0; v < RV; ++v) _mm512_store_ps(a + v * kLanes, alpha[v]);
  for (int r = 0; r < W; ++r) {
    const __m512 ar = _mm512_set1_ps(a[r]);
    float* o = t.o + r * t.dim;
    for (std::int64_t d = 0; d < t.dim; d += 16) _mm512_store_ps(o + d, _mm512_mul_ps(ar, _mm512_load_ps(o + d)));
  }
  // O tiles 0..RV-1 per 16 positions; V pairs alternate between tiles 4/5, P rows 6/7.
  const std::int64_t steps = (pairs + 15) / 16, pstride = t.pairs_pad * 4, vstride = t.dim * 4;
  for (std::int64_t pos = 0; pos < t.dim; pos += 16) {
    float* o = t.o + pos;
    const std::int64_t orow = kLanes * t.dim;  // 16 rows of O
    _tile_loadd(0, o, vstride);
    if constexpr (RV > 1) _tile_loadd(1, o + orow, vstride);
    if constexpr (RV > 2) _tile_loadd(2, o + 2 * orow, vstride);
    if constexpr (RV > 3) _tile_loadd(3, o + 3 * orow, vstride);
    const std::uint32_t* p = t.prm;
    const std::int64_t prow = kLanes * t.pairs_pad;
    for (std::int64_t k = 0; k < steps; ++k) {
      const std::uint32_t* v = t.vi + 16 * k * t.dim + pos;
      const std::uint32_t* pk = p + 16 * k;
      if (k % 2 == 0) {
        _tile_loadd(4, v, vstride);
        _tile_loadd(6, pk, pstride);
        _tile_dpbf16ps(0, 6, 4);
        if constexpr (RV > 1) { _tile_loadd(7, pk + prow, pstride); _tile_dpbf16ps(1, 7, 4); }
        if constexpr (RV > 2) { _tile_loadd(6, pk + 2 * prow, pstride); _tile_dpbf16ps(2, 6, 4); }
        if constexpr (RV > 3) { _tile_loadd(7, pk + 3 * prow, pstride); _tile_dpbf16ps(3, 7, 4); }
      } else {
        _tile_loadd(5, v, vstride);
        _tile_loadd(7, pk, pstride);
        _tile_dpbf16ps(0, 7, 5);
        if constexpr (RV > 1) { _tile_loadd(6, pk + prow, pstride); _tile_dpbf16ps(1, 6, 5); }
        if constexpr (RV > 2) { _tile_loadd(7, pk + 2 * prow, pstride); _tile_dpbf16ps(2, 7, 5); }
        if constexpr (RV > 3) { _tile_loadd(6, pk + 3 * prow, pstride); _tile_dpbf16ps(3, 6, 5); }
      }
    }
    _tile_stored(0, o, vstride);
    if constexpr (RV > 1) _tile_stored(1, o + orow, vstride);
    if constexpr (RV > 2) _tile_stored(2, o + 2 * orow, vstride);
    if constexpr (RV > 3) _tile_stored(3, o + 3 * orow, vstride);
  }
}

template <int RV, unsigned F>
void attend(const ChunkJob& job, const ChunkOut& out) {
  constexpr int W = RV * kLanes;
  const Problem& pr = *job.problem;
  Tile t{&job, &pr, pr.shape.head_dim, pr.shape.block_size, 0, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, {}, {}};
  t.pairs_pad = (t.bs / 2 + 15) / 16 * 16;
  t.qt = static_cast<std::uint32_t*>(scratch(0, t.dim / 2 * W * 4));
  t.s = static_cast<float*>(scratch(1, t.bs * W * 4));
  t.pp = static_cast<std::uint32_t*>(scratch(2, t.pairs_pad * W * 4));
  t.vi = static_cast<std::uint32_t*>(scratch(3, t.pairs_pad * t.dim * 4));
  t.o = static_cast<float*>(scratch(4, W * t.dim * 4));
  t.prm = static_cast<std::uint32_t*>(scratch(5, W * t.pairs_pad * 4));
  for (std::int64_t p = 0; p < t.dim / 2; ++p)
    for (int r = 0; r < W; ++r) {
      std::uint32_t w = 0;
      if (r < job.rows) std::memcpy(&w, pr.query_row(job.batch, job.head_begin + r) + 2 * p, 4);
      t.qt[p * W + r] = w;
    }
  for (std::int64_t i = 0; i < W * t.dim; ++i) t.o[i] = 0.0f;
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
  const TileConfig config;
  _tile_loadconfig(&config);
  if (PageWalk first(pr, job.batch, job.tokens); first.is_valid())
    avx512::prefetch_rows(&pr, job.kv_head, t.dim, first->page, 0, t.bs);
  for (PageWalk w(pr, job.batch, job.tokens); w.is_valid(); ++w) {
    const std::int64_t page = w->page, begin = w->begin, valid = w->end, next = w->next_page;
    const std::int64_t pairs = (valid + 1) / 2;
    __m512 alpha[RV], l_i[RV];
    qk_page<RV, F>(t, page, begin, valid, w->token0, next);  // from row 0: rows before `begin` are never read
    avx512::softmax_rows_in_lanes<RV>(t.s, t.m, t.pp, begin, valid, alpha, l_i);
    for (std::int64_t jp = 0; jp < begin / 2; ++jp)  // pairs before the span: P = 0
      for (int v = 0; v < RV; ++v) _mm512_store_si512(t.pp + jp * RV * kLanes + v * kLanes, _mm512_setzero_si512());
    transpose_p<RV>(t, pairs);
    interleave_v(t.pr, job.kv_head, t.dim, t.vi, page, begin, valid, 0, (pairs + 15) / 16 * 16, next);
    pv_page<RV>(t, pairs, alpha);
    for (int v = 0; v < RV; ++v)  // UP of the softmax state: L = alpha * L + l_i
      _mm512_storeu_ps(t.l + v * kLanes, _mm512_fmadd_ps(alpha[v], _mm512_loadu_ps(t.l + v * kLanes), l_i[v]));
  }
  _tile_release();
  for (int r = 0; r < job.rows; ++r) {
    for (std::int64_t pos = 0; pos < t.dim; ++pos) out.o[r * t.dim + dim_of_position(pos)] = t.o[r * t.dim + pos];
    out.m[r] = t.m[r];
    out.l[r] = t.l[r];
  }
}

}  // namespace

void attend_chunk_amx(const ChunkJob& job, const ChunkOut& out) {
  simd::with_score_features(job.problem->variant.score_features(), [&]<unsigned F>() {
    switch ((job.rows + kLanes - 1) / kLanes) {
      case 1: return attend<1, F>(job, out);
      case 2: return attend<2, F>(job, out);
      case 3: return attend<3, F>(job, out);
      default: return attend<4, F>(job, out);
    }
  });
}

}  // namespace mixpa::cpu

#pragma GCC pop_options
