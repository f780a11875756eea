// AMX-BF16 flavour of the chunk kernel: the two matmuls on the tile unit (the "cube"), the
// online softmax on AVX-512 (the "vector" side), as in the MIX design.
//
//   QK  S^T[16 tokens x 16 rows] += K rows [16 x 32 dims] (tileloadd straight from the cache)
//                                   . Qt pairs [16 x 16 x 2] (Q transposed once per chunk)
//   SF  rows in lanes (shared with the AVX-512 kernel) -> P pairs [jp][rows]
//   PV  O[16 rows x 16 positions] += P [16 rows x 32 tokens] (P pairs transposed, 16x16 words)
//                                    . V pairs [16 x 16 x 2] (two V rows interleaved)
//   UP  O rows rescaled by alpha before PV accumulates into them (tileloadd / tilestored).
// The page loop is the chunk driver's (chunk_driver.h); the state and SF are shared with the
// avx512bf16 kernel (kernel_avx512bf16_parts.h).
// Narrow tiles (GQA groups < 16) run here too, with idle columns: measured faster than the
// narrow AVX-512 kernel (Decode32k with the cache hot: 1.72 vs 2.43 us per page per core).
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/chunk_driver.h"
#include "cpu/chunk_kernel.h"
#include "cpu/scratch.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,avx2,amx-tile,amx-bf16")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "cpu/kernel_avx512bf16_parts.h"

namespace mixpa::cpu {
namespace {

using avx512::bf16_chunk;
using avx512::interleave_v;
using avx512::prefetch_rows;

constexpr int kLanes = 16;

// Palette 1, eight tiles of 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  std::uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};
constexpr TileConfig kTileConfig;

// ldtilecfg with the whole 64-byte config as its memory operand. GCC 12's _tile_loadconfig
// names only its first 8 bytes ("m" of a void*), so the compiler may sink or drop the stores to
// the rest of a stack config: seen on a Granite Rapids build, colsb left 0 with rows 16, and
// ldtilecfg raised #GP (SIGSEGV) on the first chunk.
inline void load_tile_config(const TileConfig& config) { __asm__ volatile("ldtilecfg %0" ::"m"(config)); }

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

// fp8 caches (e4m3, e5m2) run as bf16 on the tile unit (bf16_chunk, kernel_avx512bf16_parts.h):
// K rows are converted per 16-token block into an L1 buffer, V rows in the interleave that pairs
// them anyway; no dequantised copy of the cache. CacheRow512<KV>::kFactor goes into the scales.
// One head tile (W = RV * 16 rows in lanes) as the chunk driver's stages; F = the score features;
// KV = the cache's element type (bf16, e4m3, e5m2). O is [W][dim] (the AMX accumulator's
// layout), unpack position order.
template <int RV, unsigned F, class KV>
struct AmxTile : avx512::PairRows<RV> {
  using Base = avx512::PairRows<RV>;
  using Base::W, Base::job, Base::pr, Base::dim, Base::bs, Base::qt, Base::s, Base::pp, Base::vi, Base::o, Base::st, Base::lim;
  static constexpr bool kConverted = !std::is_same_v<KV, bf16>;
  std::int64_t pairs_pad;  // bs/2 rounded up to 16 (a PV k-step)
  std::uint32_t* prm;      // [W][pairs_pad]  P pairs row-major (AMX A operand)
  bf16* kb = nullptr;      // [16][dim]  one block's K rows as bf16 (converted caches)
  float score_scale;       // scale * k_scale * kFactor (bf16: scale, exactly)
  float out_scale;         // v_scale * kFactor (bf16: 1)

  static std::int64_t padded_pairs(const ChunkJob& j) { return (j.problem->shape.block_size / 2 + 15) / 16 * 16; }

  explicit AmxTile(const ChunkJob& j) : Base(j, padded_pairs(j)), pairs_pad(padded_pairs(j)) {
    prm = static_cast<std::uint32_t*>(scratch(5, W * pairs_pad * 4));
    if constexpr (kConverted) kb = static_cast<bf16*>(scratch(6, 16 * dim * 2));
    // The formula of every flavour (bf16 caches: k_scale = v_scale = kFactor = 1, exact).
    score_scale = pr->variant.scale * pr->k_scale * avx512::CacheRow512<KV>::kFactor;
    out_scale = pr->v_scale * avx512::CacheRow512<KV>::kFactor;
    load_tile_config(kTileConfig);
  }

