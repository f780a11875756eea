// The paged-attention MIX kernel on a GPU (the device code; paged_attention_<dtype>.cu each
// instantiate it for one KernelDtype, so nvcc compiles the dtypes in parallel, and
// paged_attention.cu dispatches to them). One persistent CTA per SM stride-loops over work
// items (logical block x KV chunk), like the origin's hardware blocks over logical blocks.
// Roles inside a CTA (SPEC §2 mapped onto warps):
//   producer warp   the load side: resolves pages through the block table and gathers K/V
//                   token rows with 16-byte cp.async into a ring of `stages` stages (TPUSH)
//   compute warps   cube + vector fused: S = Q.K^T on tensor cores, online softmax on the
//                   S fragment in registers (running max, P rounded to bf16, l summed from the
//                   rounded P), O += P.V on tensor cores (TPOP ... TFREE)
// q_tile 16: the 4 compute warps split each 64-token stage by tokens (16 each) and merge their
// softmax states in a fixed order at the end of the item; q_tile 64: each warp owns 16 rows.
// Rows of a stage past the item's token range are zero-filled by cp.async, never read, so NaN
// or Inf in unused page rows cannot reach the output. The variant of SPEC §6 enters at the
// score epilogue (soft-cap, ALiBi), the token ranges (a window is a range the planner gives)
// and the finalize (sinks, lse); a split block is merged by the last of its CTAs to finish.
// SPEC §6 dtypes and shapes: the tile rows are (new token, group head) pairs, each row with its
// own causal limit and window inside the item's range; fp16 runs mma.f16 (kernel_params.h:
// KernelDtype); fp8 stages are dequantised by the compute warps into a 16-bit tile (dequant.h)
// before the fragment loads, which then run unchanged. A head_dim below the kernel's (any
// multiple of 16) is padded: the producer zero-fills the pieces past it, stores skip them.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/dequant.h"
#include "cuda/kernel_launch.h"
#include "cuda/log2_state.h"
#include "cuda/smem_pipe.cuh"
#include "cuda/tile_layout.h"
#include "cuda/warp_mma.cuh"

