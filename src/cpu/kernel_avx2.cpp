// AVX2/FMA flavour of the chunk kernel, for x86-64 CPUs without AVX-512.
//
// Same layout as the AVX-512 flavour (rows of the head tile in SIMD lanes, 8 per ymm,
// RV8 = 1, 2 or 4 ymm; tiles of more than 32 rows run as 32-row sub-tiles), but in fp32:
// a bf16 pair (x0, x1) loaded as one 32-bit word gives x0 = word << 16, x1 = word & 0xffff0000
// exactly, so K and V rows are read once, straight from the cache, with no conversion pass.
// The page loop is the chunk driver's (chunk_driver.h); exp and the score epilogue are simd.h's.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/chunk_driver.h"
#include "cpu/chunk_kernel.h"
#include "cpu/scratch.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "cpu/simd_avx2.h"

namespace mixpa::cpu {
namespace {

using D = simd::Avx2;
constexpr int kLanes = D::kLanes;

inline __m256i bcst_pair(const bf16* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}
inline __m256 lo_of(__m256i pair) { return _mm256_castsi256_ps(_mm256_slli_epi32(pair, 16)); }
inline __m256 hi_of(__m256i pair) {
  return _mm256_castsi256_ps(_mm256_and_si256(pair, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

// Round to nearest even bf16, kept as fp32 (P is finite and non-negative here).
inline __m256 round_bf16(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd);
  return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

// One head tile of <= 32 rows (RV ymm of rows) as the driver's stages; F = the score features.
template <int RV, unsigned F>
struct Avx2Tile {
  static constexpr int W = RV * kLanes;
  const ChunkJob& job;
  const Problem& pr;
  std::int64_t dim, bs;
  float* qt;  // [dim][W]
  float* s;   // [bs][W]  scores, then rounded P
  float* ot;  // [dim][W]
  float m[32], l[32];
  __m256 alpha[RV], l_i[RV];
  simd::Epilogue<D> epi;  // score epilogue: soft-cap
  __m256 slope[RV];       // ALiBi slope per row (0 without)
  std::int64_t pos;       // the query's position (ALiBi)

  explicit Avx2Tile(const ChunkJob& j) : job(j), pr(*j.problem), dim(pr.shape.head_dim), bs(pr.shape.block_size) {
    qt = static_cast<float*>(scratch(0, dim * W * 4));
    s = static_cast<float*>(scratch(1, bs * W * 4));
    ot = static_cast<float*>(scratch(4, dim * W * 4));
    for (std::int64_t d = 0; d < dim; ++d)
      for (int r = 0; r < W; ++r) qt[d * W + r] = r < job.rows ? pr.query_row(job.batch, job.head_begin + r)[d].to_float() : 0.0f;
    for (std::int64_t i = 0; i < dim * W; ++i) ot[i] = 0.0f;
    for (int r = 0; r < W; ++r) {
      m[r] = -__builtin_inff();
      l[r] = 0.0f;
    }
    const simd::ScoreParams sp = simd::score_params(pr, job.batch);
    alignas(32) float sl[W];
    for (int r = 0; r < W; ++r) sl[r] = sp.slopes != nullptr && r < job.rows ? sp.slopes[job.head_begin + r] : 0.0f;
    for (int v = 0; v < RV; ++v) slope[v] = _mm256_load_ps(sl + v * kLanes);
    epi = simd::epilogue_of<D>(sp);
    pos = sp.pos;
  }

  // Cube QK for NJ tokens from j0.
  template <int NJ>
  void qk_tokens(std::int64_t page, std::int64_t j0, std::int64_t token0, __m256 scale) {
    const bf16* k[NJ];
    for (int j = 0; j < NJ; ++j) k[j] = pr.key_row(page, j0 + j, job.kv_head);
    __m256 acc[NJ][RV];
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) acc[j][v] = _mm256_setzero_ps();
    for (std::int64_t d = 0; d < dim; d += 2) {
#pragma GCC unroll 8
      for (int j = 0; j < NJ; ++j) {
        const __m256i pair = bcst_pair(k[j] + d);
        const __m256 lo = lo_of(pair), hi = hi_of(pair);
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v) {
          acc[j][v] = _mm256_fmadd_ps(_mm256_load_ps(qt + d * W + v * kLanes), lo, acc[j][v]);
          acc[j][v] = _mm256_fmadd_ps(_mm256_load_ps(qt + (d + 1) * W + v * kLanes), hi, acc[j][v]);
        }
      }
    }
    for (int j = 0; j < NJ; ++j) {
      const __m256 delta = _mm256_set1_ps(static_cast<float>(token0 + j0 + j - pos));
      for (int v = 0; v < RV; ++v)
        _mm256_store_ps(s + (j0 + j) * W + v * kLanes,
                        simd::score_epilogue<F, D>(_mm256_mul_ps(acc[j][v], scale), epi, slope[v], delta));
    }
  }

  void qk(const PageSpan& span) {
    constexpr int NJ = 8 / RV;
    const __m256 scale = _mm256_set1_ps(pr.scale);
    std::int64_t j = span.begin;
    for (; j + NJ <= span.end; j += NJ) qk_tokens<NJ>(span.page, j, span.token0, scale);
    for (; j < span.end; ++j) qk_tokens<1>(span.page, j, span.token0, scale);
  }

  // Vector SF: running max, P rounded to bf16 (overwrites s), l_i, alpha.
  void softmax(const PageSpan& span) {
    for (int v = 0; v < RV; ++v) {
      const __m256 m_old = _mm256_loadu_ps(m + v * kLanes);
      __m256 mx = m_old;
      for (std::int64_t j = span.begin; j < span.end; ++j) mx = _mm256_max_ps(mx, _mm256_load_ps(s + j * W + v * kLanes));
      alpha[v] = simd::exp_neg<D>(_mm256_sub_ps(m_old, mx));
      __m256 sum = _mm256_setzero_ps();
      for (std::int64_t j = span.begin; j < span.end; ++j) {
        float* sj = s + j * W + v * kLanes;
        const __m256 p = round_bf16(simd::exp_neg<D>(_mm256_sub_ps(_mm256_load_ps(sj), mx)));
        _mm256_store_ps(sj, p);
        sum = _mm256_add_ps(sum, p);
      }
      _mm256_storeu_ps(m + v * kLanes, mx);
      l_i[v] = sum;
    }
  }

  // Cube PV, then vector UP (O = alpha * O + oi, L = alpha * L + l_i), 2*TP dims at a time.
  void pv(const PageSpan& span) {
    constexpr int TP = 4 / RV;
    for (std::int64_t d0 = 0; d0 < dim; d0 += 2 * TP) {
      __m256 acc[2 * TP][RV];
      for (int d = 0; d < 2 * TP; ++d)
        for (int v = 0; v < RV; ++v) acc[d][v] = _mm256_setzero_ps();
      for (std::int64_t j = span.begin; j < span.end; ++j) {
        const bf16* vrow = pr.value_row(span.page, j, job.kv_head) + d0;
#pragma GCC unroll 4
        for (int d = 0; d < TP; ++d) {
          const __m256i pair = bcst_pair(vrow + 2 * d);
          const __m256 lo = lo_of(pair), hi = hi_of(pair);
#pragma GCC unroll 4
          for (int v = 0; v < RV; ++v) {
            const __m256 p = _mm256_load_ps(s + j * W + v * kLanes);
            acc[2 * d][v] = _mm256_fmadd_ps(p, lo, acc[2 * d][v]);
            acc[2 * d + 1][v] = _mm256_fmadd_ps(p, hi, acc[2 * d + 1][v]);
          }
        }
      }
      for (int d = 0; d < 2 * TP; ++d)
        for (int v = 0; v < RV; ++v) {
          float* o = ot + (d0 + d) * W + v * kLanes;
          _mm256_store_ps(o, _mm256_fmadd_ps(alpha[v], _mm256_load_ps(o), acc[d][v]));
        }
    }
    for (int v = 0; v < RV; ++v)
      _mm256_storeu_ps(l + v * kLanes, _mm256_fmadd_ps(alpha[v], _mm256_loadu_ps(l + v * kLanes), l_i[v]));
  }

  void finish(const ChunkOut& out) {
    for (int r = 0; r < job.rows; ++r) {
      for (std::int64_t d = 0; d < dim; ++d) out.o[r * dim + d] = ot[d * W + r];
      out.m[r] = m[r];
      out.l[r] = l[r];
    }
  }
};

template <int RV>
void attend(const ChunkJob& job, const ChunkOut& out) {
  simd::with_score_features(job.problem->variant.score_features(), [&]<unsigned F>() {
    Avx2Tile<RV, F> tile(job);
    drive_chunk(tile, job, out);
  });
}

}  // namespace

void tanh_avx2(const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i + kLanes <= n; i += kLanes) _mm256_storeu_ps(y + i, simd::tanh<D>(_mm256_loadu_ps(x + i)));
}

void attend_chunk_avx2(const ChunkJob& job, const ChunkOut& out) {
  const std::int64_t dim = job.problem->shape.head_dim;
  for (int r0 = 0; r0 < job.rows; r0 += 32) {  // 32-row sub-tiles keep the accumulators in registers
    ChunkJob sub = job;
    sub.head_begin = job.head_begin + r0;
    sub.rows = job.rows - r0 < 32 ? job.rows - r0 : 32;
    const ChunkOut part{out.o + r0 * dim, out.m + r0, out.l + r0};
    if (sub.rows <= 8) attend<1>(sub, part);
    else if (sub.rows <= 16) attend<2>(sub, part);
    else attend<4>(sub, part);
  }
}

}  // namespace mixpa::cpu

#pragma GCC pop_options
