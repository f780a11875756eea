// AVX-512F flavour of the chunk kernel, for CPUs with AVX-512 but without its BF16 dot product
// (Ice Lake, and VMs that hide AVX512_BF16/AMX): bf16 widened to fp32, vfmadd231ps.
//
// Layout: the head tile's rows live in SIMD lanes (16 rows per zmm, RV = 1..4 zmm per tile),
// so m, l and the rescale factor are plain vectors and no horizontal reduction is needed:
//   QK  s[j]   (lanes = rows) += Qt[pos] * bcst(Kf[j][pos])    vfmadd231ps zmm, zmm, m32{1to16}
//   SF  P = bf16(exp(s - M)) kept as fp32 (exactly representable), l = sum of the rounded P
//   PV  ot[pos] (lanes = rows) += P[j] * bcst(Vf[j][pos])
// The broadcast operand must be fp32 in memory, so each K and V row is widened once per tile
// (one shift or mask per 16 elements, ~3% of the FMAs) into a small buffer that stays in L1.
// Memory: the next token block's rows are prefetched into L1 (T0) a line at a time during the
// current block's FMAs; pages reach L2 through the hardware prefetchers. Also prefetching every
// line of the next page into L2 measured slower (Case1 87 vs 83 ms, Decode32k 12.5 vs 10.9 ms):
// software prefetches hold L1 fill buffers, which caps one core near 7 GB/s here.
// Widening splits each 32-element chunk into even and odd elements (x << 16, x & 0xffff0000);
// Qt and ot use the same "position" order, and ot is put back in dim order once per chunk.
#include "cpu/x86_intrinsics.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "cpu/chunk_driver.h"
#include "cpu/chunk_kernel.h"
#include "cpu/scratch.h"

#if MIXPA_CPU_NATIVE
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2")
#endif
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "cpu/kernel_avx512_common.h"
#include "cpu/kernel_avx512_parts.h"

namespace mixpa::cpu {
MIXPA_CPU_FLAVOURS_BEGIN
namespace {

using avx512::kLanes;
using avx512::block_lines;
using avx512::BlockStream;
using avx512::exp_bf16;
using avx512::store_dim_order;
using avx512::widen_row;

constexpr int kMaxNJ = 16;
constexpr int kPvBlockFloats = 4096;  // widened V floats per PV token block (16 KiB, in L1)

// One head tile (W = RV * 16 rows in lanes) as the chunk driver's stages; F = the score features,
// KV = the cache's element type (SPEC §6: bf16, f16, e4m3, e5m2; widened in the K/V loads).
template <int RV, int D, unsigned F, class KV>
struct Avx512Tile {
  using Row = avx512::CacheRow512<KV>;
  static constexpr int W = RV * kLanes;
  const ChunkJob& job;
  const Problem* pr;
  std::int64_t bs;
  float* qt;  // [dim][W]   Q, lanes = rows, position order
  float* kf;  // [kMaxNJ][dim]  widened K rows of one token block
  float* s;   // [bs][W]    scaled scores, then the rounded P
  float* vf;  // [TB][dim]  widened V rows of one PV token block
  float* ot;  // [dim][W]   running unnormalised output, position order
  simd::LaneRows<simd::Avx512, RV> st;  // m, l, alpha, l_i and the score epilogue per row
  // Rows are (new token, head) pairs (SPEC §6 q_len 1..16; job_row): each row's causal limit and
  // window (simd.h).
  simd::RowLimits<simd::Avx512, RV> lim;
  float score_scale;  // scale * k_scale (times Row::kFactor)
  float out_scale;    // v_scale (times Row::kFactor)

  explicit Avx512Tile(const ChunkJob& j) : job(j), pr(j.problem), bs(pr->shape.block_size) {
    qt = static_cast<float*>(scratch(0, D * W * 4));
    kf = static_cast<float*>(scratch(1, kMaxNJ * D * 4));
    s = static_cast<float*>(scratch(2, bs * W * 4));
    vf = static_cast<float*>(scratch(3, kPvBlockFloats * 4));
    ot = static_cast<float*>(scratch(4, D * W * 4));
    // Q transposed (lanes = rows) in the cache's position order; each row's limits and state.
    alignas(64) float q_row[256];
    lim.init(job, st, [&](int r, const JobRow* jr) {
      if (jr != nullptr) avx512::query_floats(*pr, job.batch, jr->token, jr->head, q_row);
      for (std::int64_t pos = 0; pos < D; ++pos) qt[pos * W + r] = jr != nullptr ? q_row[Row::position_dim(pos)] : 0.0f;
    });
    score_scale = pr->variant.scale * pr->k_scale * Row::kFactor;  // the formula of every flavour
    out_scale = pr->v_scale * Row::kFactor;
    for (std::int64_t i = 0; i < D * W; ++i) ot[i] = 0.0f;
  }

