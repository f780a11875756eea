// The paged-attention MIX kernel on a GPU. One persistent CTA per SM stride-loops over work
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
// or Inf in unused page rows cannot reach the output.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/kernel_launch.h"
#include "cuda/log2_state.h"
#include "cuda/smem_pipe.cuh"
#include "cuda/tile_layout.h"
#include "cuda/warp_mma.cuh"

namespace mixpa::cuda {
namespace {

constexpr float kNegInf = -INFINITY;

template <int kHeadDim_, int kRowFrags>
struct Config {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr TileGeometry kGeom{kHeadDim, kRowFrags};
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

// ---------------------------------------------------------------------------------------------
// Producer: TPUSH one stage per 64-token tile of every item this CTA owns.
template <class C>
__device__ void produce(const KernelParams& p, const SmemPipe& pipe, int lane) {
  constexpr TileGeometry g = C::kGeom;
  PipeState s = pipe.producer_start_state();
  for (ItemLoop it(p); it.is_valid(); ++it) {
    const WorkItem w = p.items[it.i];
    const int tiles = item_tiles(w);
    for (int tile = 0; tile < tiles; ++tile) {
      const int t0 = w.token_begin + tile * kTileTokens;
      // Lane l resolves tokens t0 + l and t0 + 32 + l (page id checked, offsets 64-bit);
      // -1 marks a row to zero-fill (past the item's range, or a bad page id).
      std::int64_t k_off[2], v_off[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int t = t0 + 32 * h + lane;
        k_off[h] = v_off[h] = -1;
        if (t < w.token_end) {
          const std::int64_t page = lookup_page(p.block_table, p.max_blocks_per_req, p.num_blocks, p.block_size, w.batch, t);
          if (page < 0) {
            atomicOr(p.error_flag, kErrorPageOutOfRange);
          } else {
            const std::int64_t row = t % p.block_size;
            k_off[h] = row_offset(page, row, w.kv_head, p.k_page, p.k_row, p.k_head);
            v_off[h] = row_offset(page, row, w.kv_head, p.v_page, p.v_row, p.v_head);
          }
        }
      }
      unsigned char* stage = tpush_begin(pipe, s);
      const std::uint32_t k_tile = smem_address(stage);
      const std::uint32_t v_tile = k_tile + g.tile_bytes();
#pragma unroll 4
      for (int pass = 0; pass < g.passes(); ++pass) {
        const ProducerSlot slot = producer_slot(g, pass, lane);
        // All lanes of a pass read the same half (rows_per_pass divides 32), so h is uniform.
        const int h = slot.row >> 5;
        const std::int64_t ko = __shfl_sync(0xffffffffu, h ? k_off[1] : k_off[0], slot.row & 31);
        const std::int64_t vo = __shfl_sync(0xffffffffu, h ? v_off[1] : v_off[0], slot.row & 31);
        const std::uint32_t dst = static_cast<std::uint32_t>(swizzled_offset(g, slot.row, slot.chunk));
        cp_async_16(k_tile + dst, ko >= 0 ? p.key_cache + ko + 8 * slot.chunk : p.key_cache, ko >= 0 ? 16u : 0u);
        cp_async_16(v_tile + dst, vo >= 0 ? p.value_cache + vo + 8 * slot.chunk : p.value_cache, vo >= 0 ? 16u : 0u);
      }
      tpush_end(pipe, s);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Compute warps (cube + vector fused), one item at a time:
//   begin_item      Q fragments, empty state
//   per stage       TPOP; qk (S = Q.K^T); softmax_update (SF: mask, running max, p, l; alpha
//                   rescales O); pv (O += P.V); TFREE
//   merge_warps     q_tile 16: the token warps' states combined on their log2 form (UP across warps)
//   store           out = O / l, or the partial (O, m, l) of a split block
// Elements e = 0,1 of an accumulator fragment are row g, e = 2,3 row g + 8 (lane = 4 g + t).
template <class C>
struct ComputeWarp {
  static constexpr TileGeometry kGeom = C::kGeom;
  const KernelParams& p;
  const int warp, lane, g, t;
  const int rf;  // rows [16 rf, 16 rf + 16) of the q tile
  const int tw;  // tokens [tw * kWarpTokens, ...) of each stage

  // Per item.
  WorkItem w;
  int row0, row1;
  std::int64_t qbase;
  const std::uint16_t* q0;
  const std::uint16_t* q1;
  std::uint32_t qf[C::kQInRegisters ? C::kKSteps : 1][4];
  float o[C::kDimTiles][4];  // (16 rows, head_dim) fragment, unnormalised
  Log2State st[2];           // rows g and g + 8: running max (log2 units) and this lane's share of l

  __device__ ComputeWarp(const KernelParams& params, int warp_, int lane_)
      : p(params), warp(warp_), lane(lane_), g(lane_ >> 2), t(lane_ & 3), rf(warp_row_frag(kGeom, warp_)),
        tw(warp_token_slice(kGeom, warp_)) {}

  // A fragment of Q for k-step kk: rows (g, g+8) of the warp's row fragment, zero past `rows`.
  __device__ void load_q(std::uint32_t (&a)[4], int kk) const {
    const int c = 16 * kk + 2 * t;
    a[0] = q0 ? __ldg(reinterpret_cast<const unsigned int*>(q0 + c)) : 0u;
    a[1] = q1 ? __ldg(reinterpret_cast<const unsigned int*>(q1 + c)) : 0u;
    a[2] = q0 ? __ldg(reinterpret_cast<const unsigned int*>(q0 + c + 8)) : 0u;
    a[3] = q1 ? __ldg(reinterpret_cast<const unsigned int*>(q1 + c + 8)) : 0u;
  }

  __device__ void begin_item(const WorkItem& item) {
    w = item;
    row0 = 16 * rf + g, row1 = row0 + 8;
    qbase = (static_cast<std::int64_t>(w.batch) * p.num_heads + w.head_begin) * C::kHeadDim;
    q0 = row0 < w.rows ? p.query + qbase + static_cast<std::int64_t>(row0) * C::kHeadDim : nullptr;
    q1 = row1 < w.rows ? p.query + qbase + static_cast<std::int64_t>(row1) * C::kHeadDim : nullptr;
    if constexpr (C::kQInRegisters) {
#pragma unroll
      for (int kk = 0; kk < C::kKSteps; ++kk) load_q(qf[kk], kk);
    }
#pragma unroll
    for (int n = 0; n < C::kDimTiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    st[0] = st[1] = Log2State{};
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
        mma_bf16_16816(sc[j], qa, b[0], b[1]);
        mma_bf16_16816(sc[j], qb, b[2], b[3]);
      }
    }
  }

  // Vector step SF: mask columns past the item's range, running max, p = exp2(s - M) rounded
  // to bf16 (left in sc), l from the rounded p; O and l rescaled by alpha = exp2(M_old - M).
  __device__ void softmax_update(float (&sc)[C::kSTiles][4], int t0) {
    float mx[2] = {kNegInf, kNegInf};
#pragma unroll
    for (int j = 0; j < C::kSTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int token = t0 + score_column(kGeom, tw, j, t, e);
        sc[j][e] = token < w.token_end ? sc[j][e] * p.scale_log2 : kNegInf;
        mx[e >> 1] = fmaxf(mx[e >> 1], sc[j][e]);
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
        sc[j][e] = bf16_round(exp2f(sc[j][e] - m_use[e >> 1]));
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

  // O += P . V: two S tiles (16 tokens) form one A tile of P.
  __device__ void pv(const float (&sc)[C::kSTiles][4], std::uint32_t v_tile) {
#pragma unroll
    for (int q = 0; q < C::kPvSteps; ++q) {
      std::uint32_t pa[4];
      pa[0] = pack_bf16(sc[2 * q][0], sc[2 * q][1]);
      pa[1] = pack_bf16(sc[2 * q][2], sc[2 * q][3]);
      pa[2] = pack_bf16(sc[2 * q + 1][0], sc[2 * q + 1][1]);
      pa[3] = pack_bf16(sc[2 * q + 1][2], sc[2 * q + 1][3]);
#pragma unroll
      for (int d = 0; d < C::kDimTiles / 2; ++d) {
        const ProducerSlot src = v_fragment_source(kGeom, tw, q, d, lane);
        std::uint32_t b[4];  // tokens 16q..16q+15 x dims 16d..16d+15, transposed
        ldmatrix_x4_trans(b, v_tile + swizzled_offset(kGeom, src.row, src.chunk));
        mma_bf16_16816(o[2 * d], pa, b[0], b[1]);
        mma_bf16_16816(o[2 * d + 1], pa, b[2], b[3]);
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

  // The epilogue: out = O / l (a block's only chunk; context 0 gives zeros), or the partial
  // (O, m, l) of a split block for the merge.
  __device__ void store() const {
    const int rows_ok[2] = {row0 < w.rows, row1 < w.rows};
    if (w.partial < 0) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (!rows_ok[r]) continue;
        const float inv = st[r].l > 0.0f ? 1.0f / st[r].l : 0.0f;
        float* dst = p.out + (qbase + static_cast<std::int64_t>(r ? row1 : row0) * C::kHeadDim);
#pragma unroll
        for (int n = 0; n < C::kDimTiles; ++n)
          *reinterpret_cast<float2*>(dst + 8 * n + 2 * t) = make_float2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
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
          *reinterpret_cast<float2*>(dst + 8 * n + 2 * t) = make_float2(o[n][2 * r], o[n][2 * r + 1]);
        if (t == 0) {
          p.part_m[row] = st[r].m;
          p.part_l[row] = st[r].l;
        }
      }
    }
  }
};

template <class C>
__device__ void compute(const KernelParams& p, const SmemPipe& pipe, int warp, int lane, unsigned char* smem) {
  ComputeWarp<C> cw(p, warp, lane);
  PipeState s = pipe.consumer_start_state();
  for (ItemLoop it(p); it.is_valid(); ++it) {
    cw.begin_item(p.items[it.i]);
    const int tiles = item_tiles(cw.w);
    for (int tile = 0; tile < tiles; ++tile) {
      const std::uint32_t k_tile = smem_address(tpop(pipe, s));
      float sc[C::kSTiles][4];
      cw.qk(k_tile, sc);
      cw.softmax_update(sc, cw.w.token_begin + tile * kTileTokens);
      cw.pv(sc, k_tile + C::kGeom.tile_bytes());
      tfree(pipe, s);
    }
    if (cw.merge_warps(smem)) cw.store();
  }
}

template <int kHeadDim, int kRowFrags>
__global__ void __launch_bounds__(kThreads, 1) paged_attention_kernel(const __grid_constant__ KernelParams p) {
  using C = Config<kHeadDim, kRowFrags>;
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
  else compute<C>(p, pipe, warp, lane, smem);
}

// Split blocks: merge partial slots in chunk order (max first, then the exp2-weighted sums:
// the log-sum-exp rule of SoftmaxState::merge in log2 units). An all-empty block gives zeros.
__global__ void merge_partials_kernel(const __grid_constant__ KernelParams p, int head_dim) {
  const MergeItem mi = p.merges[blockIdx.x];
  const std::int64_t elements = static_cast<std::int64_t>(mi.rows) * head_dim;
  for (std::int64_t idx = threadIdx.x; idx < elements; idx += blockDim.x) {
    const std::int64_t r = idx / head_dim, c = idx % head_dim;
    float m_all = kNegInf;
    for (int k = 0; k < mi.num_partials; ++k)
      m_all = fmaxf(m_all, p.part_m[static_cast<std::int64_t>(mi.first_partial + k) * p.q_tile + r]);
    float o = 0.0f, l = 0.0f;
    if (m_all != kNegInf) {
      for (int k = 0; k < mi.num_partials; ++k) {
        const std::int64_t row = static_cast<std::int64_t>(mi.first_partial + k) * p.q_tile + r;
        const float f = exp2f(p.part_m[row] - m_all);
        o += f * p.part_o[row * head_dim + c];
        l += f * p.part_l[row];
      }
    }
    p.out[(static_cast<std::int64_t>(mi.batch) * p.num_heads + mi.head_begin + r) * head_dim + c] = l > 0.0f ? o / l : 0.0f;
  }
}

// The one place runtime (head_dim, row_frags) become template arguments.
template <class F>
cudaError_t with_kernel(int head_dim, int row_frags, F&& f) {
  if (row_frags == 1) {
    if (head_dim == 64) return f(paged_attention_kernel<64, 1>);
    if (head_dim == 128) return f(paged_attention_kernel<128, 1>);
    if (head_dim == 256) return f(paged_attention_kernel<256, 1>);
  } else if (row_frags == 4) {
    if (head_dim == 64) return f(paged_attention_kernel<64, 4>);
    if (head_dim == 128) return f(paged_attention_kernel<128, 4>);
    if (head_dim == 256) return f(paged_attention_kernel<256, 4>);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool kernel_supported(int head_dim, int row_frags) {
  return (head_dim == 64 || head_dim == 128 || head_dim == 256) && (row_frags == 1 || row_frags == 4);
}

cudaError_t prepare_kernel(int head_dim, int row_frags, int smem_bytes) {
  // Only ever raised: plans of one instantiation with different ring depths may coexist.
  return with_kernel(head_dim, row_frags, [&](auto kernel) {
    cudaFuncAttributes attr;
    const cudaError_t e = cudaFuncGetAttributes(&attr, kernel);
    if (e != cudaSuccess) return e;
    if (attr.maxDynamicSharedSizeBytes >= smem_bytes) return cudaSuccess;
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  });
}

cudaError_t kernel_image_check() {
  cudaFuncAttributes attr;
  return cudaFuncGetAttributes(&attr, paged_attention_kernel<128, 1>);
}

cudaError_t launch_paged_attention(const KernelParams& p, int head_dim, int row_frags, int grid, int smem_bytes,
                                   cudaStream_t stream) {
  if (p.num_items > 0) {
    const cudaError_t e = with_kernel(head_dim, row_frags, [&](auto kernel) {
      kernel<<<grid, kThreads, smem_bytes, stream>>>(p);
      return cudaGetLastError();
    });
    if (e != cudaSuccess) return e;
  }
  if (p.num_merges > 0) {
    merge_partials_kernel<<<p.num_merges, 128, 0, stream>>>(p, head_dim);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

}  // namespace mixpa::cuda