  // The first page's K and V rows into L2 before its QK.
  void first(const PageSpan& span) { prefetch_rows(pr, job.kv_head, dim, span.page, 0, bs); }

  // Cube QK on the tile unit: S^T for every 16-token block holding span tokens, from row 0 (rows
  // before `begin` and those of the last block past `end` are still inside the page; their scores
  // are never read).
  void qk(const PageSpan& span) {
    const std::int64_t page = span.page, begin = span.begin, valid = span.end, next = span.next_page;
    const std::int64_t kstride = kConverted ? dim * 2 : pr->k_strides.row * 2;
    for (std::int64_t j0 = 0; j0 < valid; j0 += 16) {
      prefetch_rows(pr, job.kv_head, dim, next, j0 * bs / valid, (j0 + 16) * bs / valid, 1);
      const bf16* k;
      if constexpr (kConverted) {  // the block's 16 rows (inside the page) as bf16, into L1
        for (int i = 0; i < 16; ++i) {
          const KV* row = pr->template key_row_as<KV>(page, j0 + i, job.kv_head);
          for (std::int64_t c = 0; c < dim; c += 32) _mm512_store_si512(kb + i * dim + c, bf16_chunk(row + c));
        }
        k = kb;
      } else {
        k = pr->key_row(page, j0, job.kv_head);
      }
      // Accumulators in tiles 0..RV-1; K alternates between tiles 4/5 and Q between 6/7 so the
      // next load never waits for the tdpbf16ps still reading the previous one. (Tile numbers
      // must be literals: the intrinsics stringize them.)
      const std::uint32_t* q = qt;
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
      for (std::int64_t c = 0; c < dim / 32; c += 2) {  // head_dim / 32 is even (64, 128, 256)
        step4(c);
        step5(c + 1);
      }
      float* out = s + j0 * W;
      _tile_stored(0, out, W * 4);
      if constexpr (RV > 1) _tile_stored(1, out + 16, W * 4);
      if constexpr (RV > 2) _tile_stored(2, out + 32, W * 4);
      if constexpr (RV > 3) _tile_stored(3, out + 48, W * 4);
    }
    const __m512 scale = _mm512_set1_ps(score_scale);
    // Each row's causal limit and window (q_len > 1: rows are (new token, head) pairs), only
    // when the span holds a token some row does not see (q_len 1: never, so the plain loop runs).
    const std::int64_t rel0 = span.token0 - lim.base;
    const bool masked = begin < valid && lim.masked(rel0 + begin, rel0 + valid - 1);
    if (F == kScorePlain && !masked) {
      for (std::int64_t j = 0; j < valid * RV; ++j) _mm512_store_ps(s + j * kLanes, _mm512_mul_ps(_mm512_load_ps(s + j * kLanes), scale));
    } else {  // the score epilogue on the span's tokens (rows before `begin` are never read)
      for (std::int64_t j = begin; j < valid; ++j)
        for (int v = 0; v < RV; ++v) {
          float* x = s + (j * RV + v) * kLanes;
          __m512 y = st.template logit_rows<F>(_mm512_load_ps(x), scale, v, span.token0 + j);
          if (masked) y = lim.hide(y, v, static_cast<std::int32_t>(rel0 + j));
          _mm512_store_ps(x, y);
        }
    }
  }

  // Vector SF (shared with the avx512bf16 kernel), then the P pairs row-major for the tile unit:
  // pairs before the span and past the page's pairs are P = 0.
  void softmax(const PageSpan& span) {
    this->softmax_pairs(span.begin, span.end);
    for (std::int64_t jp = 0; jp < span.begin / 2; ++jp)
      for (int v = 0; v < RV; ++v) _mm512_store_si512(pp + jp * W + v * kLanes, _mm512_setzero_si512());
    const std::int64_t pairs = (span.end + 1) / 2;
    for (std::int64_t jp = pairs; jp < pairs_pad; ++jp)
      for (int v = 0; v < RV; ++v) _mm512_store_si512(pp + jp * W + v * kLanes, _mm512_setzero_si512());
    for (std::int64_t jp0 = 0; jp0 < pairs_pad; jp0 += 16)
      for (int v = 0; v < RV; ++v) {
        __m512i r[16];
        for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(pp + (jp0 + i) * W + v * kLanes);
        transpose16(r);
        for (int i = 0; i < 16; ++i) _mm512_storeu_si512(prm + (v * kLanes + i) * pairs_pad + jp0, r[i]);
      }
  }