namespace mixpa::cuda {
namespace kernels {  // one instantiation set per KernelDtype, each compiled in its own translation unit

constexpr float kNegInf = -INFINITY;

template <int kHeadDim_, int kRowFrags, int kDtype>
struct Config {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr KernelDtype kDt = static_cast<KernelDtype>(kDtype);
  static constexpr bool kFp8 = is_fp8(kDt);
  static constexpr bool kQkF16 = kDt == KernelDtype::kF16 || kDt == KernelDtype::kFp8F16;  // S = Q.K^T in f16
  static constexpr bool kPvF16 = kDt == KernelDtype::kF16;  // P rounded to fp16, O += P.V in f16
  using KvElem = std::conditional_t<kFp8, std::uint8_t, std::uint16_t>;
  static constexpr TileGeometry kGeom{kHeadDim, kRowFrags, kv_elem_bytes(kDt)};  // the ring
  static constexpr TileGeometry kMath = kGeom.math();                           // the fragments' tiles
  static constexpr int kKSteps = kHeadDim / 16;                 // k-steps of S = Q.K^T
  static constexpr int kDimTiles = kHeadDim / 8;                // n-tiles of O
  static constexpr int kTokenWarps = kComputeWarps / kRowFrags;
  static constexpr int kWarpTokens = kTileTokens / kTokenWarps;  // tokens of a stage per warp
  static constexpr int kSTiles = kWarpTokens / 8;               // n-tiles of S per warp
  static constexpr int kPvSteps = kWarpTokens / 16;             // k-steps of O += P.V
  static constexpr bool kQInRegisters = kHeadDim <= 128;        // else reloaded (L1) per stage
  static_assert(kHeadDim % 32 == 0 && kHeadDim >= 64 && kHeadDim <= 256);
  static_assert(kRowFrags * kTokenWarps == kComputeWarps);
  static_assert(kTokenWarps == 1 || kRowFrags == 1, "the cross-warp merge assumes one row group");
  static_assert(kGeom.rows_per_pass() >= 1 && 32 % kGeom.chunks_per_row() == 0);
  static_assert(!kFp8 || dequant_units_per_lane(kGeom) >= 1);
};

// ---------------------------------------------------------------------------------------------
// The stride loop, written once: CTA k runs items k, k + grid, k + 2 grid, ... (the origin's
// hardware blocks over logical blocks). The producer and the compute warps walk the same
// sequence, which keeps the pipe's push and pop counts equal.
struct ItemLoop {
  int i, end, step;
  __device__ explicit ItemLoop(const KernelParams& p) : i(blockIdx.x), end(p.num_items), step(gridDim.x) {}
  __device__ bool is_valid() const { return i < end; }
  __device__ ItemLoop& operator++() {
    i += step;
    return *this;
  }
};

__device__ inline void raise_bad_page(const KernelParams& p) { atomicOr(p.error_flag, kErrorPageOutOfRange); }

// ---------------------------------------------------------------------------------------------
// Producer: TPUSH one stage per 64-token tile of every item this CTA owns. Each lane runs its
// own address stream (tile_layout.h: ProducerStream). A full tile whose rows stay inside each
// lane's current page (every tile when pages are >= 64 tokens and aligned) is the fast path:
// per pass two cp.async from pointers in registers bumped by a pass's rows, smem destinations
// at constant offsets from swizzle_period per-lane bases; the page is resolved (block table)
// only at the tile's end, when the stream leaves it. Other full tiles check the page per pass;
// an item's last, partial tile also zero-fills the rows past its range (nothing read there).
template <class C>
__device__ void produce(const KernelParams& p, const SmemPipe& pipe, int lane) {
  constexpr TileGeometry g = C::kGeom;
  constexpr int kPeriod = swizzle_period(g);
  constexpr int kPasses = g.passes();
  constexpr int kRows = g.rows_per_pass();
  using T = typename C::KvElem;
  static_assert(kPasses % kPeriod == 0);
  const int lane_row = lane / g.chunks_per_row();
  std::uint32_t xo[kPeriod];
#pragma unroll
  for (int u = 0; u < kPeriod; ++u) {
    xo[u] = static_cast<std::uint32_t>(swizzled_offset(g, u * kRows + lane_row, lane % g.chunks_per_row()));
    asm volatile("" : "+r"(xo[u]));  // keep the offsets in registers (no re-derivation per pass)
  }
  PipeState s = pipe.producer_start_state();
  for (ItemLoop it(p); it.is_valid(); ++it) {
    const WorkItem w = p.items[it.i];
    const int tiles = item_tiles(w);
    if (tiles == 0) continue;
    ProducerStream<T> st;
    st.begin(p, w, g, lane);
    for (int tile = 0; tile < tiles; ++tile) {
      const std::int64_t t0 = w.token_begin + static_cast<std::int64_t>(tile) * kTileTokens;
      const std::uint32_t k_tile = smem_address(tpush_begin(pipe, s));
      std::uint32_t dst[kPeriod];
#pragma unroll
      for (int u = 0; u < kPeriod; ++u) dst[u] = k_tile + xo[u];
      constexpr std::uint32_t kV = g.tile_bytes(), kPeriodBytes = swizzle_period_bytes(g);
      const bool full = t0 + kTileTokens <= w.token_end;
      if (full && __all_sync(0xffffffffu, st.stays_in_page(p, kPasses))) {
        const bool zero = st.bytes == 0;
        const T* kp = st.k;
        const T* vp = st.v;
#pragma unroll
        for (int pass = 0; pass < kPasses; ++pass) {
          const std::uint32_t d = dst[pass % kPeriod] + (pass / kPeriod) * kPeriodBytes;
          cp_async_16_or_zero(d, kp, zero);
          cp_async_16_or_zero(d + kV, vp, zero);
          kp += st.k_step, vp += st.v_step;
        }
        st.skip(p, kPasses);
      } else if (full) {
#pragma unroll
        for (int pass = 0; pass < kPasses; ++pass) {
          const std::uint32_t d = dst[pass % kPeriod] + (pass / kPeriod) * kPeriodBytes;
          cp_async_16_or_zero(d, st.k, st.bytes == 0);
          cp_async_16_or_zero(d + kV, st.v, st.bytes == 0);
          st.advance(p);
        }
      } else {
        const int rows_left = static_cast<int>(w.token_end - t0) - lane_row;  // this lane's rows < rows_left
#pragma unroll
        for (int pass = 0; pass < kPasses; ++pass) {
          const std::uint32_t d = dst[pass % kPeriod] + (pass / kPeriod) * kPeriodBytes;
          const bool valid = pass * kRows < rows_left;
          cp_async_16_or_zero(d, valid ? static_cast<const void*>(st.k) : p.key_cache, !valid || st.bytes == 0);
          cp_async_16_or_zero(d + kV, valid ? static_cast<const void*>(st.v) : p.value_cache, !valid || st.bytes == 0);
          if ((pass + 1) * kRows < rows_left) st.advance(p);  // never enters a page past the item
        }
      }
      tpush_end(pipe, s);
    }
    if (st.bad) raise_bad_page(p);
  }
  cp_async_wait_all();  // leave no copy in flight behind (their barriers were armed already)
}

// ---------------------------------------------------------------------------------------------
// Compute warps (cube + vector fused), one item at a time:
//   begin_item      Q fragments, the rows' (token, head), limits and ALiBi slopes, empty state
//   per stage       TPOP; fp8: dequantise (rows of this warp) and TFREE; qk (S = Q.K^T);
//                   softmax_update (SF: score epilogue, per-row mask, running max, p, l; alpha
//                   rescales O); pv (O += P.V); TFREE
//   merge_warps     q_tile 16: the token warps' states combined on their log2 form (UP across warps)
//   store           out = v_scale O / (l + sink), lse; or the partial (O, m, l) of a split block
//   arrive_split    split blocks: the last CTA to finish one merges its partials (merge_block)
// Elements e = 0,1 of an accumulator fragment are row g, e = 2,3 row g + 8 (lane = 4 g + t).
template <class C>
struct ComputeWarp {
  static constexpr TileGeometry kGeom = C::kMath;  // the 16-bit tiles the fragments come from
  const KernelParams& p;
  const int warp, lane, g, t;
  const int rf;  // rows [16 rf, 16 rf + 16) of the q tile
  const int tw;  // tokens [tw * kWarpTokens, ...) of each stage

