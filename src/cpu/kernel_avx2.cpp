// AVX2/FMA flavour of the chunk kernel, for x86-64 CPUs without AVX-512 (Zen 2/3, Haswell to
// Alder Lake). The avx512 flavour's design at 8 lanes:
//   rows of the head tile in SIMD lanes (8 per ymm, RV = 1, 2 or 4 ymm; tiles of more than 32
//   rows run as 32-row sub-tiles), so m, l and alpha are plain vectors;
//   QK  s[j] (lanes = rows) += Qt[pos] * bcst(Kf[j][pos])   vbroadcastss is a load, not an ALU op
//   SF  P = bf16(exp(s - M)) with one rounding (simd::exp_bf16), l = sum of the rounded P
//   PV  ot[pos] (lanes = rows) += P[j] * bcst(Vf[j][pos])
// K and V rows are widened to fp32 once per tile (a 32-byte load gives the even elements by
// x << 16 and the odd ones by x & 0xffff0000: "position" order), into small buffers that stay in
// L1; Qt and ot use the same order, ot is put back in dim order once per chunk. head_dim is a
// template value, so each broadcast of an inner step is a constant offset from one base
// register, and NJ x RV (QK) or TD x RV (PV) accumulators stay in the 16 ymm registers. UP's
// rescale is fused into the first PV block's write-back. Memory: the next token block's rows
// (and after the last, the next page's first rows) are prefetched into L1 during the current
// block's FMAs; pages reach L2 through the hardware streamer.
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

using D8 = simd::Avx2;
constexpr int kLanes = D8::kLanes;
constexpr int kPvBlockFloats = 4096;  // widened V floats per PV token block (16 KiB, in L1)
constexpr int kMaxNJ = 8;

// Position p of a widened row: per 16-element chunk, the 8 even elements then the 8 odd ones.
inline std::int64_t position_dim(std::int64_t pos) {
  const std::int64_t q = pos % 16;
  return pos - q + (q < 8 ? 2 * q : 2 * (q - 8) + 1);
}

// dst[0, dim) = the bf16 row src in position order (dim a multiple of 16).
template <int D>
inline void widen_row(const bf16* src, float* dst) {
#pragma GCC unroll 16
  for (int c = 0; c < D; c += 16) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + c));
    _mm256_store_ps(dst + c, _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)));
    _mm256_store_ps(dst + c + 8, _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(static_cast<int>(0xffff0000u)))));
  }
}

// Rows [j0, j0 + rows) of a page's K or V rows, one cache line per issue(), into L1.
struct LineStream {
  const char* row = nullptr;
  std::int64_t stride = 0;
  int lines_per_row = 0, line = 0;
  std::int64_t left = 0;
  void issue() {
    if (left > 0) {
      _mm_prefetch(row + line * 64, _MM_HINT_T0);
      if (++line == lines_per_row) {
        line = 0;
        row += stride;
      }
      --left;
    }
  }
};

inline LineStream rows_of(const bf16* row0, std::int64_t stride_elems, std::int64_t dim, std::int64_t rows) {
  LineStream s;
  if (row0 == nullptr || rows <= 0) return s;
  s.row = reinterpret_cast<const char*>(row0);
  s.stride = stride_elems * 2;
  s.lines_per_row = static_cast<int>(dim / 32);
  s.left = rows * (dim / 32);
  return s;
}

// One head tile of <= 32 rows (RV ymm of rows) as the driver's stages; F = the score features.
template <int RV, int D, unsigned F>
struct Avx2Tile {
  static constexpr int W = RV * kLanes;
  static constexpr int NJ = 8 / RV;              // QK tokens per block: NJ x RV = 8 chains
  static constexpr int TD = RV == 1 ? 8 : 8 / RV;  // PV positions per pass: TD x RV = 8 chains
  static constexpr int TB = kPvBlockFloats / D;  // PV tokens per block
  const ChunkJob& job;
  const Problem& pr;
  std::int64_t bs, k_stride, v_stride;
  float* qt;  // [D][W]   Q, lanes = rows, position order
  float* kf;  // [NJ][D]  widened K rows of one token block
  float* s;   // [bs][W]  scores, then rounded P
  float* vf;  // [TB][D]  widened V rows of one PV block
  float* ot;  // [D][W]   running O, position order
  simd::LaneRows<D8, RV> st;  // m, l, alpha, l_i and the score epilogue per row