  // Vector UP (O = alpha * O, per row) then cube PV accumulating P.V into O on the tile unit;
  // then L = alpha * L + l_i.
  void pv(const PageSpan& span) {
    const std::int64_t pairs = (span.end + 1) / 2;
    interleave_v<KV>(pr, job.kv_head, dim, vi, span.page, span.begin, span.end, 0, (pairs + 15) / 16 * 16, span.next_page);
    alignas(64) float a[W];
    for (int v = 0; v < RV; ++v) _mm512_store_ps(a + v * kLanes, st.alpha[v]);
    for (int r = 0; r < W; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r]);
      float* orow = o + r * dim;
      for (std::int64_t d = 0; d < dim; d += 16) _mm512_store_ps(orow + d, _mm512_mul_ps(ar, _mm512_load_ps(orow + d)));
    }
    // O tiles 0..RV-1 per 16 positions; V pairs alternate between tiles 4/5, P rows 6/7.
    const std::int64_t steps = (pairs + 15) / 16, pstride = pairs_pad * 4, vstride = dim * 4;
    for (std::int64_t pos = 0; pos < dim; pos += 16) {
      float* ot = o + pos;
      const std::int64_t orow = kLanes * dim;  // 16 rows of O
      _tile_loadd(0, ot, vstride);
      if constexpr (RV > 1) _tile_loadd(1, ot + orow, vstride);
      if constexpr (RV > 2) _tile_loadd(2, ot + 2 * orow, vstride);
      if constexpr (RV > 3) _tile_loadd(3, ot + 3 * orow, vstride);
      const std::uint32_t* p = prm;
      const std::int64_t prow = kLanes * pairs_pad;
      for (std::int64_t k = 0; k < steps; ++k) {
        const std::uint32_t* v = vi + 16 * k * dim + pos;
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
      _tile_stored(0, ot, vstride);
      if constexpr (RV > 1) _tile_stored(1, ot + orow, vstride);
      if constexpr (RV > 2) _tile_stored(2, ot + 2 * orow, vstride);
      if constexpr (RV > 3) _tile_stored(3, ot + 3 * orow, vstride);
    }
    st.update_l();
  }

  void finish(const ChunkOut& out) {
    _tile_release();
    if (out_scale != 1.0f)  // v_scale and the dtype's factor, once per chunk (O is linear in V)
      for (std::int64_t i = 0; i < W * dim; ++i) o[i] *= out_scale;
    this->write_back(out, [d = dim](int r, std::int64_t pos) { return r * d + pos; });
  }
};

template <int RV, unsigned F, class KV>
void attend(const ChunkJob& job, const ChunkOut& out) {
  AmxTile<RV, F, KV> tile(job);
  drive_chunk(tile, job, out);
}

template <class KV>
void attend_as(const ChunkJob& job, const ChunkOut& out) {
  simd::with_score_features(job.problem->variant.score_features(), [&]<unsigned F>() {
    switch ((job.rows + kLanes - 1) / kLanes) {
      case 1: return attend<1, F, KV>(job, out);
      case 2: return attend<2, F, KV>(job, out);
      case 3: return attend<3, F, KV>(job, out);
      default: return attend<4, F, KV>(job, out);
    }
  });
}

}  // namespace

void attend_chunk_amx(const ChunkJob& job, const ChunkOut& out) {
  switch (job.problem->kv_dtype) {
    case DType::kF8E4M3: return attend_as<e4m3>(job, out);
    case DType::kF8E5M2: return attend_as<e5m2>(job, out);
    default: return attend_as<bf16>(job, out);
  }
}

}  // namespace mixpa::cpu

#pragma GCC pop_options
