// AVX-512F (fp32 FMA) chunk kernel for narrow head tiles (<= 8 rows: GQA decode, 32/8 heads).
//
// With 16 rows per zmm a 4-row tile would leave 12 of 16 lanes idle. As in the BF16 narrow
// kernel, a zmm holds RS = 16 / C rows x C columns: lane r*C + c.
//   QK  acc[j] += Qt[p] * bcst_C(Kf[j] + p*C)   the C columns are C positions of head_dim;
//       a permute butterfly sums each row's C partial sums and packs C tokens per vector.
//   SF  per row over its C lanes (butterfly max / sum); P rounded to bf16, kept in fp32.
//   PV  positions in lanes, per row r: O_r[16 positions] += bcst(P[r][j]) * V_j[16 positions],
//       V_j widened in registers (no stores), P a broadcast load straight from the scores'
//       layout; R x kPass accumulators stay in registers over the whole page.
// Kf is the K rows widened to fp32 (kernel_avx512_parts.h), read by broadcast loads. Every lane
// does useful work: per token QK costs head_dim / C FMAs instead of head_dim. The page loop is
// the chunk driver's (chunk_driver.h), with one group flavour for the kv heads of a request
// (a single chunk is a group of one). KV = the cache's element type (SPEC §6: bf16, f16, e4m3,
// e5m2), widened in the K/V loads as in the wide tile (CacheRow512: fp8 scales folded into the
// score scale and the output, P rounded to fp16 for F16 caches).
#include "cpu/x86_intrinsics.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
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
using avx512::reduce_tokens;
using avx512::exp_bf16;
using avx512::store_dim_order;

constexpr int kBlockTokens = 16;  // tokens per QK block: 16 independent accumulator chains
constexpr int kMaxGroup = 16;     // kv heads computed together by attend_group
constexpr int kQkAhead = 2;       // QK's L1 stream runs this many (block, head) steps ahead

// C consecutive floats at p, repeated over the zmm (a broadcast load, no shuffle).
template <int C>
inline __m512 bcst(const float* p) {
  if constexpr (C == 2) {
    double v;
    std::memcpy(&v, p, 8);
    return _mm512_castpd_ps(_mm512_set1_pd(v));
  } else if constexpr (C == 4) {
    return _mm512_broadcast_f32x4(_mm_load_ps(p));
  } else if constexpr (C == 8) {
    return _mm512_broadcast_f32x8(_mm256_load_ps(p));
  } else {
    return _mm512_load_ps(p);
  }
}

// One chunk of a group (one kv head's tile).
template <int C>
struct Tile {
  const ChunkJob* job;
  float* qt;  // [dim / C][16]        lane r*C + c = Q_r at position p*C + c
  float* s;   // [blocks*16 / C][16]  lane r*C + t = score of row r, token g*C + t; then its rounded P
  float* ot;  // [16 / C][dim]        O_r in position order
  avx512::ColumnRows<C> st;  // m, l, alpha, l_i and the score epilogue per lane
};

// Rows of one kv head's K or V cache that a loop prefetches in step with its own rows: row j at
// row + j * stride bytes, for j < rows. An empty one is {idle, 0, 0}, idle a line already in L1.
// The addresses are constant offsets from one pointer bumped once per row, so a prefetch costs
// one instruction (a general line stream's bookkeeping, ~8 scalar instructions a line, made the
// FMA loops rename-bound: 16 FMAs plus their loads are already ~5 of the 6 slots a cycle).
struct RowLines {
  const char* row;
  std::int64_t stride, rows;
};

inline RowLines rows_of(const Problem& pr, std::int64_t kv_head, std::int64_t page, int which, std::int64_t j0,
                        std::int64_t rows, const void* idle) {
  if (page < 0 || rows <= 0) return {static_cast<const char*>(idle), 0, 0};
  return {avx512::cache_row(&pr, which, page, j0, kv_head), avx512::cache_row_bytes(&pr, which), rows};
}