  // The first page's K and V rows into L2 before its QK.
  void first(const PageSpan& span) { avx512::prefetch_rows(pr, job.kv_head, D, span.page, 0, bs); }

  // Cube QK for NJ consecutive tokens from j0: widen their K rows, then NJ x RV chains.
  // Meanwhile the next block's rows stream into L1.
  template <int NJ>
  void qk_tokens(std::int64_t page, std::int64_t j0, std::int64_t token0, __m512 scale, BlockStream& next_block) {
    constexpr int kL1Every = NJ >= 16 ? 2 : 32 / NJ;  // NJ*D/32 lines over D steps
    for (int j = 0; j < NJ; ++j) Row::widen(pr->key_row_as<KV>(page, j0 + j, job.kv_head), kf + j * D, D);
    __m512 acc[NJ][RV];
    simd::zero<simd::Avx512>(acc);
    for (std::int64_t pos = 0; pos < D; ++pos) {
      if (pos % kL1Every == 1) next_block.issue();
      simd::fma_step<simd::Avx512, RV, NJ, D>(acc, qt + pos * W, kf + pos);
    }
    // Each row's causal limit and window, only for blocks holding a token some row does not see.
    const std::int64_t rel0 = token0 + j0 - lim.base;
    const bool masked = lim.masked(rel0, rel0 + NJ - 1);
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) {
        __m512 x = st.template logit_rows<F>(acc[j][v], scale, v, token0 + j0 + j);
        if (masked) x = lim.hide(x, v, static_cast<std::int32_t>(rel0 + j));
        _mm512_store_ps(s + (j0 + j) * W + v * kLanes, x);
      }
  }

  // Cube QK: scores of the span's tokens.
  void qk(const PageSpan& span) {
    constexpr int NJ = RV == 3 ? 5 : kMaxNJ / RV;
    const __m512 scale = _mm512_set1_ps(score_scale);
    const std::int64_t page = span.page, end = span.end;
    std::int64_t j = span.begin;
    for (; j + NJ <= end; j += NJ) {
      // The next block's K rows, or after the last block PV's first V rows.
      BlockStream next_block = j + NJ < end ? block_lines(pr, job.kv_head, D, page, 1, j + NJ, NJ, end)
                                            : block_lines(pr, job.kv_head, D, page, 2, span.begin, kPvBlockFloats / D, end);
      qk_tokens<NJ>(page, j, span.token0, scale, next_block);
    }
    BlockStream none;
    for (; j < end; ++j) qk_tokens<1>(page, j, span.token0, scale, none);
  }

  // Vector SF (simd.h): running max, P = bf16(exp(s - M)) in place, l_i, alpha.
  void softmax(const PageSpan& span) { st.template softmax<Row::kF16P>(s, span.begin, span.end); }

