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
// position order and put back in dim order once per chunk. The page loop is the chunk driver's
// (chunk_driver.h); the state and SF are shared with the AMX kernel (kernel_avx512bf16_parts.h).
#include "cpu/x86_intrinsics.h"

#include <cstdint>

#include "cpu/chunk_driver.h"
#include "cpu/chunk_kernel.h"

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

using avx512::interleave_v;
using avx512::load_pair;
using avx512::prefetch_rows;

constexpr int kLanes = 16;

// One head tile (W = RV * 16 rows in lanes) as the chunk driver's stages; F = the score features.
template <int RV, unsigned F>
struct Bf16Tile : avx512::PairRows<RV> {
  using Base = avx512::PairRows<RV>;
  using Base::W, Base::job, Base::pr, Base::dim, Base::bs, Base::qt, Base::s, Base::pp, Base::vi, Base::o, Base::st, Base::lim;

  explicit Bf16Tile(const ChunkJob& j) : Base(j, j.problem->shape.block_size / 2 + 1) {}

  // QK for NJ consecutive valid tokens starting at j0; writes s[j0 .. j0+NJ): the score
  // epilogue, then each row's causal limit and window (only for blocks holding a token some
  // row does not see; q_len 1: none).
  template <int NJ>
  inline void qk_tokens(std::int64_t page, std::int64_t j0, std::int64_t token0, __m512 scale) {
    constexpr int PB = RV == 3 ? 2 : 8 / RV;
    const bf16* k[NJ];
    for (int j = 0; j < NJ; ++j) k[j] = pr->key_row(page, j0 + j, job.kv_head);
    __m512 acc[NJ][RV];
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) acc[j][v] = _mm512_setzero_ps();
    // Fully unrolled so the NJ x RV accumulators stay in registers as independent chains.
    for (std::int64_t p0 = 0; p0 < dim / 2; p0 += PB) {
      __m512bh q[PB][RV];
#pragma GCC unroll 8
      for (int b = 0; b < PB; ++b)
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v) q[b][v] = (__m512bh)_mm512_load_si512(qt + (p0 + b) * W + v * kLanes);
#pragma GCC unroll 8
      for (int b = 0; b < PB; ++b)
#pragma GCC unroll 16
        for (int j = 0; j < NJ; ++j) {
          const __m512bh kk = (__m512bh)_mm512_set1_epi32(static_cast<int>(load_pair(k[j] + 2 * (p0 + b))));
#pragma GCC unroll 4
          for (int v = 0; v < RV; ++v) acc[j][v] = _mm512_dpbf16_ps(acc[j][v], q[b][v], kk);
        }
    }
    const std::int64_t rel0 = token0 + j0 - lim.base;
    const bool masked = lim.masked(rel0, rel0 + NJ - 1);
    for (int j = 0; j < NJ; ++j)
      for (int v = 0; v < RV; ++v) {
        __m512 x = st.template logit_rows<F>(acc[j][v], scale, v, token0 + j0 + j);
        if (masked) x = lim.hide(x, v, static_cast<std::int32_t>(rel0 + j));
        _mm512_store_ps(s + (j0 + j) * W + v * kLanes, x);
      }
  }

  // Cube QK: scores of the span's tokens; meanwhile prefetch the next page's K rows.
  void qk(const PageSpan& span) {
    constexpr int TJ = RV == 3 ? 5 : 16 / RV;
    prefetch_rows(pr, job.kv_head, dim, span.next_page, 0, bs, 1);
    const __m512 scale = _mm512_set1_ps(pr->variant.scale);
    std::int64_t j = span.begin;
    for (; j + TJ <= span.end; j += TJ) qk_tokens<TJ>(span.page, j, span.token0, scale);
    for (; j < span.end; ++j) qk_tokens<1>(span.page, j, span.token0, scale);
  }

  // Vector SF (shared with the AMX kernel).
  void softmax(const PageSpan& span) { this->softmax_pairs(span.begin, span.end); }

  // Cube PV then vector UP, TD output positions at a time (accumulators stay in registers):
  // O = alpha * O + oi, then L = alpha * L + l_i.
  void pv(const PageSpan& span) {
    constexpr int TD = RV >= 3 ? 4 : 16 / RV;
    const std::int64_t jp0 = span.begin / 2, pairs = (span.end + 1) / 2;
    interleave_v(pr, job.kv_head, dim, vi, span.page, span.begin, span.end, jp0, pairs, span.next_page);
    for (std::int64_t pos0 = 0; pos0 < dim; pos0 += TD) {
      __m512 acc[TD][RV];
      for (int d = 0; d < TD; ++d)
        for (int v = 0; v < RV; ++v) acc[d][v] = _mm512_setzero_ps();
      for (std::int64_t jp = jp0; jp < pairs; ++jp) {
        __m512bh p[RV];
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v) p[v] = (__m512bh)_mm512_load_si512(pp + jp * W + v * kLanes);
        const std::uint32_t* vrow = vi + jp * dim + pos0;
#pragma GCC unroll 16
        for (int d = 0; d < TD; ++d) {
          const __m512bh vv = (__m512bh)_mm512_set1_epi32(static_cast<int>(vrow[d]));
#pragma GCC unroll 4
          for (int v = 0; v < RV; ++v) acc[d][v] = _mm512_dpbf16_ps(acc[d][v], p[v], vv);
        }
      }
      for (int d = 0; d < TD; ++d)
        for (int v = 0; v < RV; ++v) {
          float* out = o + (pos0 + d) * W + v * kLanes;
          _mm512_store_ps(out, simd::up<simd::Avx512>(st.alpha[v], _mm512_load_ps(out), acc[d][v]));
        }
    }
    st.update_l();
  }

  void finish(const ChunkOut& out) {
    this->write_back(out, [](int r, std::int64_t pos) { return pos * W + r; });
  }
};

template <int RV, unsigned F>
void attend(const ChunkJob& job, const ChunkOut& out) {
  Bf16Tile<RV, F> tile(job);
  drive_chunk(tile, job, out);
}

}  // namespace

void attend_chunk_avx512bf16(const ChunkJob& job, const ChunkOut& out) {
  // The narrow kernel computes q_len 1; multi-token tiles of <= 8 rows take one zmm of lanes.
  if (job.rows <= 8 && job.problem->shape.q_len == 1) return attend_chunk_avx512bf16_narrow(job, out);
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