// Cube QK for 16 tokens from j0 (tokens outside the span [begin, valid) read zeros and score
// -inf). Meanwhile the 16 rows of `next` stream into L1 (memory as in kernel_avx512.cpp): their
// D * sizeof(KV) / 64 lines each spread evenly over the D/C steps (a row's lines over
// kStepsPerRow steps, or kRowsPerStep whole rows a step).
template <int C, int D, unsigned F, class KV>
void qk_block(Tile<C>& t, const Problem& pr, float* kf, std::int64_t page, std::int64_t j0, std::int64_t begin,
              std::int64_t valid, __m512 scale, RowLines next, std::int64_t token0) {
  using Row = avx512::CacheRow512<KV>;
  constexpr int kRowLines = D * static_cast<int>(sizeof(KV)) / 64, kSteps = D / C;
  constexpr int kStepsPerRow = kSteps >= kBlockTokens ? kSteps / kBlockTokens : 1;
  constexpr int kRowsPerStep = kSteps >= kBlockTokens ? 1 : kBlockTokens / kSteps;
  for (int j = 0; j < kBlockTokens; ++j) {
    float* dst = kf + j * D;
    if (j0 + j >= begin && j0 + j < valid) Row::widen(pr.key_row_as<KV>(page, j0 + j, t.job->kv_head), dst, D);
    else
      for (std::int64_t d = 0; d < D; d += kLanes) _mm512_store_ps(dst + d, _mm512_setzero_ps());
  }
  __m512 acc[kBlockTokens];
#pragma GCC unroll 16
  for (int j = 0; j < kBlockTokens; ++j) acc[j] = _mm512_setzero_ps();
  const char* pf = next.row;
  for (std::int64_t p0 = 0; p0 < D / C; p0 += kStepsPerRow, pf += kRowsPerStep * next.stride) {
#pragma GCC unroll 8
    for (int u = 0; u < kStepsPerRow; ++u) {
#pragma GCC unroll 4
      for (int r = 0; r < kRowsPerStep; ++r)
#pragma GCC unroll 8
        for (int k = u * kRowLines / kStepsPerRow; k < (u + 1) * kRowLines / kStepsPerRow; ++k)
          _mm_prefetch(pf + r * next.stride + k * 64, _MM_HINT_T0);
      const std::int64_t p = p0 + u;
      const __m512 q = _mm512_load_ps(t.qt + p * kLanes);
#pragma GCC unroll 16
      for (int j = 0; j < kBlockTokens; ++j) acc[j] = _mm512_fmadd_ps(q, bcst<C>(kf + j * D + p * C), acc[j]);
    }
  }
  for (int g = 0; g < kBlockTokens / C; ++g) {
    const std::int64_t first = j0 + g * C;
    const __m512 sc = t.st.template logit<F>(reduce_tokens<C>(acc + g * C), scale, token0 + first);
    __mmask16 live = 0xffff;  // lanes of tokens outside the span score -inf (only in a partial block)
    if (first + C > valid || first < begin) {
      live = 0;
      for (int lane = 0; lane < kLanes; ++lane)
        live |= static_cast<__mmask16>((first + lane % C >= begin && first + lane % C < valid) << lane);
    }
    _mm512_store_ps(t.s + (first / C) * kLanes, _mm512_mask_blend_ps(live, _mm512_set1_ps(-__builtin_inff()), sc));
  }
}

// Vector SF: running max per row, P rounded to bf16 (kF16P: fp16) in place of the scores, l_i.
template <int C, bool kF16P>
void softmax_page(Tile<C>& t, std::int64_t g0, std::int64_t groups) {
  const __m512 mx = t.st.running_max(t.s, g0, groups);
  __m512 sum = _mm512_setzero_ps();
  for (std::int64_t g = g0; g < groups; ++g) {
    const __m512 x = _mm512_sub_ps(_mm512_load_ps(t.s + g * kLanes), mx);
    const __m512 p = kF16P ? simd::exp_f16<simd::Avx512>(x) : exp_bf16(x);
    sum = _mm512_add_ps(sum, p);
    _mm512_store_ps(t.s + g * kLanes, p);
  }
  t.st.l_i = avx512::over_row<C, false>(sum);
}

