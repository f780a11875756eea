// The AVX2/FMA/F16C chunk kernel as a template over the cache's element type, for x86-64 CPUs
// without AVX-512 (Zen 2/3, Haswell to Alder Lake). Each cache dtype is its own translation
// unit (kernel_avx2.cpp: bf16 and the entry point; kernel_avx2_{f16,e4m3,e5m2}.cpp), which
// includes this header after `#pragma GCC target("avx2,fma,f16c")` and after
// core/element.h, cpu/page_run.h, cpu/chunk_kernel.h and cpu/scratch.h (library headers stay
// baseline code).
//
// The avx512 flavour's design at 8 lanes:
//   rows of the head tile in SIMD lanes (8 per ymm, RV = 1, 2 or 4 ymm; tiles of more than 32
//   rows run as 32-row sub-tiles), so m, l and alpha are plain vectors (simd::LaneRows: the SF
//   and UP of every lane-rows flavour). A row is a (new token,
//   head of the group) pair (SPEC §6 q_len 1..16): every row of a tile shares one read of each
//   K/V row, and has its own position (causal limit) and window, applied in the score epilogue;
//   QK  s[j] (lanes = rows) += Qt[pos] * bcst(Kf[j][pos])   vbroadcastss is a load, not an ALU op
//   SF  P = bf16(exp(s - M)) (fp16 for F16 caches) with one rounding, l = sum of the rounded P
//   PV  ot[pos] (lanes = rows) += P[j] * bcst(Vf[j][pos])
// K and V rows are widened to fp32 once per tile, the dequantisation fused into that load, into
// small buffers that stay in L1 (no dequantised copy of the cache, no extra pass):
//   bf16  a 32-byte load gives the even elements by x << 16 and the odd ones by
//         x & 0xffff0000 ("position" order: per 16 elements, the 8 even then the 8 odd);
//   f16   vcvtph2ps (natural order);
//   e5m2  the high byte of an fp16: unpack with a zero byte below, vcvtph2ps (exact);
//   e4m3  sign, then the 7 exponent/mantissa bits shifted into an fp16's (arithmetic shift of
//         the unpacked byte, one and): that fp16 is K / 256 exactly, subnormals included (an
//         e4m3 subnormal m 2^-9 is the fp16 subnormal m 2^-17); 0x7f/0xff become NaN. The 256
//         is folded into the score scale and the output scale (powers of two: exact).
// k_scale is folded into the score scale, x = (scale * k_scale) * (q . K), and v_scale into
// the output, o = v_scale * sum P V: the formula of every cpu flavour (scalar too).
// Qt and ot use the cache's position order, ot is put back in dim order once per chunk.
// head_dim is a template value for the fast shapes (64, 128, 256), so each broadcast of an
// inner step is a constant offset from one base register, and NJ x RV (QK) or TD x RV (PV)
// accumulators stay in the 16 ymm registers; other multiples of 16 (16..256) run the same
// code with head_dim at run time. UP's rescale is fused into the first PV block's write-back.
// Memory: the next token block's rows (and after the last, the next page's first rows) are
// prefetched into L1 during the current block's FMAs; pages reach L2 through the hardware
// streamer. Pages smaller than 16 tokens are taken in runs of >= 32 tokens (page_run.h).
// Tiles of <= 4 rows (GQA decode: 32/8 heads is 4 rows per kv head) would leave half or more of
// the lanes idle; they run as a NarrowTile instead (head_dim positions in the lanes, K and V
// widened in registers; see there), with the same state, epilogue and SF.
#pragma once

#include <cstring>
#include <type_traits>

#include "cpu/simd_avx2.h"

namespace mixpa::cpu {

// The avx2 kernel of one cache dtype, for tiles of any row count (32-row sub-tiles).
void attend_avx2_bf16(const ChunkJob& job, const ChunkOut& out);
void attend_avx2_f16(const ChunkJob& job, const ChunkOut& out);
void attend_avx2_e4m3(const ChunkJob& job, const ChunkOut& out);
void attend_avx2_e5m2(const ChunkJob& job, const ChunkOut& out);
// The group kernels of each cache dtype: the kv heads of one request over the same pages.
void attend_group_avx2_bf16(std::span<const ChunkJob> jobs, std::span<const ChunkOut> outs);
void attend_group_avx2_f16(std::span<const ChunkJob> jobs, std::span<const ChunkOut> outs);
void attend_group_avx2_e4m3(std::span<const ChunkJob> jobs, std::span<const ChunkOut> outs);
void attend_group_avx2_e5m2(std::span<const ChunkJob> jobs, std::span<const ChunkOut> outs);

namespace avx2 {
namespace {

using D8 = simd::Avx2;
constexpr int kLanes = D8::kLanes;
constexpr int kPvBlockFloats = 4096;  // widened V floats per PV token block (16 KiB, in L1)
constexpr int kMaxNJ = 8;
constexpr int kMaxRun = 256;  // tokens of one run: max_run_tokens(block_size) <= 256

// How a cache dtype's rows are widened: 16 elements at a time into two vectors (load16) of fp32
// `kFactor` times smaller than float(K) (exactly), in an order of positions that Q and O share.
template <class KV>
struct CacheRow;

template <>
struct CacheRow<bf16> {
  static constexpr float kFactor = 1.0f;
  static constexpr bool kF16P = false;
  // The dim of widened position p: per 16-element chunk, the 8 even elements then the 8 odd ones.
  static int position_dim(int p) {
    const int q = p % 16;
    return p - q + (q < 8 ? 2 * q : 2 * (q - 8) + 1);
  }
  static void load16(const bf16* src, __m256& lo, __m256& hi) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    lo = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    hi = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
};

template <>
struct CacheRow<f16> {
  static constexpr float kFactor = 1.0f;
  static constexpr bool kF16P = true;
  static int position_dim(int p) { return p; }
  static void load16(const f16* src, __m256& lo, __m256& hi) {
    lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 8)));
  }
};