  // Cube PV then vector UP, in blocks of TB tokens whose widened V rows (16 KiB) stay in L1:
  // per block, TD positions at a time so the TD x RV accumulators stay in registers; UP is fused
  // into the first block's write-back (O = alpha * O + oi_0, one FMA), later blocks add theirs
  // (O += oi_b). Meanwhile the next block's V rows (after the last block: the next page's first K
  // rows) stream into L1. Then L = alpha * L + l_i.
  void pv(const PageSpan& span) {
    constexpr int TD = RV == 3 ? 8 : 16 / RV, TB = kPvBlockFloats / D;
    constexpr int kL1Every = 32 / TD;  // TB*D/32 lines over (D/TD)*TB steps
    const std::int64_t page = span.page, begin = span.begin, end = span.end;
    for (std::int64_t j0 = begin; j0 < end; j0 += TB) {
      const std::int64_t n = end - j0 < TB ? end - j0 : TB;
      for (std::int64_t j = 0; j < n; ++j) Row::widen(pr->value_row_as<KV>(page, j0 + j, job.kv_head), vf + j * D, D);
      const float* p_block = s + j0 * W;
      // The next block's V rows, or after the last block the next page's first K rows.
      BlockStream next_block = j0 + TB < end ? block_lines(pr, job.kv_head, D, page, 2, j0 + TB, TB, end)
                                             : block_lines(pr, job.kv_head, D, span.next_page, 1, 0, kMaxNJ, bs);
      for (std::int64_t pos0 = 0; pos0 < D; pos0 += TD) {
        __m512 acc[TD][RV];
        simd::zero<simd::Avx512>(acc);
        for (std::int64_t j = 0; j < n; ++j) {
          if (j % kL1Every == 1) next_block.issue();
          simd::fma_step<simd::Avx512, RV, TD, 1>(acc, p_block + j * W, vf + j * D + pos0);
        }
#pragma GCC unroll 16
        for (int d = 0; d < TD; ++d)
#pragma GCC unroll 4
          for (int v = 0; v < RV; ++v) {
            float* o = ot + (pos0 + d) * W + v * kLanes;
            const __m512 old = _mm512_load_ps(o);
            _mm512_store_ps(o, j0 == begin ? simd::up<simd::Avx512>(st.alpha[v], old, acc[d][v]) : _mm512_add_ps(old, acc[d][v]));
          }
      }
    }
    st.update_l();
  }

  void finish(const ChunkOut& out) {
    for (int r = 0; r < job.rows; ++r) {
      if constexpr (std::is_same_v<KV, bf16>) store_dim_order(ot + r, W, out.o + r * D, D);
      else
        for (std::int64_t pos = 0; pos < D; ++pos) out.o[r * D + Row::position_dim(pos)] = ot[pos * W + r] * out_scale;
      out.m[r] = st.m[r];
      out.l[r] = st.l[r];
    }
  }
};

template <int RV, int D, class KV>
void attend(const ChunkJob& job, const ChunkOut& out) {
  simd::with_score_features(job.problem->variant.score_features(), [&]<unsigned F>() {
    Avx512Tile<RV, D, F, KV> tile(job);
    drive_chunk(tile, job, out);
  });
}

template <int RV, int D>
void attend_dtype(const ChunkJob& job, const ChunkOut& out) {
  switch (job.problem->kv_dtype) {
    case DType::kF16: return attend<RV, D, f16>(job, out);
    case DType::kF8E4M3: return attend<RV, D, e4m3>(job, out);
    case DType::kF8E5M2: return attend<RV, D, e5m2>(job, out);
    default: return attend<RV, D, bf16>(job, out);
  }
}

// head_dim is a template value so every K/V row offset is a constant from one base register.
template <int RV>
void attend_rows(const ChunkJob& job, const ChunkOut& out) {
  switch (job.problem->shape.head_dim) {
    case 64: return attend_dtype<RV, 64>(job, out);
    case 128: return attend_dtype<RV, 128>(job, out);
    default: return attend_dtype<RV, 256>(job, out);  // flavour_computes admits 64, 128 and 256 only
  }
}

}  // namespace

void tanh_avx512(const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i + kLanes <= n; i += kLanes) _mm512_storeu_ps(y + i, simd::tanh<simd::Avx512>(_mm512_loadu_ps(x + i)));
}

void exp_bf16_avx512(const float* x, float* p, std::int64_t n) {
  for (std::int64_t i = 0; i + kLanes <= n; i += kLanes) _mm512_storeu_ps(p + i, exp_bf16(_mm512_loadu_ps(x + i)));
}

void attend_chunk_avx512(const ChunkJob& job, const ChunkOut& out) {
  // Tiles of <= 8 rows of one new token run the narrow kernel (every cache dtype, as here);
  // q_len > 1 tiles (rows of several new tokens, per-row causal limits) run here.
  if (job.rows <= 8 && job.problem->shape.q_len == 1) return attend_chunk_avx512_narrow(job, out);
  switch ((job.rows + kLanes - 1) / kLanes) {
    case 1: return attend_rows<1>(job, out);
    case 2: return attend_rows<2>(job, out);
    case 3: return attend_rows<3>(job, out);
    default: return attend_rows<4>(job, out);
  }
}

MIXPA_CPU_FLAVOURS_END
}  // namespace mixpa::cpu

#if MIXPA_CPU_NATIVE
#pragma GCC pop_options
#endif