// Cube PV then vector UP for the page's valid tokens, positions in lanes: per row r of the
// layout, O_r[16 positions] += bcst(P[r][j]) * V_j[16 positions]. V_j is widened in registers
// 32 elements at a time (CacheRow512::pair; bf16: a 64-byte load gives the even positions by
// x << 16 and the odd ones by x & 0xffff0000) and never stored; P[r][j] is one float of the
// scores' layout. kPass position vectors per pass keep
// R x kPass accumulators in registers over all the tokens, then UP: O = alpha * O + oi.
// Meanwhile the rows of `next` stream into L1, row j's lines of this pass with token j. V rows
// past the context are never read.
template <int C, int D, class KV>
void pv_page(Tile<C>& t, const Problem& pr, std::int64_t page, std::int64_t begin, std::int64_t valid, RowLines next) {
  using Row = avx512::CacheRow512<KV>;
  constexpr int R = kLanes / C, kVecs = D / kLanes, kEB = static_cast<int>(sizeof(KV));
  // R x kPass accumulators plus kPass widened vectors stay in the 32 zmm registers.
  constexpr int kPass = std::min({kVecs, std::max(2, 16 / R), 8});
  constexpr int kPassLines = std::max(1, kPass * kLanes * kEB / 64);  // of a row, per pass
  alignas(64) float al[kLanes];
  _mm512_store_ps(al, t.st.alpha);
  const char* row0 = avx512::cache_row(&pr, 2, page, 0, t.job->kv_head);
  const std::int64_t stride = avx512::cache_row_bytes(&pr, 2);
  for (int v0 = 0; v0 < kVecs; v0 += kPass) {
    __m512 acc[R][kPass];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int k = 0; k < kPass; ++k) acc[r][k] = _mm512_setzero_ps();
    const char* vrow = row0 + begin * stride + v0 * kLanes * kEB;  // vectors v0, v0 + 1: chunk v0 / 2
    const char* pf = next.row + v0 * kLanes * kEB;  // this pass's kPassLines lines of next row j
    // Token j: its P is pj[r * C] for row r.
    auto token = [&](std::int64_t j, const float* pj) __attribute__((always_inline)) {
      if (j < next.rows)
#pragma GCC unroll 4
        for (int k = 0; k < kPassLines; ++k) _mm_prefetch(pf + k * 64, _MM_HINT_T0);
      pf += next.stride;
      __m512 x[kPass];
#pragma GCC unroll 16
      for (int k = 0; k < kPass; k += 2) Row::pair(reinterpret_cast<const KV*>(vrow + k * kLanes * kEB), x[k], x[k + 1]);
      vrow += stride;
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512 b = _mm512_set1_ps(pj[r * C]);
#pragma GCC unroll 16
        for (int k = 0; k < kPass; ++k) acc[r][k] = _mm512_fmadd_ps(x[k], b, acc[r][k]);
      }
    };
    std::int64_t j = begin;
    for (; j < valid && j % C != 0; ++j) token(j, t.s + (j / C) * kLanes + j % C);  // a span starting mid-group
    for (; j + C <= valid; j += C) {  // C tokens share one vector of the scores' layout
      const float* pg = t.s + (j / C) * kLanes;
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c) token(j + c, pg + c);
    }
    for (; j < valid; ++j) token(j, t.s + (j / C) * kLanes + j % C);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int k = 0; k < kPass; ++k) {
        float* o = t.ot + r * D + (v0 + k) * kLanes;
        _mm512_store_ps(o, simd::up<simd::Avx512>(_mm512_set1_ps(al[r * C]), _mm512_load_ps(o), acc[r][k]));
      }
  }
}