// fp8 rows, 16 elements per step: the 16 bytes in both 128-bit lanes (a load-only broadcast),
// one in-lane byte shuffle puts w = byte << 8 into 16-bit lanes (elements 0-7 in the low lane,
// 8-15 in the high one), half(w) makes the fp16 bits of all 16 at once, then 8 to fp32 per lane.
template <class Row>
inline void load16_fp8(const std::uint8_t* src, __m256& lo, __m256& hi) {
  const __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  const __m256i spread = _mm256_setr_epi8(-1, 0, -1, 1, -1, 2, -1, 3, -1, 4, -1, 5, -1, 6, -1, 7,  //
                                          -1, 8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15);
  const __m256i h = Row::half(_mm256_shuffle_epi8(x, spread));
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

template <>
struct CacheRow<e5m2> {
  static constexpr float kFactor = 1.0f;
  static constexpr bool kF16P = false;
  static int position_dim(int p) { return p; }
  // e5m2 is the high byte of an fp16.
  static __m256i half(__m256i w) { return w; }
  static void load16(const e5m2* src, __m256& lo, __m256& hi) { load16_fp8<CacheRow>(&src->bits, lo, hi); }
};

template <>
struct CacheRow<e4m3> {
  static constexpr float kFactor = 256.0f;
  static constexpr bool kF16P = false;
  static int position_dim(int p) { return p; }
  // w = byte << 8 per 16-bit lane -> the fp16 of value / 256 (NaN for 0x7f / 0xff).
  static __m256i half(__m256i w) {
    const __m256i h = _mm256_and_si256(_mm256_srai_epi16(w, 1), _mm256_set1_epi16(static_cast<short>(0xbf80)));
    const __m256i nan = _mm256_cmpeq_epi16(_mm256_slli_epi16(w, 1), _mm256_set1_epi16(static_cast<short>(0xfe00)));
    return _mm256_or_si256(h, nan);
  }
  static void load16(const e4m3* src, __m256& lo, __m256& hi) { load16_fp8<CacheRow>(&src->bits, lo, hi); }
};

// dst[0, d) = the row src widened (d a multiple of 16; DT when DT != 0).
template <class KV, int DT>
inline void widen_row(const KV* src, float* dst, int d) {
  const int n = DT != 0 ? DT : d;
#pragma GCC unroll 16
  for (int c = 0; c < n; c += 16) {
    __m256 lo, hi;
    CacheRow<KV>::load16(src + c, lo, hi);
    _mm256_store_ps(dst + c, lo);
    _mm256_store_ps(dst + c + 8, hi);
  }
}

// Rows of K or V (given by pointers), one cache line per issue(), into L1.
struct LineStream {
  const char* const* row = nullptr;
  int lines_per_row = 0, line = 0;
  std::int64_t left = 0;
  void issue() {
    if (left > 0) {
      _mm_prefetch(*row + line * 64, _MM_HINT_T0);
      if (++line == lines_per_row) {
        line = 0;
        ++row;
      }
      --left;
    }
  }
};

inline LineStream rows_of(const char* const* rows, std::int64_t count, std::int64_t row_bytes) {
  LineStream s;
  if (count <= 0) return s;
  s.row = rows;
  s.lines_per_row = static_cast<int>(row_bytes >= 64 ? row_bytes / 64 : 1);
  s.left = count * s.lines_per_row;
  return s;
}

// The FMA step of both matmuls (simd.h): the stride a template value for the fast head_dims.
template <int RV, int A, int kStride>
__attribute__((always_inline)) inline void fma_step(__m256 (&acc)[A][RV], const float* x, const float* b, int stride) {
  if constexpr (kStride != 0) simd::fma_step<D8, RV, A, kStride>(acc, x, b);
  else simd::fma_step_strided<D8, RV, A>(acc, x, b, stride);
}

// One head tile of <= 32 rows (RV ymm of rows) as the run driver's stages; DT = head_dim (0:
// at run time), F = the score features, KV = the cache's element type.
template <int RV, int DT, unsigned F, class KV>
struct Tile {
  using Row = CacheRow<KV>;
  static constexpr int W = RV * kLanes;
  static constexpr int NJ = 8 / RV;                // QK tokens per block: NJ x RV = 8 chains
  static constexpr int TD = RV == 1 ? 8 : 8 / RV;  // PV positions per pass: TD x RV = 8 chains
  const ChunkJob& job;
  const Problem& pr;
  const int d;   // head_dim
  const int tb;  // PV tokens per block (kPvBlockFloats / d)
  std::int64_t row_bytes;
  float* qt;  // [d][W]   Q, lanes = rows, position order
  float* kf;  // [NJ][d]  widened K rows of one token block
  float* s;   // [run][W] scores, then rounded P
  float* vf;  // [tb][d]  widened V rows of one PV block
  float* ot;  // [d][W]   running O, position order
  simd::LaneRows<D8, RV> st;  // m, l, alpha, l_i and the score epilogue per row (simd.h)
  simd::RowLimits<D8, RV> lim;  // each row's causal limit and window, relative to lim.base (simd.h)
  __m256 score_scale;           // scale * k_scale (times Row::kFactor)
  float out_scale;              // v_scale (times Row::kFactor)
  // The current run: its tokens' K and V rows and relative positions.
  int n = 0;
  const char* kp[kMaxRun];
  const char* vp[kMaxRun];
  std::int32_t rel[kMaxRun];

  int dim() const { return DT != 0 ? DT : d; }

  // What one tile keeps across stages (Q, scores, O) lives in `own` (own_floats() floats;
  // nullptr: this thread's scratch), so the tiles of a group each have their own; the stage
  // temporaries (widened K and V rows) are shared.
  static std::size_t own_floats(const Problem& p) {
    return static_cast<std::size_t>((2 * p.shape.head_dim + max_run_tokens(p.shape.block_size)) * W);
  }

  explicit Tile(const ChunkJob& j, float* own = nullptr)
      : job(j),
        pr(*j.problem),
        d(static_cast<int>(pr.shape.head_dim)),
        tb(kPvBlockFloats / static_cast<int>(pr.shape.head_dim)),
        row_bytes(pr.shape.head_dim * static_cast<std::int64_t>(sizeof(KV))) {
    const int D = dim();
    if (own == nullptr) own = static_cast<float*>(scratch(0, own_floats(pr) * 4));
    qt = own;
    ot = own + D * W;
    s = own + 2 * D * W;
    kf = static_cast<float*>(scratch(1, kMaxNJ * D * 4));
    vf = static_cast<float*>(scratch(3, kPvBlockFloats * 4));
    alignas(32) float q_row[256];
    lim.init(job, st, [&](int r, const JobRow* jr) {
      if (jr != nullptr) mixpa::query_floats(pr, job.batch, jr->token, jr->head, q_row);  // core/element.h
      for (int p = 0; p < D; ++p) qt[p * W + r] = jr != nullptr ? q_row[Row::position_dim(p)] : 0.0f;
    });
    for (int i = 0; i < D * W; ++i) ot[i] = 0.0f;
    const float sc = pr.variant.scale * pr.k_scale;  // the formula of every flavour
    score_scale = _mm256_set1_ps(sc * Row::kFactor);
    out_scale = pr.v_scale * Row::kFactor;
  }

  const char* key(std::int64_t page, std::int64_t j) const {
    return reinterpret_cast<const char*>(pr.key_row_as<KV>(page, j, job.kv_head));
  }
  const char* value(std::int64_t page, std::int64_t j) const {
    return reinterpret_cast<const char*>(pr.value_row_as<KV>(page, j, job.kv_head));
  }
  // The first (up to) `count` K rows of the page after the run into rows; how many.
  int next_page_keys(const PageRun& run, const char** rows, int count) const {
    if (run.next_page < 0) return 0;
    const int k = static_cast<int>(std::min<std::int64_t>(count, pr.shape.block_size));
    for (int j = 0; j < k; ++j) rows[j] = key(run.next_page, j);
    return k;
  }
  // PV's stream while block [j0, j0 + tb) runs: the next block's V rows, or after the last
  // block the next page's first K rows (`tail`).
  LineStream pv_stream(int j0, const char* const* tail, int tail_count) const {
    return j0 + tb < n ? rows_of(vp + j0 + tb, n - j0 - tb < tb ? n - j0 - tb : tb, row_bytes) : rows_of(tail, tail_count, row_bytes);
  }

  // Cube QK for A consecutive tokens of the run from i0: widen their K rows, then A x RV chains
  // over the positions, the score epilogue on the way out, then each row's causal limit and
  // window (only for blocks holding a token some row does not see). Meanwhile `next` streams
  // into L1.
  template <int A>
  void qk_tokens(int i0, LineStream& next) {
    const int D = dim();
    for (int j = 0; j < A; ++j) widen_row<KV, DT>(reinterpret_cast<const KV*>(kp[i0 + j]), kf + j * D, D);
    __m256 acc[A][RV];
    simd::zero<D8>(acc);
    constexpr int kEvery = 32 / A;  // the next block's A * D / 32 lines over the D steps
#pragma GCC unroll 2
    for (int p = 0; p < D; ++p) {
      if (p % kEvery == 0) next.issue();
      fma_step<RV, A, DT>(acc, qt + p * W, kf + p, D);
    }
    const bool masked = lim.masked(rel[i0], rel[i0 + A - 1]);
    for (int j = 0; j < A; ++j) {
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) {
        __m256 x = st.template logit_rows<F>(acc[j][v], score_scale, v, lim.base + rel[i0 + j]);
        if (masked) x = lim.hide(x, v, rel[i0 + j]);
        _mm256_store_ps(s + (i0 + j) * W + v * kLanes, x);
      }
    }
  }

  // The run's K and V rows and relative positions, in token order.
  void collect(const PageRun& run) {
    n = 0;
    for (int k = 0; k < run.count; ++k) {
      const PageSpan& sp = run.spans[k];
      for (std::int64_t j = sp.begin; j < sp.end; ++j, ++n) {
        kp[n] = key(sp.page, j);
        vp[n] = value(sp.page, j);
        rel[n] = static_cast<std::int32_t>(sp.token0 + j - lim.base);
      }
    }
  }

  // The next block's K rows stream in over a block's steps; PV's first block of V rows is
  // spread over all of QK's blocks (as one block's stream it got D / kEvery of its lines).
  void qk(const PageRun& run) {
    collect(run);
    const int blocks = n / NJ;
    LineStream v = rows_of(vp, n < tb ? n : tb, row_bytes);
    const std::int64_t v_per = blocks > 0 ? (v.left + blocks - 1) / blocks : v.left;
    int i = 0;
    for (; i + NJ <= n; i += NJ) {
      LineStream next = i + NJ < n ? rows_of(kp + i + NJ, n - i - NJ < NJ ? n - i - NJ : NJ, row_bytes) : LineStream{};
      qk_tokens<NJ>(i, next);
      for (std::int64_t k = 0; k < v_per; ++k) v.issue();
    }
    while (v.left > 0) v.issue();
    LineStream none;
    for (; i < n; ++i) qk_tokens<1>(i, none);
  }

  // Vector SF (simd.h): running max, P = bf16(exp(s - M)) (fp16 for F16 caches) in place, l_i,
  // alpha. A row that sees none of the run's tokens so far keeps M = -inf, P = 0.
  void softmax(const PageRun&) { st.template softmax<Row::kF16P>(s, 0, n); }

  // Cube PV then vector UP, in blocks of tb tokens whose widened V rows (16 KiB) stay in L1; per
  // block TD positions at a time (TD x RV accumulators in registers); UP fused into the first
  // block's write-back (O = alpha * O + oi_0), later blocks add theirs. Then L = alpha * L + l_i.
  void pv(const PageRun& run) {
    if constexpr (std::is_same_v<KV, bf16> && RV == 4) {  // measured: Case2 -6%; RV 1 and 2 gained nothing
      pv_pairs(run);
      return;
    }
    const int D = dim();
    const char* next_rows[2 * kMaxNJ];
    const int next_count = next_page_keys(run, next_rows, 2 * NJ);
    for (int j0 = 0; j0 < n; j0 += tb) {
      const int cnt = n - j0 < tb ? n - j0 : tb;
      for (int j = 0; j < cnt; ++j) widen_row<KV, DT>(reinterpret_cast<const KV*>(vp[j0 + j]), vf + j * D, D);
      LineStream next = pv_stream(j0, next_rows, next_count);
      const std::int64_t every = next.left > 0 ? (cnt * (D / TD) + next.left - 1) / next.left : 1 << 30;
      std::int64_t tick = 0;
      const float* p_block = s + j0 * W;
      for (int p0 = 0; p0 < D; p0 += TD) {
        __m256 acc[TD][RV];
        simd::zero<D8>(acc);
        for (int j = 0; j < cnt; ++j) {
          if (++tick == every) {
            tick = 0;
            next.issue();
          }
          simd::fma_step<D8, RV, TD, 1>(acc, p_block + j * W, vf + j * D + p0);
        }
#pragma GCC unroll 8
        for (int dd = 0; dd < TD; ++dd)
#pragma GCC unroll 4
          for (int v = 0; v < RV; ++v) {
            float* o = ot + (p0 + dd) * W + v * kLanes;
            const __m256 old = _mm256_load_ps(o);
            _mm256_store_ps(o, j0 == 0 ? simd::up<D8>(st.alpha[v], old, acc[dd][v]) : _mm256_add_ps(old, acc[dd][v]));
          }
      }
    }
    st.update_l();
  }

  // PV for bf16 caches without the widening pass (its stores and reloads of 16 KiB per block
  // cost 6% of Case2, 32-row tiles): a pass takes TD / 2 pairs of dims (2k, 2k+1),
  // one 32-bit broadcast of the cache row each, widened in registers (word << 16 and
  // word & 0xffff0000: dim 2k at position 16 (k / 8) + k % 8, dim 2k+1 eight positions on, the
  // order load16 gives). Per output element the same FMAs in the same order as pv's.
  void pv_pairs(const PageRun& run) {
    const int D = dim();
    constexpr int TP = TD / 2;
    const char* next_rows[2 * kMaxNJ];
    const int next_count = next_page_keys(run, next_rows, 2 * NJ);
    const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    for (int j0 = 0; j0 < n; j0 += tb) {
      const int cnt = n - j0 < tb ? n - j0 : tb;
      LineStream next = pv_stream(j0, next_rows, next_count);
      const std::int64_t every = next.left > 0 ? (cnt * (D / TD) + next.left - 1) / next.left : 1 << 30;
      std::int64_t tick = 0;
      const float* p_block = s + j0 * W;
      for (int k0 = 0; k0 < D / 2; k0 += TP) {
        __m256 acc[TD][RV];
        simd::zero<D8>(acc);
        for (int j = 0; j < cnt; ++j) {
          if (++tick == every) {
            tick = 0;
            next.issue();
          }
          const char* row = vp[j0 + j] + 4 * k0;
          __m256 pj[RV];
#pragma GCC unroll 4
          for (int v = 0; v < RV; ++v) pj[v] = _mm256_load_ps(p_block + j * W + v * kLanes);
#pragma GCC unroll 4
          for (int t = 0; t < TP; ++t) {
            std::int32_t word;
            std::memcpy(&word, row + 4 * t, 4);
            const __m256i pair = _mm256_set1_epi32(word);
            const __m256 lo = _mm256_castsi256_ps(_mm256_slli_epi32(pair, 16));
            const __m256 hi = _mm256_castsi256_ps(_mm256_and_si256(pair, high));
#pragma GCC unroll 4
            for (int v = 0; v < RV; ++v) {
              acc[2 * t][v] = _mm256_fmadd_ps(pj[v], lo, acc[2 * t][v]);
              acc[2 * t + 1][v] = _mm256_fmadd_ps(pj[v], hi, acc[2 * t + 1][v]);
            }
          }
        }
#pragma GCC unroll 4
        for (int t = 0; t < TP; ++t) {
          const int k = k0 + t, pos = 16 * (k / 8) + k % 8;
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h)
#pragma GCC unroll 4
            for (int v = 0; v < RV; ++v) {
              float* o = ot + (pos + 8 * h) * W + v * kLanes;
              const __m256 old = _mm256_load_ps(o);
              _mm256_store_ps(o, j0 == 0 ? simd::up<D8>(st.alpha[v], old, acc[2 * t + h][v]) : _mm256_add_ps(old, acc[2 * t + h][v]));
            }
        }
      }
    }
    st.update_l();
  }

  void finish(const ChunkOut& out) {
    const int D = dim();
    for (int r = 0; r < job.rows; ++r) {
      for (int p = 0; p < D; ++p) out.o[r * D + Row::position_dim(p)] = ot[p * W + r] * out_scale;
      out.m[r] = st.m[r];
      out.l[r] = st.l[r];
    }
  }
};


