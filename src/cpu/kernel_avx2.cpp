// AVX2/FMA flavour of the chunk kernel, for x86-64 CPUs without AVX-512 BF16.
//
// Same layout as the AVX-512 flavour (rows of the head tile in SIMD lanes, 8 per ymm,
// RV8 = 1, 2 or 4 ymm; tiles of more than 32 rows run as 32-row sub-tiles), but in fp32:
// a bf16 pair (x0, x1) loaded as one 32-bit word gives x0 = word << 16, x1 = word & 0xffff0000
// exactly, so K and V rows are read once, straight from the cache, with no conversion pass.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/chunk_kernel.h"
#include "cpu/scratch.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace mixpa::cpu {
namespace {

constexpr int kLanes = 8;

inline __m256i bcst_pair(const bf16* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}
inline __m256 lo_of(__m256i pair) { return _mm256_castsi256_ps(_mm256_slli_epi32(pair, 16)); }
inline __m256 hi_of(__m256i pair) {
  return _mm256_castsi256_ps(_mm256_and_si256(pair, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

// exp(x) for x <= 0; 0 below -87.3 (and for -inf). 2^n is built in the exponent field.
inline __m256 exp256(__m256 x) {
  const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
}

// Round to nearest even bf16, kept as fp32 (P is finite and non-negative here).
inline __m256 round_bf16(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd);
  return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

struct Tile {
  const ChunkJob* job;
  const Problem* pr;
  std::int64_t dim, bs;
  float* qt;  // [dim][W]
  float* s;   // [bs][W]  scores, then rounded P
  float* ot;  // [dim][W]
  float m[32], l[32];
};

// Cube QK for NJ tokens from j0.
template <int RV, int NJ>
inline void qk_tokens(Tile& t, std::int64_t page, std::int64_t j0, __m256 scale) {
  constexpr int W = RV * kLanes;
  const bf16* k[NJ];
  for (int j = 0; j < NJ; ++j) k[j] = t.pr->key_row(page, j0 + j, t.job->kv_head);
  __m256 acc[NJ][RV];
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) acc[j][v] = _mm256_setzero_ps();
  for (std::int64_t d = 0; d < t.dim; d += 2) {
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) {
      const __m256i pair = bcst_pair(k[j] + d);
      const __m256 lo = lo_of(pair), hi = hi_of(pair);
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) {
        acc[j][v] = _mm256_fmadd_ps(_mm256_load_ps(t.qt + d * W + v * kLanes), lo, acc[j][v]);
        acc[j][v] = _mm256_fmadd_ps(_mm256_load_ps(t.qt + (d + 1) * W + v * kLanes), hi, acc[j][v]);
      }
    }
  }
  for (int j = 0; j < NJ; ++j)
    for (int v = 0; v < RV; ++v) _mm256_store_ps(t.s + (j0 + j) * W + v * kLanes, _mm256_mul_ps(acc[j][v], scale));
}

template <int RV>
void qk_page(Tile& t, std::int64_t page, std::int64_t valid) {
  constexpr int NJ = 8 / RV;
  const __m256 scale = _mm256_set1_ps(t.pr->scale);
  std::int64_t j = 0;
  for (; j + NJ <= valid; j += NJ) qk_tokens<RV, NJ>(t, page, j, scale);
  for (; j < valid; ++j) qk_tokens<RV, 1>(t, page, j, scale);
}

// Vector SF: running max, P rounded to bf16 (overwrites s), l_i, alpha.
template <int RV>
void softmax_page(Tile& t, std::int64_t valid, __m256* alpha, __m256* l_i) {
  constexpr int W = RV * kLanes;
  for (int v = 0; v < RV; ++v) {
    const __m256 m_old = _mm256_loadu_ps(t.m + v * kLanes);
    __m256 mx = m_old;
    for (std::int64_t j = 0; j < valid; ++j) mx = _mm256_max_ps(mx, _mm256_load_ps(t.s + j * W + v * kLanes));
    alpha[v] = exp256(_mm256_sub_ps(m_old, mx));
    __m256 sum = _mm256_setzero_ps();
    for (std::int64_t j = 0; j < valid; ++j) {
      float* s = t.s + j * W + v * kLanes;
      const __m256 p = round_bf16(exp256(_mm256_sub_ps(_mm256_load_ps(s), mx)));
      _mm256_store_ps(s, p);
      sum = _mm256_add_ps(sum, p);
    }
    _mm256_storeu_ps(t.m + v * kLanes, mx);
    l_i[v] = sum;
  }
}

// Cube PV, then vector UP (O = alpha * O + oi), 2*TP dims at a time.
template <int RV>
void pv_page(Tile& t, std::int64_t page, std::int64_t valid, const __m256* alpha) {
  constexpr int W = RV * kLanes, TP = 4 / RV;
  for (std::int64_t d0 = 0; d0 < t.dim; d0 += 2 * TP) {
    __m256 acc[2 * TP][RV];
    for (int d = 0; d < 2 * TP; ++d)
      for (int v = 0; v < RV; ++v) acc[d][v] = _mm256_setzero_ps();
    for (std::int64_t j = 0; j < valid; ++j) {
      const bf16* vrow = t.pr->value_row(page, j, t.job->kv_head) + d0;
#pragma GCC unroll 4
      for (int d = 0; d < TP; ++d) {
        const __m256i pair = bcst_pair(vrow + 2 * d);
        const __m256 lo = lo_of(pair), hi = hi_of(pair);
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v) {
          const __m256 p = _mm256_load_ps(t.s + j * W + v * kLanes);
          acc[2 * d][v] = _mm256_fmadd_ps(p, lo, acc[2 * d][v]);
          acc[2 * d + 1][v] = _mm256_fmadd_ps(p, hi, acc[2 * d + 1][v]);
        }
      }
    }
    for (int d = 0; d < 2 * TP; ++d)
      for (int v = 0; v < RV; ++v) {
        float* o = t.ot + (d0 + d) * W + v * kLanes;
        _mm256_store_ps(o, _mm256_fmadd_ps(alpha[v], _mm256_load_ps(o), acc[d][v]));
      }
  }
}