// page_starts over the K (which = 1) or V (2) rows of `page` for kv heads [h_lo, h_hi] when those
// rows are dense in their span (at least half of it: the heads of a request are neighbours, as
// in a [block, token, kv_head, dim] cache); otherwise an empty stream (touching whole 4 KiB pages
// would fetch mostly other heads' rows).
inline avx512::LineStream<_MM_HINT_T1> streamer_starts(const Problem& pr, std::int64_t page, std::int64_t h_lo,
                                                       std::int64_t h_hi, std::int64_t dim, int which) {
  if (page < 0) return {};
  const std::int64_t bs = pr.shape.block_size;
  const char* lo = avx512::cache_row(&pr, which, page, 0, h_lo);
  const std::int64_t row_bytes = dim * avx512::kv_elem_bytes(&pr);
  const char* hi = avx512::cache_row(&pr, which, page, bs - 1, h_hi) + row_bytes;
  const std::int64_t needed = bs * (h_hi - h_lo + 1) * row_bytes;
  if (hi <= lo || 2 * needed < hi - lo) return {};
  return avx512::page_starts(lo, hi);
}

// Chunks of one request over the same pages for n kv heads (n = 1: a single chunk) as one
// flavour of the chunk driver, page by page: each page is read once for all n heads
// (contiguously when the heads are neighbours in the cache), QK token block by token block
// across the heads, then SF and PV head by head. Each head has its own scores and O, and its
// arithmetic is exactly that of computing its chunk alone, in the same order.
template <int C, int D, unsigned F, class KV>
struct NarrowGroup {
  using Row = avx512::CacheRow512<KV>;
  const ChunkJob* jobs;
  int n;
  const Problem& pr;
  std::int64_t bs;
  float* kf;  // [16][dim]  widened K rows of one token block (zeros past the context)
  Tile<C> tiles[kMaxGroup];
  __m512 scale;     // scale * k_scale (times Row::kFactor)
  float out_scale;  // v_scale (times Row::kFactor)
  std::int64_t h_lo, h_hi;  // the group's kv heads span [h_lo, h_hi]
  // This page's L2 streamer starts for the next page's K rows (during QK) and V rows (PV).
  avx512::LineStream<_MM_HINT_T1> k_starts, v_starts;
  std::int64_t v_per_head = 0;

  NarrowGroup(const ChunkJob* j, int count) : jobs(j), n(count), pr(*j[0].problem), bs(pr.shape.block_size) {
    const std::int64_t padded = (bs + kBlockTokens - 1) / kBlockTokens * kBlockTokens;
    const std::int64_t s_floats = padded / C * kLanes;
    kf = static_cast<float*>(scratch(1, kBlockTokens * D * 4));
    float* s = static_cast<float*>(scratch(2, n * s_floats * 4));
    float* qt = static_cast<float*>(scratch(0, n * D / C * 64));
    float* ot = static_cast<float*>(scratch(4, n * D / C * 64));
    for (int h = 0; h < n; ++h) {
      Tile<C>& t = tiles[h];
      t.job = &jobs[h];
      t.qt = qt + h * D / C * kLanes;
      t.s = s + h * s_floats;
      t.ot = ot + h * D / C * kLanes;
      t.st.init(pr, jobs[h].batch, jobs[h].head_begin, jobs[h].rows);
      alignas(64) float q_rows[kLanes / C][D];  // the tile's query rows as fp32, dim order
      for (int r = 0; r < kLanes / C; ++r)
        if (r < jobs[h].rows) avx512::query_floats(pr, jobs[h].batch, 0, jobs[h].head_begin + r, q_rows[r]);
      for (std::int64_t p = 0; p < D / C; ++p)
        for (int lane = 0; lane < kLanes; ++lane) {
          const int r = lane / C;
          t.qt[p * kLanes + lane] = r < jobs[h].rows ? q_rows[r][Row::position_dim(p * C + lane % C)] : 0.0f;
        }
      for (std::int64_t i = 0; i < D / C * kLanes; ++i) t.ot[i] = 0.0f;
    }
    scale = _mm512_set1_ps(pr.variant.scale * pr.k_scale * Row::kFactor);  // the formula of every flavour
    out_scale = pr.v_scale * Row::kFactor;
    h_lo = h_hi = jobs[0].kv_head;
    for (int h = 1; h < n; ++h) {
      h_lo = std::min(h_lo, jobs[h].kv_head);
      h_hi = std::max(h_hi, jobs[h].kv_head);
    }
  }