// A head tile of <= R rows (R = 2 or 4: GQA decode, e.g. 32/8 heads) with head_dim positions in
// the lanes instead of rows, so no lane idles (the wide tile pads such a tile to 8 lanes: 2x-4x
// the FMAs). It keeps the wide tile's state, score epilogue, masks and SF (scores stay rows in
// lanes, s[j][8]); only the matmuls differ:
//   QK  acc[r][t] += Qn[r][16 positions] * K_t[16 positions], K_t widened in registers (no
//       stores); one hadd tree per token packs its R row sums into the score vector;
//   PV  positions in lanes: On[r][16c..] += bcst(P[r][j]) * V_j[16c..], V_j widened in
//       registers; per pass 2 kC vectors of positions for R rows stay in registers over a block
//       of tokens whose V rows (16 KiB) stay in L1.
// Qn and On are [R][head_dim] in the cache's position order (as the wide tile's Qt and Ot).
template <int R, int DT, unsigned F, class KV>
struct NarrowTile : Tile<1, DT, F, KV> {
  using Base = Tile<1, DT, F, KV>;
  using Row = typename Base::Row;
  using Base::dim;
  using Base::job;
  using Base::kp;
  using Base::vp;
  using Base::rel;
  using Base::n;
  using Base::s;
  using Base::st;
  using Base::row_bytes;
  static constexpr int W = Base::W;
  static constexpr int T = R == 4 ? 2 : 4;  // QK tokens per block: R x T = 8 chains
  static constexpr int kC = R == 4 ? 1 : 2;  // PV 16-position chunks per pass: R x 2 kC = 8 chains
  float* qn;  // [R][d]
  float* on;  // [R][d]  (the wide tile's Ot buffer: d * 8 >= R * d floats)
  int tbn;    // PV tokens per block