  // Per item.
  WorkItem w;
  int row0, row1;
  int tok[2];                // rows g, g + 8: their new token p (0..q_len-1)
  int lim_lo[2], lim_hi[2];  // their visible tokens, item-relative: [lim_lo, lim_hi) (empty for padding rows)
  const std::uint16_t* q0;
  const std::uint16_t* q1;
  std::uint32_t qf[C::kQInRegisters ? C::kKSteps : 1][4];
  float slope2[2];           // ALiBi slopes of rows g, g + 8 in log2 units
  float o[C::kDimTiles][4];  // (16 rows, head_dim) fragment, unnormalised
  Log2State st[2];           // rows g and g + 8: running max (log2 units) and this lane's share of l

  __device__ ComputeWarp(const KernelParams& params, int warp_, int lane_)
      : p(params), warp(warp_), lane(lane_), g(lane_ >> 2), t(lane_ & 3), rf(warp_row_frag(kGeom, warp_)),
        tw(warp_token_slice(kGeom, warp_)) {}

  // A fragment of Q for k-step kk: rows (g, g+8) of the warp's row fragment, zero past `rows`
  // and past head_dim (a padded kernel).
  __device__ void load_q(std::uint32_t (&a)[4], int kk) const {
    const int c = 16 * kk + 2 * t;
    const bool in = c < p.head_dim;  // then c + 8 < head_dim too (multiples of 16)
    a[0] = q0 && in ? __ldg(reinterpret_cast<const unsigned int*>(q0 + c)) : 0u;
    a[1] = q1 && in ? __ldg(reinterpret_cast<const unsigned int*>(q1 + c)) : 0u;
    a[2] = q0 && in ? __ldg(reinterpret_cast<const unsigned int*>(q0 + c + 8)) : 0u;
    a[3] = q1 && in ? __ldg(reinterpret_cast<const unsigned int*>(q1 + c + 8)) : 0u;
  }

  // Row `row` of the tile: pair k = head_begin + row - kv_head * group is token k / group of
  // head kv_head * group + k % group (0, 0 for a padding row).
  struct RowId {
    int tok, head;
    std::int64_t out_row;  // its row of query, out and lse ((b, p, h) flattened)
  };
  __device__ RowId row_id(int row) const {
    const bool valid = row < w.rows;
    const int kv0 = w.kv_head * p.group;
    const int k = w.head_begin + row - kv0;
    const int tk = valid ? k / p.group : 0, h = valid ? kv0 + k % p.group : 0;
    return {tk, h, (static_cast<std::int64_t>(w.batch) * p.q_len + tk) * p.num_heads + h};
  }