template <int RV>
void attend(const ChunkJob& job, const ChunkOut& out) {
  constexpr int W = RV * kLanes;
  const Problem& pr = *job.problem;
  Tile t{&job, &pr, pr.shape.head_dim, pr.shape.block_size, nullptr, nullptr, nullptr, {}, {}};
  t.qt = static_cast<float*>(scratch(0, t.dim * W * 4));
  t.s = static_cast<float*>(scratch(1, t.bs * W * 4));
  t.ot = static_cast<float*>(scratch(4, t.dim * W * 4));
  for (std::int64_t d = 0; d < t.dim; ++d)
    for (int r = 0; r < W; ++r) t.qt[d * W + r] = r < job.rows ? pr.query_row(job.batch, job.head_begin + r)[d].to_float() : 0.0f;
  for (std::int64_t i = 0; i < t.dim * W; ++i) t.ot[i] = 0.0f;
  for (int r = 0; r < W; ++r) {
    t.m[r] = -__builtin_inff();
    t.l[r] = 0.0f;
  }
  const std::int64_t len = pr.context_len(job.batch);
  for (std::int64_t i = job.page_begin; i < job.page_end; ++i) {
    const std::int64_t page = pr.page(job.batch, i);
    const std::int64_t valid = len - i * t.bs < t.bs ? len - i * t.bs : t.bs;
    __m256 alpha[RV], l_i[RV];
    qk_page<RV>(t, page, valid);
    softmax_page<RV>(t, valid, alpha, l_i);
    pv_page<RV>(t, page, valid, alpha);
    for (int v = 0; v < RV; ++v)  // UP of the softmax state
      _mm256_storeu_ps(t.l + v * kLanes, _mm256_fmadd_ps(alpha[v], _mm256_loadu_ps(t.l + v * kLanes), l_i[v]));
  }
  for (int r = 0; r < job.rows; ++r) {
    for (std::int64_t d = 0; d < t.dim; ++d) out.o[r * t.dim + d] = t.ot[d * W + r];
    out.m[r] = t.m[r];
    out.l[r] = t.l[r];
  }
}

}  // namespace

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