  static std::size_t own_floats(const Problem& p) {
    return Base::own_floats(p) + static_cast<std::size_t>(R * p.shape.head_dim);
  }
  static float* own_buffer(const ChunkJob& j, float* own) {
    return own != nullptr ? own : static_cast<float*>(scratch(0, own_floats(*j.problem) * 4));
  }

  explicit NarrowTile(const ChunkJob& j, float* own = nullptr) : Base(j, own_buffer(j, own)) {
    const int D = dim();
    qn = this->qt + Base::own_floats(this->pr);
    on = this->ot;
    for (int r = 0; r < R; ++r)
      for (int p = 0; p < D; ++p) qn[r * D + p] = this->qt[p * W + r];  // 0 past the tile's rows
    tbn = static_cast<int>(std::max<std::int64_t>(16, 16384 / row_bytes));
  }

  // The R row sums of acc[0..R)[t] (each over its 8 lanes) in lanes 0..R of a vector, 0 above.
  static __m256 row_sums4(const __m256 (&a)[4]) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    return _mm256_zextps128_ps256(_mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }
  // Two tokens of a 4-row tile: [r0..r3 of token 0, r0..r3 of token 1], each lane the sum
  // row_sums4 forms (one cross-lane add for both tokens instead of one each).
  static __m256 row_sums4x2(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 b0, __m256 b1, __m256 b2, __m256 b3) {
    const __m256 x = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m256 y = _mm256_hadd_ps(_mm256_hadd_ps(b0, b1), _mm256_hadd_ps(b2, b3));
    return _mm256_add_ps(_mm256_permute2f128_ps(x, y, 0x20), _mm256_permute2f128_ps(x, y, 0x31));
  }
  // Two tokens of a 2-row tile: x = [r0 t0, r1 t0, r0 t1, r1 t1].
  static __m128 row_sums2x2(__m256 a0t0, __m256 a1t0, __m256 a0t1, __m256 a1t1) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0t0, a1t0), _mm256_hadd_ps(a0t1, a1t1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  }

  void store_score(int i, __m256 dot, bool masked) {
    __m256 x = st.template logit_rows<F>(dot, this->score_scale, 0, this->lim.base + rel[i]);
    if (masked) x = this->lim.hide(x, 0, rel[i]);
    _mm256_store_ps(s + i * W, x);
  }

  template <int A>
  void qk_tokens(int i0, LineStream& next) {
    const int D = dim();
    const KV* k[A];
    for (int t = 0; t < A; ++t) k[t] = reinterpret_cast<const KV*>(kp[i0 + t]);
    __m256 acc[R][A];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int t = 0; t < A; ++t) acc[r][t] = _mm256_setzero_ps();
    // The next block's lines over the D / 16 steps.
    const int steps = D / 16;
    const int per = static_cast<int>((next.left + steps - 1) / steps);