  // The first page's K and V rows of every head into L2 before its QK.
  void first(const PageSpan& span) {
    for (int h = 0; h < n; ++h) avx512::prefetch_rows(&pr, jobs[h].kv_head, D, span.page, 0, bs);
  }

  // Cube QK, block by block over the heads. Each (block, head) streams the K rows of the
  // (block, head) kQkAhead steps later into L1 (two steps: one step's compute is shorter than
  // the fill buffers need for a block from memory; Decode32k 4.98 -> 4.70 ms, bench medians);
  // the last steps stream PV's first V rows instead.
  void qk(const PageSpan& span) {
    const std::int64_t page = span.page, begin = span.begin, valid = span.end;
    const std::int64_t b0 = begin / kBlockTokens, blocks = (valid + kBlockTokens - 1) / kBlockTokens;
    // The L2 streamer is started on every 4 KiB page of the next page's K rows during QK and on
    // its V rows during PV, spread evenly over the steps (Decode32k cold, 2 threads, min of 9-11
    // in four interleaved A/B runs: 4.16-4.40 -> 3.88-4.24 ms).
    k_starts = streamer_starts(pr, span.next_page, h_lo, h_hi, D, 1);
    v_starts = streamer_starts(pr, span.next_page, h_lo, h_hi, D, 2);
    const std::int64_t k_per_step = (k_starts.left + (blocks - b0) * n - 1) / ((blocks - b0) * n);
    v_per_head = (v_starts.left + n - 1) / n;
    std::int64_t ahead_block = b0 + kQkAhead / n;  // the (block, head) step kQkAhead after (b, h),
    int ahead_head = kQkAhead % n;                 // kept incrementally (no division per step)
    for (std::int64_t b = b0; b < blocks; ++b) {
      const std::int64_t j0 = b * kBlockTokens;
      for (int h = 0; h < n; ++h) {
        const std::int64_t ahead_head_kv = tiles[ahead_head].job->kv_head;
        const RowLines next_block =
            ahead_block < blocks    ? rows_of(pr, ahead_head_kv, page, 1, ahead_block * kBlockTokens, kBlockTokens, kf)
            : ahead_block == blocks ? rows_of(pr, ahead_head_kv, page, 2, 0, kBlockTokens, kf)
                                    : rows_of(pr, 0, -1, 1, 0, 0, kf);
        qk_block<C, D, F, KV>(tiles[h], pr, kf, page, j0, begin, valid, scale, next_block, span.token0);
        for (std::int64_t q = 0; q < k_per_step; ++q) k_starts.issue();
        if (++ahead_head == n) {
          ahead_head = 0;
          ++ahead_block;
        }
      }
    }
  }

  // Vector SF, head by head.
  void softmax(const PageSpan& span) {
    const std::int64_t b0 = span.begin / kBlockTokens, blocks = (span.end + kBlockTokens - 1) / kBlockTokens;
    for (int h = 0; h < n; ++h) softmax_page<C, Row::kF16P>(tiles[h], b0 * kBlockTokens / C, blocks * kBlockTokens / C);
  }

  // Cube PV and UP, head by head. Each head's PV streams the next head's V rows into L1; the
  // last head's, the next page's first K rows. Then L = alpha * L + l_i for every head.
  void pv(const PageSpan& span) {
    const std::int64_t page = span.page, begin = span.begin, valid = span.end;
    for (int h = 0; h < n; ++h) {
      const RowLines next_rows = h + 1 < n ? rows_of(pr, tiles[h + 1].job->kv_head, page, 2, 0, valid, kf)
                                           : rows_of(pr, tiles[0].job->kv_head, span.next_page, 1, 0, kBlockTokens, kf);
      pv_page<C, D, KV>(tiles[h], pr, page, begin, valid, next_rows);
      for (std::int64_t q = 0; q < v_per_head; ++q) v_starts.issue();
    }
    for (int h = 0; h < n; ++h) tiles[h].st.update_l();
  }