  explicit Avx2Tile(const ChunkJob& j)
      : job(j), pr(*j.problem), bs(pr.shape.block_size), k_stride(pr.k_strides.row), v_stride(pr.v_strides.row) {
    qt = static_cast<float*>(scratch(0, D * W * 4));
    kf = static_cast<float*>(scratch(1, kMaxNJ * D * 4));
    s = static_cast<float*>(scratch(2, bs * W * 4));
    vf = static_cast<float*>(scratch(3, kPvBlockFloats * 4));
    ot = static_cast<float*>(scratch(4, D * W * 4));
    alignas(32) float q_row[256];
    for (int r = 0; r < W; ++r) {
      if (r < job.rows) widen_row<D>(pr.query_row(job.batch, job.head_begin + r), q_row);
      for (int p = 0; p < D; ++p) qt[p * W + r] = r < job.rows ? q_row[p] : 0.0f;
    }
    for (int i = 0; i < D * W; ++i) ot[i] = 0.0f;
    st.init(pr, job.batch, job.head_begin, job.rows);
  }

  const bf16* key(std::int64_t page, std::int64_t j) const { return pr.key_row(page, j, job.kv_head); }
  const bf16* value(std::int64_t page, std::int64_t j) const { return pr.value_row(page, j, job.kv_head); }

  // Cube QK for A consecutive tokens from j0: widen their K rows, then A x RV chains over the
  // D positions, the score epilogue on the way out. Meanwhile `next` streams into L1.
  template <int A>
  void qk_tokens(std::int64_t page, std::int64_t j0, std::int64_t token0, __m256 scale, LineStream& next) {
    for (int j = 0; j < A; ++j) widen_row<D>(key(page, j0 + j), kf + j * D);
    __m256 acc[A][RV];
    simd::zero<D8>(acc);
    constexpr int kEvery = 32 / A;  // the next block's A * D / 32 lines over the D steps
#pragma GCC unroll 2
    for (int p = 0; p < D; ++p) {
      if (p % kEvery == 0) next.issue();
      simd::fma_step<D8, RV, A, D>(acc, qt + p * W, kf + p);
    }
    for (int j = 0; j < A; ++j)
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v)
        _mm256_store_ps(s + (j0 + j) * W + v * kLanes, st.template logit<F>(acc[j][v], scale, v, token0 + j0 + j));
  }

  void qk(const PageSpan& span) {
    const __m256 scale = _mm256_set1_ps(pr.variant.scale);
    const std::int64_t end = span.end;
    std::int64_t j = span.begin;
    for (; j + NJ <= end; j += NJ) {
      // The next block's K rows, or after the last block PV's first V rows.
      LineStream next = j + 2 * NJ <= end ? rows_of(key(span.page, j + NJ), k_stride, D, NJ)
                                          : rows_of(value(span.page, span.begin), v_stride, D, end - span.begin < TB ? end - span.begin : TB);
      qk_tokens<NJ>(span.page, j, span.token0, scale, next);
    }
    LineStream none;
    for (; j < end; ++j) qk_tokens<1>(span.page, j, span.token0, scale, none);
  }

  // Vector SF (simd.h): running max, P = bf16(exp(s - M)) in place, l_i, alpha.
  void softmax(const PageSpan& span) { st.softmax(s, span.begin, span.end); }

  // Cube PV then vector UP, in blocks of TB tokens whose widened V rows (16 KiB) stay in L1; per
  // block TD positions at a time (TD x RV accumulators in registers); UP fused into the first
  // block's write-back (O = alpha * O + oi_0), later blocks add theirs. Then L = alpha * L + l_i.
  void pv(const PageSpan& span) {
    const std::int64_t page = span.page, begin = span.begin, end = span.end;
    for (std::int64_t j0 = begin; j0 < end; j0 += TB) {
      const std::int64_t n = end - j0 < TB ? end - j0 : TB;
      for (std::int64_t j = 0; j < n; ++j) widen_row<D>(value(page, j0 + j), vf + j * D);
      // The next block's V rows, or after the last block the next page's first K rows.
      LineStream next = j0 + TB < end ? rows_of(value(page, j0 + TB), v_stride, D, end - j0 - TB < TB ? end - j0 - TB : TB)
                        : span.next_page >= 0 ? rows_of(key(span.next_page, 0), k_stride, D, 2 * NJ)
                                              : LineStream{};
      const std::int64_t every = next.left > 0 ? (n * (D / TD) + next.left - 1) / next.left : 1 << 30;
      std::int64_t tick = 0;
      const float* p_block = s + j0 * W;
      for (int p0 = 0; p0 < D; p0 += TD) {
        __m256 acc[TD][RV];
        simd::zero<D8>(acc);
        for (std::int64_t j = 0; j < n; ++j) {
          if (++tick == every) {
            tick = 0;
            next.issue();
          }
          simd::fma_step<D8, RV, TD, 1>(acc, p_block + j * W, vf + j * D + p0);
        }
#pragma GCC unroll 8
        for (int d = 0; d < TD; ++d)
#pragma GCC unroll 4
          for (int v = 0; v < RV; ++v) {
            float* o = ot + (p0 + d) * W + v * kLanes;
            const __m256 old = _mm256_load_ps(o);
            _mm256_store_ps(o, j0 == begin ? simd::up<D8>(st.alpha[v], old, acc[d][v]) : _mm256_add_ps(old, acc[d][v]));
          }
      }
    }
    st.update_l();
  }

  void finish(const ChunkOut& out) {
    for (int r = 0; r < job.rows; ++r) {
      for (int p = 0; p < D; ++p) out.o[r * D + position_dim(p)] = ot[p * W + r];
      out.m[r] = st.m[r];
      out.l[r] = st.l[r];
    }
  }
};