#pragma GCC unroll 2
    for (int c = 0; c < D; c += 16) {
      for (int k = 0; k < per; ++k) next.issue();
      if constexpr (R * A + 2 * A + 1 <= 15) {
        // All A tokens' 16 positions widened (2 A registers), then one Q vector at a time: the
        // R x A accumulators, 2 A cache vectors and one Q vector fit the 16 ymm registers (the
        // token-outer order below keeps 2 R Q vectors live and spilled an accumulator here).
        __m256 lo[A], hi[A];
#pragma GCC unroll 4
        for (int t = 0; t < A; ++t) Row::load16(k[t] + c, lo[t], hi[t]);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const __m256 ql = _mm256_load_ps(qn + r * D + c);
#pragma GCC unroll 4
          for (int t = 0; t < A; ++t) acc[r][t] = _mm256_fmadd_ps(ql, lo[t], acc[r][t]);
          const __m256 qh = _mm256_load_ps(qn + r * D + c + 8);
#pragma GCC unroll 4
          for (int t = 0; t < A; ++t) acc[r][t] = _mm256_fmadd_ps(qh, hi[t], acc[r][t]);
        }
      } else {
        // One token at a time (2 registers), the 2 R Q vectors shared by the A tokens.
#pragma GCC unroll 4
        for (int t = 0; t < A; ++t) {
          __m256 lo, hi;
          Row::load16(k[t] + c, lo, hi);
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(_mm256_load_ps(qn + r * D + c), lo, acc[r][t]);
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(_mm256_load_ps(qn + r * D + c + 8), hi, acc[r][t]);
        }
      }
    }
    const bool masked = this->lim.masked(rel[i0], rel[i0 + A - 1]);
    if constexpr (R == 4 && A == 2) {
      // Both tokens' row sums in one vector (the same adds as row_sums4 per token).
      const __m256 x = row_sums4x2(acc[0][0], acc[1][0], acc[2][0], acc[3][0], acc[0][1], acc[1][1], acc[2][1], acc[3][1]);
      store_score(i0, _mm256_zextps128_ps256(_mm256_castps256_ps128(x)), masked);
      store_score(i0 + 1, _mm256_zextps128_ps256(_mm256_extractf128_ps(x, 1)), masked);
    } else if constexpr (R == 4) {
#pragma GCC unroll 4
      for (int t = 0; t < A; ++t) {
        const __m256 a[4] = {acc[0][t], acc[1][t], acc[2][t], acc[3][t]};
        store_score(i0 + t, row_sums4(a), masked);
      }
    } else {
      static_assert(A % 2 == 0 || A == 1);
      if constexpr (A == 1) {
        const __m128 x = row_sums2x2(acc[0][0], acc[1][0], acc[0][0], acc[1][0]);
        store_score(i0, _mm256_zextps128_ps256(_mm_castpd_ps(_mm_move_sd(_mm_setzero_pd(), _mm_castps_pd(x)))), masked);
      } else {
#pragma GCC unroll 4
        for (int t = 0; t < A; t += 2) {
          const __m128 x = row_sums2x2(acc[0][t], acc[1][t], acc[0][t + 1], acc[1][t + 1]);
          store_score(i0 + t, _mm256_zextps128_ps256(_mm_castpd_ps(_mm_move_sd(_mm_setzero_pd(), _mm_castps_pd(x)))), masked);
          store_score(i0 + t + 1, _mm256_zextps128_ps256(_mm_movehl_ps(_mm_setzero_ps(), x)), masked);
        }
      }
    }
  }

  // K rows are requested kAhead blocks before their block (spread over a block's steps: one
  // block ahead, about 150 cycles, left a cold Decode32k waiting on them); PV's first V rows
  // are spread over all of QK's blocks (issued at the last block, they were a burst of 4 lines
  // per V row that stalled the prefetch queue).
  static constexpr int kAhead = (6 + T - 1) / T;

  void qk(const PageRun& run) {
    this->collect(run);
    const int blocks = n / T;
    LineStream v = rows_of(vp, std::min(n, tbn), row_bytes);
    const std::int64_t v_per = blocks > 0 ? (v.left + blocks - 1) / blocks : v.left;
    int i = 0;
    for (; i + T <= n; i += T) {
      const int ahead = i + kAhead * T;
      LineStream next = ahead < n ? rows_of(kp + ahead, std::min(T, n - ahead), row_bytes) : LineStream{};
      qk_tokens<T>(i, next);
      for (std::int64_t k = 0; k < v_per; ++k) v.issue();
    }
    while (v.left > 0) v.issue();
    LineStream none;
    for (; i < n; ++i) qk_tokens<1>(i, none);
  }

  void softmax(const PageRun& run) { Base::softmax(run); }

  // One pass of PV over positions [c0, c0 + 16 C) for tokens [j0, j0 + cnt): the R x 2C
  // accumulators, then UP (the first block: O = alpha O + acc) or O += acc.
  template <int C>
  void pv_pass(int j0, int cnt, int c0, const float* alpha, LineStream& next, std::int64_t every, std::int64_t& tick) {
    const int D = dim();
    __m256 acc[R][2 * C];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int q = 0; q < 2 * C; ++q) acc[r][q] = _mm256_setzero_ps();
    for (int j = 0; j < cnt; ++j) {
      if (++tick == every) {
        tick = 0;
        next.issue();
      }
      const KV* v = reinterpret_cast<const KV*>(vp[j0 + j]) + c0;
      const float* pj = s + (j0 + j) * W;
      __m256 p[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) p[r] = _mm256_broadcast_ss(pj + r);
#pragma GCC unroll 2
      for (int c = 0; c < C; ++c) {
        __m256 lo, hi;
        Row::load16(v + 16 * c, lo, hi);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          acc[r][2 * c] = _mm256_fmadd_ps(p[r], lo, acc[r][2 * c]);
          acc[r][2 * c + 1] = _mm256_fmadd_ps(p[r], hi, acc[r][2 * c + 1]);
        }
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(alpha + r);
#pragma GCC unroll 4
      for (int q = 0; q < 2 * C; ++q) {
        float* o = on + r * D + c0 + 8 * q;
        const __m256 old = _mm256_load_ps(o);
        _mm256_store_ps(o, j0 == 0 ? simd::up<D8>(a, old, acc[r][q]) : _mm256_add_ps(old, acc[r][q]));
      }
    }
  }

  void pv(const PageRun& run) {
    const int D = dim();
    alignas(32) float alpha[kLanes];
    _mm256_store_ps(alpha, st.alpha[0]);
    const char* next_rows[kAhead * T];  // the next page's first kAhead blocks (its QK requests the rest ahead)
    const int next_count = this->next_page_keys(run, next_rows, kAhead * T);
    for (int j0 = 0; j0 < n; j0 += tbn) {
      const int cnt = std::min(n - j0, tbn);
      // The next block's V rows, or after the last block the next page's first K rows.
      LineStream next = j0 + tbn < n ? rows_of(vp + j0 + tbn, std::min(n - j0 - tbn, tbn), row_bytes)
                                     : rows_of(next_rows, next_count, row_bytes);
      const int passes = D / (16 * kC) + (D % (16 * kC) != 0 ? 1 : 0);
      const std::int64_t every = next.left > 0 ? std::max<std::int64_t>(1, (std::int64_t{cnt} * passes) / next.left) : 1 << 30;
      std::int64_t tick = 0;
      int c0 = 0;
      for (; c0 + 16 * kC <= D; c0 += 16 * kC) pv_pass<kC>(j0, cnt, c0, alpha, next, every, tick);
      for (; c0 < D; c0 += 16) pv_pass<1>(j0, cnt, c0, alpha, next, every, tick);
    }
    st.update_l();
  }

  void finish(const ChunkOut& out) {
    const int D = dim();
    const float os = this->out_scale;
    for (int r = 0; r < job.rows; ++r) {
      for (int p = 0; p < D; ++p) out.o[r * D + Row::position_dim(p)] = on[r * D + p] * os;
      out.m[r] = st.m[r];
      out.l[r] = st.l[r];
    }
  }
};