  // The row sees [first_visible(pos), pos] with pos = position + token, inside the item's range.
  __device__ void begin_row(int r, int row) {
    const bool valid = row < w.rows;
    const RowId id = row_id(row);
    tok[r] = id.tok;
    const std::int64_t pos = w.position + tok[r];
    const std::int64_t lo = p.window_left >= 0 ? (pos - p.window_left > 0 ? pos - p.window_left : 0) : 0;
    const std::int64_t hi = pos + 1 < w.token_end ? pos + 1 : w.token_end;
    const std::int64_t lo_rel = lo - w.token_begin;
    lim_lo[r] = lo_rel < 0 ? -1 : static_cast<int>(lo_rel);
    lim_hi[r] = valid ? static_cast<int>(hi - w.token_begin) : 0;
    slope2[r] = p.alibi_slopes && valid ? p.alibi_slopes[id.head] * kLog2e : 0.0f;
  }

  __device__ void begin_item(const WorkItem& item) {
    w = item;
    row0 = 16 * rf + g, row1 = row0 + 8;
    begin_row(0, row0);
    begin_row(1, row1);
    q0 = row0 < w.rows ? p.query + row_id(row0).out_row * p.head_dim : nullptr;
    q1 = row1 < w.rows ? p.query + row_id(row1).out_row * p.head_dim : nullptr;
    if constexpr (C::kQInRegisters) {
#pragma unroll
      for (int kk = 0; kk < C::kKSteps; ++kk) load_q(qf[kk], kk);
    }
#pragma unroll
    for (int n = 0; n < C::kDimTiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    st[0] = st[1] = Log2State{};
  }

  // fp8: this warp's rows [16 warp, 16 warp + 16) of the stage's K and V tiles, dequantised
  // into the 16-bit tiles at `dq` (K in the S mma's type, V in bf16). q_tile 16: the rows this
  // warp alone reads; q_tile 64: a quarter of the rows every warp reads (the caller syncs).
  __device__ void dequant(std::uint32_t stage, std::uint32_t dq) const {
    constexpr TileGeometry kRing = C::kGeom;
    constexpr int kUnits = dequant_units_per_lane(kRing);
    const bool e5m2 = p.fp8_e5m2 != 0;
#pragma unroll
    for (int tensor = 0; tensor < 2; ++tensor) {
      const std::uint32_t src = stage + tensor * kRing.tile_bytes(), dst = dq + tensor * kGeom.tile_bytes();
#pragma unroll 2  // few registers: the hd256 q_tile-64 instantiations have none to spare
      for (int i = 0; i < kUnits; ++i) {
        const DequantUnit u = dequant_unit(kRing, 16 * warp, lane + 32 * i);
        std::uint32_t in[4], out[8];
        lds_128(in, src + u.src);
        if (tensor == 0 && C::kQkF16) fp8_piece_to_16<false>(in, e5m2, out);
        else fp8_piece_to_16<true>(in, e5m2, out);
        sts_128(dst + u.dst_lo, out[0], out[1], out[2], out[3]);
        sts_128(dst + u.dst_hi, out[4], out[5], out[6], out[7]);
      }
    }
  }

  // S = Q . K^T over this warp's kWarpTokens tokens of the stage.
  __device__ void qk(std::uint32_t k_tile, float (&sc)[C::kSTiles][4]) const {
#pragma unroll
    for (int j = 0; j < C::kSTiles; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
#pragma unroll
    for (int pp = 0; pp < C::kKSteps / 2; ++pp) {
      std::uint32_t qa[4], qb[4];
      if constexpr (C::kQInRegisters) {
#pragma unroll
        for (int e = 0; e < 4; ++e) qa[e] = qf[2 * pp][e], qb[e] = qf[2 * pp + 1][e];
      } else {
        load_q(qa, 2 * pp);
        load_q(qb, 2 * pp + 1);
      }
#pragma unroll
      for (int j = 0; j < C::kSTiles; ++j) {
        const ProducerSlot src = k_fragment_source(kGeom, tw, j, pp, lane);
        std::uint32_t b[4];  // pieces 4pp..4pp+3 of 8 token rows: k-steps 2pp and 2pp+1
        ldmatrix_x4(b, k_tile + swizzled_offset(kGeom, src.row, src.chunk));
        mma_16816<C::kQkF16>(sc[j], qa, b[0], b[1]);
        mma_16816<C::kQkF16>(sc[j], qb, b[2], b[3]);
      }
    }
  }

  // Vector step SF: the score epilogue (logit_log2), mask each row's columns outside its
  // visible tokens (the item's range, its causal limit and window), running max,
  // p = exp2(x - M) rounded to bf16 (fp16 for F16 caches; left in sc), l from the rounded p;
  // O and l rescaled by alpha = exp2(M_old - M). The feature pair is a template: the plain
  // case is the seed's dot * scale_log2.
  template <bool kSoftcap, bool kAlibi>
  __device__ void softmax_update_as(float (&sc)[C::kSTiles][4], std::int64_t t0) {
    const int off = static_cast<int>(t0 - w.token_begin);  // the stage's first column, item-relative
    const int lo[2] = {lim_lo[0] - off, lim_lo[1] - off}, hi[2] = {lim_hi[0] - off, lim_hi[1] - off};
    const int t_minus_pos = kAlibi ? static_cast<int>(t0 - w.position) : 0;
    float mx[2] = {kNegInf, kNegInf};
#pragma unroll
    for (int j = 0; j < C::kSTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = score_column(kGeom, tw, j, t, e), r = e >> 1;
        const float x = logit_log2<kSoftcap, kAlibi>(p, sc[j][e], slope2[r], t_minus_pos + col - tok[r]);
        sc[j][e] = col < hi[r] && col >= lo[r] ? x : kNegInf;
        mx[r] = fmaxf(mx[r], sc[j][e]);
      }
    float alpha[2], m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(st[r].m, mx[r]);
      m_use[r] = m_new == kNegInf ? 0.0f : m_new;  // all masked so far: p = 0, no (-inf) - (-inf)
      alpha[r] = exp2f(st[r].m - m_use[r]);        // empty state: exp2(-inf) = 0
      st[r].m = m_new;
    }
    float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < C::kSTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        sc[j][e] = round_16<C::kPvF16>(exp2f(sc[j][e] - m_use[e >> 1]));
        row_sum[e >> 1] += sc[j][e];
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) st[r].l = st[r].l * alpha[r] + row_sum[r];
#pragma unroll
    for (int n = 0; n < C::kDimTiles; ++n) {
      o[n][0] *= alpha[0];
      o[n][1] *= alpha[0];
      o[n][2] *= alpha[1];
      o[n][3] *= alpha[1];
    }
  }