template <int RV, int D>
void attend(const ChunkJob& job, const ChunkOut& out) {
  simd::with_score_features(job.problem->variant.score_features(), [&]<unsigned F>() {
    Avx2Tile<RV, D, F> tile(job);
    drive_chunk(tile, job, out);
  });
}

template <int RV>
void attend_dim(const ChunkJob& job, const ChunkOut& out) {
  switch (job.problem->shape.head_dim) {
    case 64: return attend<RV, 64>(job, out);
    case 128: return attend<RV, 128>(job, out);
    default: return attend<RV, 256>(job, out);  // validate() admits 64, 128 and 256 only
  }
}

}  // namespace

void tanh_avx2(const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i + kLanes <= n; i += kLanes) _mm256_storeu_ps(y + i, simd::tanh<D8>(_mm256_loadu_ps(x + i)));
}

void exp_bf16_avx2(const float* x, float* p, std::int64_t n) {
  for (std::int64_t i = 0; i + kLanes <= n; i += kLanes) _mm256_storeu_ps(p + i, simd::exp_bf16<D8>(_mm256_loadu_ps(x + i)));
}

void attend_chunk_avx2(const ChunkJob& job, const ChunkOut& out) {
  const std::int64_t dim = job.problem->shape.head_dim;
  for (int r0 = 0; r0 < job.rows; r0 += 32) {  // 32-row sub-tiles keep the accumulators in registers
    ChunkJob sub = job;
    sub.head_begin = job.head_begin + r0;
    sub.rows = job.rows - r0 < 32 ? job.rows - r0 : 32;
    const ChunkOut part{out.o + r0 * dim, out.m + r0, out.l + r0};
    if (sub.rows <= 8) attend_dim<1>(sub, part);
    else if (sub.rows <= 16) attend_dim<2>(sub, part);
    else attend_dim<4>(sub, part);
  }
}

}  // namespace mixpa::cpu

#pragma GCC pop_options