// One tile of flavour T (a template of the score features) over job.
template <template <unsigned> class T>
void attend(const ChunkJob& job, const ChunkOut& out) {
  simd::with_score_features(job.problem->variant.score_features(), [&]<unsigned F>() {
    T<F> tile(job);
    drive_chunk_runs(tile, job, out);
  });
}

// A group of tiles (one per kv head: the same request, token range and row count) as one run
// flavour: each stage runs for every tile on the same pages, so a page's rows of all kv heads
// are read together (one pass over the page instead of one per kv head, each 1/num_kv_heads of
// every row). Per tile the stages and their arithmetic are the single tile's: bitwise the same.
template <class T>
struct TileGroup {
  static constexpr int kMax = 8;  // work units group at most 8 kv heads (cpu_executor.cpp)
  alignas(T) unsigned char storage[kMax][sizeof(T)];
  int n = 0;
  T& tile(int h) { return *std::launder(reinterpret_cast<T*>(storage[h])); }

  TileGroup(std::span<const ChunkJob> jobs, float* own, std::size_t own_floats) : n(static_cast<int>(jobs.size())) {
    for (int h = 0; h < n; ++h) new (storage[h]) T(jobs[h], own + h * own_floats);
  }
  ~TileGroup() {
    for (int h = 0; h < n; ++h) tile(h).~T();
  }
  TileGroup(const TileGroup&) = delete;
  TileGroup& operator=(const TileGroup&) = delete;