  void finish(const GroupOut& out) {
    for (int h = 0; h < n; ++h)
      for (int r = 0; r < jobs[h].rows; ++r) {
        const float* o = tiles[h].ot + r * D;
        if constexpr (std::is_same_v<KV, bf16>) store_dim_order(o, 1, out.outs[h].o + r * D, D);
        else
          for (std::int64_t pos = 0; pos < D; ++pos) out.outs[h].o[r * D + Row::position_dim(pos)] = o[pos] * out_scale;
        out.outs[h].m[r] = tiles[h].st.m_of(r);
        out.outs[h].l[r] = tiles[h].st.l_of(r);
      }
  }
};

template <int C, int D, unsigned F, class KV>
void attend_group(const ChunkJob* jobs, const ChunkOut* outs, int n) {
  NarrowGroup<C, D, F, KV> group(jobs, n);
  drive_chunk(group, jobs[0], GroupOut{outs, n});
}

template <int C, int D, unsigned F>
void attend_dtype(const ChunkJob* jobs, const ChunkOut* outs, int n) {
  switch (jobs[0].problem->kv_dtype) {
    case DType::kF16: return attend_group<C, D, F, f16>(jobs, outs, n);
    case DType::kF8E4M3: return attend_group<C, D, F, e4m3>(jobs, outs, n);
    case DType::kF8E5M2: return attend_group<C, D, F, e5m2>(jobs, outs, n);
    default: return attend_group<C, D, F, bf16>(jobs, outs, n);
  }
}

// head_dim is a template value so every K/V row offset is a constant from one base register.
template <int C>
void attend_columns(const ChunkJob* jobs, const ChunkOut* outs, int n) {
  simd::with_score_features(jobs[0].problem->variant.score_features(), [&]<unsigned F>() {
    switch (jobs[0].problem->shape.head_dim) {
      case 64: return attend_dtype<C, 64, F>(jobs, outs, n);
      case 128: return attend_dtype<C, 128, F>(jobs, outs, n);
      default: return attend_dtype<C, 256, F>(jobs, outs, n);  // flavour_computes admits 64, 128 and 256 only
    }
  });
}

void attend_group_columns(const ChunkJob* jobs, const ChunkOut* outs, int n) {
  const int rows = jobs[0].rows;  // the same for every kv head of a request
  if (rows <= 1) return attend_columns<16>(jobs, outs, n);
  if (rows <= 2) return attend_columns<8>(jobs, outs, n);
  if (rows <= 4) return attend_columns<4>(jobs, outs, n);
  return attend_columns<2>(jobs, outs, n);
}

}  // namespace

void attend_chunk_avx512_narrow(const ChunkJob& job, const ChunkOut& out) { attend_group_columns(&job, &out, 1); }

void attend_group_avx512(std::span<const ChunkJob> jobs, std::span<const ChunkOut> outs) {
  for (std::size_t h0 = 0; h0 < jobs.size(); h0 += kMaxGroup) {
    const int n = static_cast<int>(std::min<std::size_t>(kMaxGroup, jobs.size() - h0));
    if (jobs[h0].rows > 8 || jobs[h0].problem->shape.q_len != 1) {  // the wide tile's
      for (int h = 0; h < n; ++h) attend_chunk_avx512(jobs[h0 + h], outs[h0 + h]);
    } else {
      attend_group_columns(jobs.data() + h0, outs.data() + h0, n);
    }
  }
}

MIXPA_CPU_FLAVOURS_END
}  // namespace mixpa::cpu

#if MIXPA_CPU_NATIVE
#pragma GCC pop_options
#endif