  // Uniform per launch: one branch per stage picks the instantiation.
  __device__ void softmax_update(float (&sc)[C::kSTiles][4], std::int64_t t0) {
    if (p.softcap_log2 > 0.0f) {
      if (p.alibi_slopes) softmax_update_as<true, true>(sc, t0);
      else softmax_update_as<true, false>(sc, t0);
    } else {
      if (p.alibi_slopes) softmax_update_as<false, true>(sc, t0);
      else softmax_update_as<false, false>(sc, t0);
    }
  }

  // O += P . V: two S tiles (16 tokens) form one A tile of P.
  __device__ void pv(const float (&sc)[C::kSTiles][4], std::uint32_t v_tile) {
#pragma unroll
    for (int q = 0; q < C::kPvSteps; ++q) {
      std::uint32_t pa[4];
      pa[0] = pack_16<C::kPvF16>(sc[2 * q][0], sc[2 * q][1]);
      pa[1] = pack_16<C::kPvF16>(sc[2 * q][2], sc[2 * q][3]);
      pa[2] = pack_16<C::kPvF16>(sc[2 * q + 1][0], sc[2 * q + 1][1]);
      pa[3] = pack_16<C::kPvF16>(sc[2 * q + 1][2], sc[2 * q + 1][3]);
#pragma unroll
      for (int d = 0; d < C::kDimTiles / 2; ++d) {
        const ProducerSlot src = v_fragment_source(kGeom, tw, q, d, lane);
        std::uint32_t b[4];  // tokens 16q..16q+15 x dims 16d..16d+15, transposed
        ldmatrix_x4_trans(b, v_tile + swizzled_offset(kGeom, src.row, src.chunk));
        mma_16816<C::kPvF16>(o[2 * d], pa, b[0], b[1]);
        mma_16816<C::kPvF16>(o[2 * d + 1], pa, b[2], b[3]);
      }
    }
  }