  void qk(const PageRun& run) {
    for (int h = 0; h < n; ++h) tile(h).qk(run);
  }
  void softmax(const PageRun& run) {
    for (int h = 0; h < n; ++h) tile(h).softmax(run);
  }
  void pv(const PageRun& run) {
    for (int h = 0; h < n; ++h) tile(h).pv(run);
  }
  void finish(std::span<const ChunkOut> outs) {
    for (int h = 0; h < n; ++h) tile(h).finish(outs[h]);
  }
};

template <template <unsigned> class T>
void attend_group(std::span<const ChunkJob> jobs, std::span<const ChunkOut> outs) {
  simd::with_score_features(jobs[0].problem->variant.score_features(), [&]<unsigned F>() {
    const std::size_t own = T<F>::own_floats(*jobs[0].problem);
    float* buffers = static_cast<float*>(scratch(0, jobs.size() * own * 4));
    TileGroup<T<F>> group(jobs, buffers, own);
    drive_chunk_runs(group, jobs[0], outs);
  });
}

template <class KV, int RV, int DT>
struct Wide {
  template <unsigned F>
  using T = Tile<RV, DT, F, KV>;
};
template <class KV, int R, int DT>
struct Narrow {
  template <unsigned F>
  using T = NarrowTile<R, DT, F, KV>;
};

// The tile flavour of `rows` rows (<= 32) as L<KV, width, DT>::T: narrow tiles for <= 4 rows,
// wide ones (RV ymm of rows) above; the fast head_dims as template values, the others at run
// time.
template <class KV, class Fn>
void with_tile(std::int64_t rows, std::int64_t head_dim, Fn&& fn) {
  auto dims = [&]<template <class, int, int> class L, int X>() {
    switch (head_dim) {
      case 64: return fn.template operator()<L<KV, X, 64>::template T>();
      case 128: return fn.template operator()<L<KV, X, 128>::template T>();
      case 256: return fn.template operator()<L<KV, X, 256>::template T>();
      default: return fn.template operator()<L<KV, X, 0>::template T>();
    }
  };
  if (rows <= 2) dims.template operator()<Narrow, 2>();
  else if (rows <= 4) dims.template operator()<Narrow, 4>();
  else if (rows <= 8) dims.template operator()<Wide, 1>();
  else if (rows <= 16) dims.template operator()<Wide, 2>();
  else dims.template operator()<Wide, 4>();
}

// 32-row sub-tiles keep the accumulators in registers.
template <class KV>
void attend_rows(const ChunkJob& job, const ChunkOut& out) {
  const std::int64_t dim = job.problem->shape.head_dim;
  for (int r0 = 0; r0 < job.rows; r0 += 32) {
    ChunkJob sub = job;
    sub.head_begin = job.head_begin + r0;
    sub.row_begin = job.row_begin + r0;
    sub.rows = job.rows - r0 < 32 ? job.rows - r0 : 32;
    const ChunkOut part{out.o + r0 * dim, out.m + r0, out.l + r0};
    with_tile<KV>(sub.rows, dim, [&]<template <unsigned> class T>() { attend<T>(sub, part); });
  }
}

// Groups of narrow tiles (<= 8 rows) page by page; wider tiles read enough of each row per K/V
// load already, and run one by one (their stages' registers are the bound).
template <class KV>
void attend_group_rows(std::span<const ChunkJob> jobs, std::span<const ChunkOut> outs) {
  constexpr std::size_t kMax = TileGroup<Tile<1, 0, 0, KV>>::kMax;
  if (jobs[0].rows > 8) {
    for (std::size_t h = 0; h < jobs.size(); ++h) attend_rows<KV>(jobs[h], outs[h]);
    return;
  }
  for (std::size_t h0 = 0; h0 < jobs.size(); h0 += kMax) {
    const std::size_t n = std::min(kMax, jobs.size() - h0);
    const auto js = jobs.subspan(h0, n);
    const auto os = outs.subspan(h0, n);
    with_tile<KV>(jobs[0].rows, jobs[0].problem->shape.head_dim,
                  [&]<template <unsigned> class T>() { attend_group<T>(js, os); });
  }
}

}  // namespace
}  // namespace avx2
}  // namespace mixpa::cpu