  // UP across the token warps (q_tile 16), deterministic: every warp publishes its rows'
  // (m, l), all combine them on the log2 form (merge_log2_states), then warp 0 stores f0*O0,
  // warps 1.. add theirs in turn and the last one keeps the sum in registers. Returns whether
  // this warp holds the item's final state (always, for q_tile 64).
  __device__ bool merge_warps(unsigned char* smem) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // l: sum the quad's shares
      st[r].l += __shfl_xor_sync(0xffffffffu, st[r].l, 1);
      st[r].l += __shfl_xor_sync(0xffffffffu, st[r].l, 2);
    }
    if constexpr (C::kTokenWarps == 1) {
      return true;
    } else {
      float* stats_m = reinterpret_cast<float*>(smem + SmemLayout::kStatsM);
      float* stats_l = reinterpret_cast<float*>(smem + SmemLayout::kStatsL);
      float* merge_buf = reinterpret_cast<float*>(smem + SmemLayout::kMergeBuffer);
      if (t == 0) {
        stats_m[tw * 64 + g] = st[0].m;
        stats_m[tw * 64 + g + 8] = st[1].m;
        stats_l[tw * 64 + g] = st[0].l;
        stats_l[tw * 64 + g + 8] = st[1].l;
      }
      compute_warps_sync(32 * kComputeWarps);
      float f[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = g + 8 * r;
        const Log2State all = merge_log2_states<C::kTokenWarps>(stats_m + row, stats_l + row, 64);
        f[r] = st[r].weight(all.m);
        st[r] = all;
      }
#pragma unroll
      for (int step = 0; step < C::kTokenWarps; ++step) {
        if (tw == step) {
#pragma unroll
          for (int n = 0; n < C::kDimTiles; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              float& slot = merge_buf[(n * 4 + e) * 32 + lane];
              const float mine = f[e >> 1] * o[n][e];
              if (step == C::kTokenWarps - 1) o[n][e] = slot + mine;
              else slot = step == 0 ? mine : slot + mine;
            }
        }
        if (step < C::kTokenWarps - 1) compute_warps_sync(32 * kComputeWarps);
      }
      return tw == C::kTokenWarps - 1;
    }
  }

  // The epilogue: out = v_scale O / (l + e^(sink - m)) and lse (a block's only chunk; no
  // visible token gives zeros and -inf), or the partial (O, m, l) of a split block for the
  // merge. Dims past head_dim (a padded kernel) are not stored.
  __device__ void store() const {
    const int rows_ok[2] = {row0 < w.rows, row1 < w.rows};
    const int dim_tiles = p.head_dim / 8;
    if (w.partial < 0) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (!rows_ok[r]) continue;
        const RowId id = row_id(r ? row1 : row0);
        const float sink2 = p.sinks ? p.sinks[id.head] * kLog2e : kNegInf;
        const float inv = st[r].empty() ? 0.0f : p.v_scale / st[r].denominator(sink2);
        float* dst = p.out + id.out_row * p.head_dim;
#pragma unroll
        for (int n = 0; n < C::kDimTiles; ++n)
          if (n < dim_tiles)
            *reinterpret_cast<float2*>(dst + 8 * n + 2 * t) = make_float2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
        if (p.lse && t == 0) p.lse[id.out_row] = st[r].lse();
      }
    } else {
      const std::int64_t slot = static_cast<std::int64_t>(w.partial) * p.q_tile;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (!rows_ok[r]) continue;
        const std::int64_t row = slot + (r ? row1 : row0);
        float* dst = p.part_o + row * C::kHeadDim;
#pragma unroll
        for (int n = 0; n < C::kDimTiles; ++n)
          if (n < dim_tiles) *reinterpret_cast<float2*>(dst + 8 * n + 2 * t) = make_float2(o[n][2 * r], o[n][2 * r + 1]);
        if (t == 0) {
          p.part_m[row] = st[r].m;
          p.part_l[row] = st[r].l;
        }
      }
    }
  }
};

// A split block's partials, merged in chunk order (max first, then the weighted sums:
// merge_log2_states' rule), finalized with the sink and v_scale, written to out and lse. Run
// by the 128 compute threads of the CTA that finished the block's last item; reads with ld.cg
// (the partials were written by other SMs, past this SM's L1). Each thread takes four columns
// of one row (16-byte loads of the partial outputs) and unrolls the partial loops, so its
// loads are in flight together: the merge is latency-bound (a chain of L2 reads per partial),
// and on an H200 one column per thread with rolled loops cost SmallCase1 (11 partials of 16
// rows per block) tens of microseconds per merge on the kernel's critical path. Per element
// the arithmetic and its order are unchanged.
template <class C>
__device__ void merge_block(const KernelParams& p, const MergeItem& mi, int thread) {
  constexpr int kHd = C::kHeadDim;  // the partials' row stride
  const int hd = p.head_dim;        // a multiple of 16
  const int quads = hd / 4;
  const int units = mi.rows * quads;
  const std::int64_t first_row = static_cast<std::int64_t>(mi.first_partial) * p.q_tile;
  for (int u = thread; u < units; u += 32 * kComputeWarps) {
    const int r = u / quads, c = 4 * (u - r * quads);
    const float* pm = p.part_m + first_row + r;  // partial k's row r at [k * q_tile]
    const float* pl = p.part_l + first_row + r;
    const float* po = p.part_o + (first_row + r) * kHd + c;
    Log2State all;
#pragma unroll 8
    for (int k = 0; k < mi.num_partials; ++k) all.m = fmaxf(all.m, __ldcg(pm + static_cast<std::int64_t>(k) * p.q_tile));
    float o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
    for (int k = 0; k < mi.num_partials; ++k) {
      const std::int64_t off = static_cast<std::int64_t>(k) * p.q_tile;
      const float f = Log2State{__ldcg(pm + off), 0.0f}.weight(all.m);
      const float4 v = __ldcg(reinterpret_cast<const float4*>(po + off * kHd));
      o[0] += f * v.x;
      o[1] += f * v.y;
      o[2] += f * v.z;
      o[3] += f * v.w;
      all.l += f * __ldcg(pl + off);
    }
    const int kv0 = mi.kv_head * p.group, pair = mi.head_begin + r - kv0;
    const int head = kv0 + pair % p.group;
    const std::int64_t out_row = (static_cast<std::int64_t>(mi.batch) * p.q_len + pair / p.group) * p.num_heads + head;
    const float sink2 = p.sinks ? p.sinks[head] * kLog2e : kNegInf;
    float* dst = p.out + out_row * hd + c;  // the caller's pointer: 4-byte aligned only, scalar stores
#pragma unroll
    for (int j = 0; j < 4; ++j) dst[j] = all.empty() ? 0.0f : p.v_scale * o[j] / all.denominator(sink2);
    if (p.lse && c == 0) p.lse[out_row] = all.lse();
  }
}

// After a split item's partial is stored: the CTA's arrival on its block's counter (threadfence
// reduction: the stores are made visible before the count, the count is read before the
// merge's loads). The last arrival merges and resets the counter for the next launch.
template <class C>
__device__ void arrive_split(const KernelParams& p, const WorkItem& w, unsigned char* smem) {
  volatile unsigned int* flag = reinterpret_cast<volatile unsigned int*>(smem + SmemLayout::kSplitFlag);
  __threadfence();
  compute_warps_sync(32 * kComputeWarps);
  const MergeItem mi = p.merges[w.merge];
  if (threadIdx.x == 0) {
    const unsigned int before = atomicAdd(p.merge_counters + w.merge, 1u);
    *flag = before + 1 == static_cast<unsigned int>(mi.num_partials) ? 1u : 0u;
  }
  compute_warps_sync(32 * kComputeWarps);
  if (*flag) {
    __threadfence();
    merge_block<C>(p, mi, threadIdx.x);
    if (threadIdx.x == 0) p.merge_counters[w.merge] = 0;
  }
}

template <class C>
__device__ void compute(const KernelParams& p, const SmemPipe& pipe, int warp, int lane, unsigned char* smem,
                        std::uint32_t dq) {
  ComputeWarp<C> cw(p, warp, lane);
  PipeState s = pipe.consumer_start_state();
  for (ItemLoop it(p); it.is_valid(); ++it) {
    cw.begin_item(p.items[it.i]);
    const int tiles = item_tiles(cw.w);
    for (int tile = 0; tile < tiles; ++tile) {
      const std::uint32_t stage = smem_address(tpop(pipe, s));
      std::uint32_t k_tile = stage, v_tile = stage + C::kGeom.tile_bytes();
      if constexpr (C::kFp8) {
        // The 16-bit tiles are rewritten: every warp that reads them is done with the last stage.
        if constexpr (C::kTokenWarps == 1) compute_warps_sync(32 * kComputeWarps);
        else __syncwarp();
        cw.dequant(stage, dq);
        tfree(pipe, s);  // the fp8 stage is no longer read: the producer may refill it now
        if constexpr (C::kTokenWarps == 1) compute_warps_sync(32 * kComputeWarps);
        else __syncwarp();
        k_tile = dq, v_tile = dq + C::kMath.tile_bytes();
      }
      float sc[C::kSTiles][4];
      cw.qk(k_tile, sc);
      cw.softmax_update(sc, cw.w.token_begin + static_cast<std::int64_t>(tile) * kTileTokens);
      cw.pv(sc, v_tile);
      if constexpr (!C::kFp8) tfree(pipe, s);
    }
    if (cw.merge_warps(smem)) cw.store();
    if (cw.w.partial >= 0) arrive_split<C>(p, cw.w, smem);
  }
}

template <int kHeadDim, int kRowFrags, int kDtype>
__global__ void __launch_bounds__(kThreads, 1) paged_attention_kernel(const __grid_constant__ KernelParams p) {
  using C = Config<kHeadDim, kRowFrags, kDtype>;
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr TileGeometry geom = C::kGeom;
  const SmemLayout layout = smem_layout(geom, p.stages);
  auto* full = reinterpret_cast<std::uint64_t*>(smem + SmemLayout::kFullBarriers);
  auto* empty = reinterpret_cast<std::uint64_t*>(smem + SmemLayout::kEmptyBarriers);
  const SmemPipe pipe(full, empty, smem + layout.ring(), geom.stage_bytes(), p.stages);
  if (threadIdx.x == 0) pipe.init(32 * kProducerWarps, kComputeWarps);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp == kComputeWarps) produce<C>(p, pipe, lane);
  else compute<C>(p, pipe, warp, lane, smem, smem_address(smem + layout.dequant()));
}

// The entry of one dtype's instantiations: (head_dim, row_frags) become template arguments.
template <int kDtype>
cudaError_t dtype_entry(KernelOp op, const KernelParams* p, int head_dim, int row_frags, int grid, int smem_bytes,
                        cudaStream_t stream) {
  auto run = [&](auto kernel) -> cudaError_t {
    switch (op) {
      case KernelOp::kPrepare: {
        // Only ever raised: plans of one instantiation with different ring depths may coexist.
        cudaFuncAttributes attr;
        const cudaError_t e = cudaFuncGetAttributes(&attr, kernel);
        if (e != cudaSuccess) return e;
        if (attr.maxDynamicSharedSizeBytes >= smem_bytes) return cudaSuccess;
        return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
      }
      case KernelOp::kImageCheck: {
        cudaFuncAttributes attr;
        return cudaFuncGetAttributes(&attr, kernel);
      }
      case KernelOp::kLaunch:
        kernel<<<grid, kThreads, smem_bytes, stream>>>(*p);
        return cudaGetLastError();
    }
    return cudaErrorInvalidValue;
  };
  if (row_frags == 1) {
    if (head_dim == 64) return run(paged_attention_kernel<64, 1, kDtype>);
    if (head_dim == 128) return run(paged_attention_kernel<128, 1, kDtype>);
    if (head_dim == 256) return run(paged_attention_kernel<256, 1, kDtype>);
  } else if (row_frags == 4) {
    if (head_dim == 64) return run(paged_attention_kernel<64, 4, kDtype>);
    if (head_dim == 128) return run(paged_attention_kernel<128, 4, kDtype>);
    if (head_dim == 256) return run(paged_attention_kernel<256, 4, kDtype>);
  }
  return cudaErrorInvalidValue;
}

}  // namespace kernels
}  // namespace mixpa::cuda
