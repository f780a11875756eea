// A lane-by-lane CPU emulation of the cuda kernel, built on the kernel's own tiling functions
// (tile_layout.h) and on ldmatrix / mma.m16n8k16 fragment semantics as the PTX ISA states
// them. It runs the work plan the executor would launch (persistent stride loop, split-KV
// partials, merge) and must agree with exact attention: a check, on machines without a GPU,
// of every index the kernel computes (swizzle, producer slots, fragment addresses, score
// columns, P packing, the token-warp merge, the producer's address streams, the variants'
// score epilogue and finalize, the in-kernel split merge). It does not check the PTX itself.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/check.h"
#include "cuda/serving_specs.h"
#include "cuda/dequant.h"
#include "cuda/log2_state.h"
#include "cuda/work_plan.h"

namespace mixpa::cuda {
namespace {
using mixpa::testing::small_spec;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
using Reg4 = std::array<std::uint32_t, 4>;
using Acc4 = std::array<float, 4>;

// A 16-bit half of a register as a float: bf16, or f16 when `f16`.
float half_f(std::uint16_t bits, bool f16v) { return f16v ? f16::from_bits(bits).to_float() : bf16::from_bits(bits).to_float(); }
float lo_f(std::uint32_t r, bool f16v) { return half_f(static_cast<std::uint16_t>(r & 0xffff), f16v); }
float hi_f(std::uint32_t r, bool f16v) { return half_f(static_cast<std::uint16_t>(r >> 16), f16v); }
std::uint32_t pack(float lo, float hi, bool f16v) {
  if (f16v) return std::uint32_t{f16::from_float(lo).bits} | (std::uint32_t{f16::from_float(hi).bits} << 16);
  return std::uint32_t{bf16::from_float(lo).bits} | (std::uint32_t{bf16::from_float(hi).bits} << 16);
}

// ldmatrix.m8n8.x4(.trans): lanes 8m..8m+7 give the row addresses of matrix m; lane L gets
// (row L/4, cols 2(L%4), +1) of each matrix, or with .trans (rows 2(L%4), +1; col L/4).
void ldmatrix_x4(const std::uint8_t* base, const std::array<int, 32>& addr, std::array<Reg4, 32>& r, bool trans) {
  for (int m = 0; m < 4; ++m)
    for (int lane = 0; lane < 32; ++lane) {
      auto at = [&](int row, int col) {
        std::uint16_t v;
        std::memcpy(&v, base + addr[8 * m + row] + 2 * col, 2);
        return std::uint32_t{v};
      };
      const int a = lane / 4, b = 2 * (lane % 4);
      r[lane][m] = trans ? (at(b, a) | (at(b + 1, a) << 16)) : (at(a, b) | (at(a, b + 1) << 16));
    }
}

// mma.m16n8k16.row.col f32.{bf16,f16}.{bf16,f16}.f32, d += a * b, fragments as warp_mma.cuh documents.
void mma(std::array<Acc4, 32>& d, const std::array<Reg4, 32>& a, const std::array<std::uint32_t, 32>& b0,
         const std::array<std::uint32_t, 32>& b1, bool f16v) {
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    A[g][2 * t] = lo_f(a[lane][0], f16v), A[g][2 * t + 1] = hi_f(a[lane][0], f16v);
    A[g + 8][2 * t] = lo_f(a[lane][1], f16v), A[g + 8][2 * t + 1] = hi_f(a[lane][1], f16v);
    A[g][2 * t + 8] = lo_f(a[lane][2], f16v), A[g][2 * t + 9] = hi_f(a[lane][2], f16v);
    A[g + 8][2 * t + 8] = lo_f(a[lane][3], f16v), A[g + 8][2 * t + 9] = hi_f(a[lane][3], f16v);
    B[2 * t][g] = lo_f(b0[lane], f16v), B[2 * t + 1][g] = hi_f(b0[lane], f16v);
    B[2 * t + 8][g] = lo_f(b1[lane], f16v), B[2 * t + 9][g] = hi_f(b1[lane], f16v);
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int e = 0; e < 4; ++e) {
      const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
      float s = 0.0f;
      for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
      d[lane][e] += s;
    }
  }
}

// Butterfly over the quad (shfl_xor 1 then 2), as the kernel does.
template <class Op>
void quad_reduce(std::array<float, 32>& v, Op op) {
  for (int x : {1, 2}) {
    std::array<float, 32> o = v;
    for (int lane = 0; lane < 32; ++lane) o[lane] = op(v[lane], v[lane ^ x]);
    v = o;
  }
}

// The variant of SPEC §6 a test runs (empty = the plain operation).
struct VariantSpec {
  double softcap = 0;
  std::int64_t window_left = -1;
  std::vector<float> slopes, sinks;  // [num_heads] or empty
};

// The kernel on the CPU, for a validated problem (any SPEC §6 dtype, q_len, head_dim, block
// size, index width, variant): the work plan the executor would launch, run lane by lane.
struct Emulator {
  const Problem& pr;
  Plan plan;
  WorkPlan wp;
  KernelParams p;
  std::vector<float> out, lse, part_o, part_m, part_l;
  std::vector<unsigned int> counters;
  int error_flag = 0;

  Emulator(const Problem& problem, const DeviceLimits& dev, const WorkPlanOptions& options = {})
      : pr(problem),
        plan(make_plan(problem.shape, problem.variant.scale)),
        wp(plan_work(plan, problem.context_lens, dev, options, problem.variant.window_left,
                     {problem.query_dtype, problem.kv_dtype})),
        p(kernel_params(plan, wp, problem.variant.softcap, problem.k_scale, problem.v_scale)) {
    const Shape& sh = pr.shape;
    out.assign(sh.num_rows() * sh.head_dim, std::numeric_limits<float>::quiet_NaN());  // every element must be written
    lse.assign(sh.num_rows(), std::numeric_limits<float>::quiet_NaN());
    const std::int64_t khd = wp.geometry.head_dim;
    part_o.assign(wp.num_partials * wp.q_tile * khd, std::numeric_limits<float>::quiet_NaN());
    part_m.assign(wp.num_partials * wp.q_tile, std::numeric_limits<float>::quiet_NaN());
    part_l = part_m;
    counters.assign(wp.merges.size(), 0);
    p.query = static_cast<const std::uint16_t*>(pr.query_data);
    p.key_cache = pr.key_data;
    p.value_cache = pr.value_data;
    p.k_page = pr.k_strides.page, p.k_row = pr.k_strides.row, p.k_head = pr.k_strides.head;
    p.v_page = pr.v_strides.page, p.v_row = pr.v_strides.row, p.v_head = pr.v_strides.head;
    if (pr.block_table.wide) p.block_table64 = static_cast<const std::int64_t*>(pr.block_table.data);
    else p.block_table = static_cast<const std::int32_t*>(pr.block_table.data);
    p.alibi_slopes = pr.variant.has_alibi() ? pr.variant.alibi_slopes : nullptr;
    p.sinks = pr.variant.has_sinks() ? pr.variant.sinks : nullptr;
  }

  bool qk_f16() const { return wp.dtype == KernelDtype::kF16 || wp.dtype == KernelDtype::kFp8F16; }
  bool pv_f16() const { return wp.dtype == KernelDtype::kF16; }

  // The producer warp's TPUSH of one tile (paged_attention.cu: produce), lane by lane on the
  // kernel's ProducerStream and smem destinations, with its three paths (full tile inside the
  // page, full tile across pages, partial tile).
  template <class T>
  void produce(const WorkItem& w, int tile, std::vector<ProducerStream<T>>& streams, std::vector<std::uint8_t>& stage) {
    const TileGeometry g = wp.geometry;
    const int period = swizzle_period(g), passes = g.passes(), rows = g.rows_per_pass();
    std::fill(stage.begin(), stage.end(), 0xff);  // 0xff.. is NaN in every dtype: unwritten bytes would show
    const std::int64_t t0 = w.token_begin + std::int64_t{tile} * kTileTokens;
    const bool full = t0 + kTileTokens <= w.token_end;
    bool all_in_page = full;
    for (int lane = 0; lane < 32; ++lane) all_in_page = all_in_page && streams[lane].stays_in_page(p, passes);
    for (int lane = 0; lane < 32; ++lane) {
      ProducerStream<T>& st = streams[lane];
      const int lane_row = lane / g.chunks_per_row();
      const int rows_left = static_cast<int>(w.token_end - t0) - lane_row;
      auto copy = [&](int pass, const T* k, const T* v, bool zero) {
        const int dst = swizzled_offset(g, (pass % period) * rows + lane_row, lane % g.chunks_per_row()) +
                        (pass / period) * swizzle_period_bytes(g);
        for (int tensor = 0; tensor < 2; ++tensor) {
          std::uint8_t* d = stage.data() + tensor * g.tile_bytes() + dst;
          if (zero) std::memset(d, 0, 16);
          else std::memcpy(d, tensor ? static_cast<const void*>(v) : static_cast<const void*>(k), 16);
        }
      };
      if (all_in_page) {
        for (int pass = 0; pass < passes; ++pass) copy(pass, st.k + pass * st.k_step, st.v + pass * st.v_step, st.bytes == 0);
        st.skip(p, passes);
      } else if (full) {
        for (int pass = 0; pass < passes; ++pass) {
          copy(pass, st.k, st.v, st.bytes == 0);
          st.advance(p);
        }
      } else {
        for (int pass = 0; pass < passes; ++pass) {
          const bool valid = pass * rows < rows_left;
          copy(pass, st.k, st.v, !valid || st.bytes == 0);
          if ((pass + 1) * rows < rows_left) st.advance(p);
        }
      }
    }
  }

  // fp8: the compute warps' dequantisation pass (ComputeWarp::dequant), every warp's rows.
  void dequant(const std::vector<std::uint8_t>& stage, std::vector<std::uint8_t>& math) const {
    const TileGeometry g = wp.geometry, m = g.math();
    std::fill(math.begin(), math.end(), 0xff);
    for (int warp = 0; warp < kComputeWarps; ++warp)
      for (int tensor = 0; tensor < 2; ++tensor)
        for (int lane = 0; lane < 32; ++lane)
          for (int i = 0; i < dequant_units_per_lane(g); ++i) {
            const DequantUnit u = dequant_unit(g, 16 * warp, lane + 32 * i);
            std::uint32_t in[4], o[8];
            std::memcpy(in, stage.data() + tensor * g.tile_bytes() + u.src, 16);
            if (tensor == 0 && qk_f16()) fp8_piece_to_16<false>(in, p.fp8_e5m2 != 0, o);
            else fp8_piece_to_16<true>(in, p.fp8_e5m2 != 0, o);
            std::memcpy(math.data() + tensor * m.tile_bytes() + u.dst_lo, o, 16);
            std::memcpy(math.data() + tensor * m.tile_bytes() + u.dst_hi, o + 4, 16);
          }
  }

  // A lane's two rows (g, g + 8) of an item: ComputeWarp::begin_row.
  struct RowInfo {
    bool valid = false;
    int tok = 0, head = 0, lim_lo = -1, lim_hi = 0;
    std::int64_t out_row = 0;
    float slope2 = 0;
  };
  RowInfo row_info(const WorkItem& w, int row) const {
    RowInfo ri;
    ri.valid = row < w.rows;
    const int kv0 = w.kv_head * p.group, k = w.head_begin + row - kv0;
    ri.tok = ri.valid ? k / p.group : 0;
    ri.head = ri.valid ? kv0 + k % p.group : 0;
    ri.out_row = (std::int64_t{w.batch} * p.q_len + ri.tok) * p.num_heads + ri.head;
    const std::int64_t pos = w.position + ri.tok;
    const std::int64_t lo = p.window_left >= 0 ? std::max<std::int64_t>(0, pos - p.window_left) : 0;
    const std::int64_t hi = std::min<std::int64_t>(pos + 1, w.token_end);
    ri.lim_lo = lo - w.token_begin < 0 ? -1 : static_cast<int>(lo - w.token_begin);
    ri.lim_hi = ri.valid ? static_cast<int>(hi - w.token_begin) : 0;
    ri.slope2 = p.alibi_slopes && ri.valid ? p.alibi_slopes[ri.head] * kLog2e : 0.0f;
    return ri;
  }

  struct WarpState {
    std::vector<std::array<Acc4, 32>> o;  // [dim tile][lane]
    std::array<std::array<Log2State, 32>, 2> st;
    std::array<std::array<RowInfo, 32>, 2> rows;
  };

  // One compute warp's TPOP ... TFREE of one tile (paged_attention.cu: ComputeWarp).
  template <bool kSoftcap, bool kAlibi>
  void consume(const WorkItem& w, int tile, int warp, const std::vector<std::uint8_t>& stage,
               const std::vector<std::array<Reg4, 32>>& qf, WarpState& ws) {
    const TileGeometry g = wp.geometry.math();
    const int tw = warp_token_slice(g, warp);
    const int s_tiles = g.tokens_per_warp() / 8, k_steps = g.head_dim / 16, dim_tiles = g.head_dim / 8;
    const std::uint8_t* k_tile = stage.data();
    const std::uint8_t* v_tile = stage.data() + g.tile_bytes();
    const std::int64_t t0 = w.token_begin + std::int64_t{tile} * kTileTokens;
    const int off = static_cast<int>(t0 - w.token_begin);
    const int t_minus_pos = kAlibi ? static_cast<int>(t0 - w.position) : 0;
    std::vector<std::array<Acc4, 32>> sc(s_tiles);
    for (auto& s : sc)
      for (auto& a : s) a = {0, 0, 0, 0};
    for (int pp = 0; pp < k_steps / 2; ++pp)
      for (int j = 0; j < s_tiles; ++j) {
        std::array<int, 32> addr;
        for (int lane = 0; lane < 32; ++lane) {
          const ProducerSlot src = k_fragment_source(g, tw, j, pp, lane);
          addr[lane] = swizzled_offset(g, src.row, src.chunk);
        }
        std::array<Reg4, 32> b;
        ldmatrix_x4(k_tile, addr, b, false);
        std::array<std::uint32_t, 32> b0, b1, b2, b3;
        for (int lane = 0; lane < 32; ++lane) b0[lane] = b[lane][0], b1[lane] = b[lane][1], b2[lane] = b[lane][2], b3[lane] = b[lane][3];
        mma(sc[j], qf[2 * pp], b0, b1, qk_f16());
        mma(sc[j], qf[2 * pp + 1], b2, b3, qk_f16());
      }
    std::array<std::array<float, 32>, 2> mx;
    for (auto& r : mx) r.fill(kNegInf);
    for (int lane = 0; lane < 32; ++lane)
      for (int j = 0; j < s_tiles; ++j)
        for (int e = 0; e < 4; ++e) {
          const int col = score_column(g, tw, j, lane & 3, e), r = e >> 1;
          const RowInfo& ri = ws.rows[r][lane];
          float& v = sc[j][lane][e];
          const float x = logit_log2<kSoftcap, kAlibi>(p, v, ri.slope2, t_minus_pos + col - ri.tok);
          v = col < ri.lim_hi - off && col >= ri.lim_lo - off ? x : kNegInf;
          mx[r][lane] = std::fmax(mx[r][lane], v);
        }
    std::array<std::array<float, 32>, 2> alpha, m_use;
    for (int r = 0; r < 2; ++r) {
      quad_reduce(mx[r], [](float a, float b) { return std::fmax(a, b); });
      for (int lane = 0; lane < 32; ++lane) {
        Log2State& st = ws.st[r][lane];
        const float m_new = std::fmax(st.m, mx[r][lane]);
        m_use[r][lane] = m_new == kNegInf ? 0.0f : m_new;
        alpha[r][lane] = std::exp2(st.m - m_use[r][lane]);
        st.m = m_new;
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      float row_sum[2] = {0, 0};
      for (int j = 0; j < s_tiles; ++j)
        for (int e = 0; e < 4; ++e) {
          float& v = sc[j][lane][e];
          const float pe = std::exp2(v - m_use[e >> 1][lane]);
          v = pv_f16() ? round_to_f16(pe) : round_to_bf16(pe);
          row_sum[e >> 1] += v;
        }
      for (int r = 0; r < 2; ++r) ws.st[r][lane].l = ws.st[r][lane].l * alpha[r][lane] + row_sum[r];
      for (int n = 0; n < dim_tiles; ++n)
        for (int e = 0; e < 4; ++e) ws.o[n][lane][e] *= alpha[e >> 1][lane];
    }
    for (int q = 0; q < g.tokens_per_warp() / 16; ++q) {
      std::array<Reg4, 32> pa;
      const bool f = pv_f16();
      for (int lane = 0; lane < 32; ++lane)
        pa[lane] = {pack(sc[2 * q][lane][0], sc[2 * q][lane][1], f), pack(sc[2 * q][lane][2], sc[2 * q][lane][3], f),
                    pack(sc[2 * q + 1][lane][0], sc[2 * q + 1][lane][1], f),
                    pack(sc[2 * q + 1][lane][2], sc[2 * q + 1][lane][3], f)};
      for (int d = 0; d < dim_tiles / 2; ++d) {
        std::array<int, 32> addr;
        for (int lane = 0; lane < 32; ++lane) {
          const ProducerSlot src = v_fragment_source(g, tw, q, d, lane);
          addr[lane] = swizzled_offset(g, src.row, src.chunk);
        }
        std::array<Reg4, 32> b;
        ldmatrix_x4(v_tile, addr, b, true);
        std::array<std::uint32_t, 32> b0, b1, b2, b3;
        for (int lane = 0; lane < 32; ++lane) b0[lane] = b[lane][0], b1[lane] = b[lane][1], b2[lane] = b[lane][2], b3[lane] = b[lane][3];
        mma(ws.o[2 * d], pa, b0, b1, f);
        mma(ws.o[2 * d + 1], pa, b2, b3, f);
      }
    }
  }

  void consume_any(const WorkItem& w, int tile, int warp, const std::vector<std::uint8_t>& stage,
                   const std::vector<std::array<Reg4, 32>>& qf, WarpState& ws) {
    if (p.softcap_log2 > 0.0f) {
      if (p.alibi_slopes) consume<true, true>(w, tile, warp, stage, qf, ws);
      else consume<true, false>(w, tile, warp, stage, qf, ws);
    } else {
      if (p.alibi_slopes) consume<false, true>(w, tile, warp, stage, qf, ws);
      else consume<false, false>(w, tile, warp, stage, qf, ws);
    }
  }

  float sink2(std::int64_t head) const { return p.sinks ? p.sinks[head] * kLog2e : kNegInf; }

  void run_item(const WorkItem& w) {
    if (wp.geometry.elem_bytes == 1) run_item_as<std::uint8_t>(w);
    else run_item_as<std::uint16_t>(w);
  }

  template <class T>
  void run_item_as(const WorkItem& w) {
    const TileGeometry g = wp.geometry.math();
    const int hd = g.head_dim, dim_tiles = hd / 8, k_steps = hd / 16;
    const int real_hd = p.head_dim, real_tiles = real_hd / 8;
    std::vector<std::uint8_t> stage(wp.geometry.stage_bytes()), math(g.stage_bytes());
    std::vector<WarpState> st(kComputeWarps);
    std::vector<std::vector<std::array<Reg4, 32>>> qf(kComputeWarps, std::vector<std::array<Reg4, 32>>(k_steps));
    for (int warp = 0; warp < kComputeWarps; ++warp) {
      st[warp].o.assign(dim_tiles, {});
      for (auto& a : st[warp].o) a.fill({0, 0, 0, 0});
      for (int r = 0; r < 2; ++r) st[warp].st[r].fill(Log2State{});
      const int rf = warp_row_frag(g, warp);
      for (int lane = 0; lane < 32; ++lane) {
        const int gg = lane >> 2, t = lane & 3, row0 = 16 * rf + gg, row1 = row0 + 8;
        st[warp].rows[0][lane] = row_info(w, row0);
        st[warp].rows[1][lane] = row_info(w, row1);
        auto q32 = [&](int r, int col) -> std::uint32_t {
          const RowInfo& ri = st[warp].rows[r][lane];
          if (!ri.valid || col >= real_hd) return 0;
          const std::uint16_t* q = p.query + ri.out_row * real_hd + col;
          return std::uint32_t{q[0]} | (std::uint32_t{q[1]} << 16);
        };
        for (int kk = 0; kk < k_steps; ++kk) {
          const int col = 16 * kk + 2 * t;
          qf[warp][kk][lane] = {q32(0, col), q32(1, col), q32(0, col + 8), q32(1, col + 8)};
        }
      }
    }
    std::vector<ProducerStream<T>> streams(32);
    if (item_tiles(w) > 0)
      for (int lane = 0; lane < 32; ++lane) streams[lane].begin(p, w, wp.geometry, lane);
    for (int tile = 0; tile < item_tiles(w); ++tile) {
      produce(w, tile, streams, stage);
      if (wp.geometry.elem_bytes == 1) dequant(stage, math);
      const std::vector<std::uint8_t>& tiles = wp.geometry.elem_bytes == 1 ? math : stage;
      for (int warp = 0; warp < kComputeWarps; ++warp) consume_any(w, tile, warp, tiles, qf[warp], st[warp]);
    }
    for (const auto& s : streams)
      if (s.bad) error_flag |= kErrorPageOutOfRange;
    for (auto& s : st)
      for (int r = 0; r < 2; ++r) {
        std::array<float, 32> l;
        for (int lane = 0; lane < 32; ++lane) l[lane] = s.st[r][lane].l;
        quad_reduce(l, [](float a, float b) { return a + b; });
        for (int lane = 0; lane < 32; ++lane) s.st[r][lane].l = l[lane];
      }
    std::vector<bool> writer(kComputeWarps, true);
    if (g.token_warps() > 1) {
      // stats, then f and the combined state (merge_log2_states) per warp, then the fixed-order accumulation.
      float stats_m[kComputeWarps * 64], stats_l[kComputeWarps * 64];
      for (int warp = 0; warp < kComputeWarps; ++warp)
        for (int lane = 0; lane < 32; lane += 4)
          for (int r = 0; r < 2; ++r) {
            stats_m[warp * 64 + (lane >> 2) + 8 * r] = st[warp].st[r][lane].m;
            stats_l[warp * 64 + (lane >> 2) + 8 * r] = st[warp].st[r][lane].l;
          }
      std::vector<std::array<std::array<float, 32>, 2>> f(kComputeWarps);
      for (int warp = 0; warp < kComputeWarps; ++warp)
        for (int lane = 0; lane < 32; ++lane)
          for (int r = 0; r < 2; ++r) {
            const int row = (lane >> 2) + 8 * r;
            const Log2State all = merge_log2_states<kComputeWarps>(stats_m + row, stats_l + row, 64);
            f[warp][r][lane] = st[warp].st[r][lane].weight(all.m);
            st[warp].st[r][lane] = all;
          }
      std::vector<float> buf(16 * hd, std::numeric_limits<float>::quiet_NaN());
      for (int step = 0; step < g.token_warps(); ++step) {
        const int warp = step;  // token warp tw == warp when row_frags == 1
        for (int n = 0; n < dim_tiles; ++n)
          for (int e = 0; e < 4; ++e)
            for (int lane = 0; lane < 32; ++lane) {
              float& slot = buf[(n * 4 + e) * 32 + lane];
              const float mine = f[warp][e >> 1][lane] * st[warp].o[n][lane][e];
              if (step == g.token_warps() - 1) st[warp].o[n][lane][e] = slot + mine;
              else slot = step == 0 ? mine : slot + mine;
            }
        writer[warp] = step == g.token_warps() - 1;
      }
    }
    for (int warp = 0; warp < kComputeWarps; ++warp) {
      if (!writer[warp]) continue;
      const int rf = warp_row_frag(g, warp);
      for (int lane = 0; lane < 32; ++lane) {
        const int gg = lane >> 2, t = lane & 3;
        for (int r = 0; r < 2; ++r) {
          const int row = 16 * rf + gg + 8 * r;
          if (row >= w.rows) continue;
          const RowInfo& ri = st[warp].rows[r][lane];
          const Log2State& s = st[warp].st[r][lane];
          const float inv = s.empty() ? 0.0f : p.v_scale / s.denominator(sink2(ri.head));
          for (int n = 0; n < real_tiles; ++n)
            for (int e = 0; e < 2; ++e) {
              const float o = st[warp].o[n][lane][2 * r + e];
              const int col = 8 * n + 2 * t + e;
              if (w.partial < 0) out[ri.out_row * real_hd + col] = o * inv;
              else part_o[(std::int64_t{w.partial} * wp.q_tile + row) * hd + col] = o;
            }
          if (t == 0) {
            if (w.partial < 0) {
              lse[ri.out_row] = s.lse();
            } else {
              part_m[std::int64_t{w.partial} * wp.q_tile + row] = s.m;
              part_l[std::int64_t{w.partial} * wp.q_tile + row] = s.l;
            }
          }
        }
      }
    }
    // arrive_split: the last item of a split block to finish merges it (merge_block).
    if (w.partial >= 0 && ++counters[w.merge] == static_cast<unsigned>(wp.merges[w.merge].num_partials)) {
      merge_block(wp.merges[w.merge]);
      counters[w.merge] = 0;
    }
  }

  void merge_block(const MergeItem& mi) {
    const int khd = wp.geometry.head_dim, hd = p.head_dim;
    for (std::int64_t idx = 0; idx < std::int64_t{mi.rows} * hd; ++idx) {
      const std::int64_t r = idx / hd, col = idx % hd;
      Log2State all;
      for (int k = 0; k < mi.num_partials; ++k) all.m = std::fmax(all.m, part_m[(mi.first_partial + k) * std::int64_t{wp.q_tile} + r]);
      float o = 0.0f;
      for (int k = 0; k < mi.num_partials; ++k) {
        const std::int64_t row = (mi.first_partial + k) * std::int64_t{wp.q_tile} + r;
        const float f = Log2State{part_m[row], 0.0f}.weight(all.m);
        o += f * part_o[row * khd + col];
        all.l += f * part_l[row];
      }
      const int kv0 = mi.kv_head * p.group, pair = mi.head_begin + static_cast<int>(r) - kv0;
      const int head = kv0 + pair % p.group;
      const std::int64_t out_row = (std::int64_t{mi.batch} * p.q_len + pair / p.group) * p.num_heads + head;
      out[out_row * hd + col] = all.empty() ? 0.0f : p.v_scale * o / all.denominator(sink2(head));
      if (col == 0) lse[out_row] = all.lse();
    }
  }

  std::vector<float> run() {
    for (int cta = 0; cta < wp.grid; ++cta)
      for (int i = cta; i < static_cast<int>(wp.items.size()); i += wp.grid) run_item(wp.items[i]);
    for (unsigned n : counters) EXPECT_EQ(n, 0u) << "a merge counter was left non-zero";
    return out;
  }
};

// A validated problem for a case and a variant, with the tensors it points to kept alive.
struct EmuProblem {
  Inputs in;
  Options options;
  std::vector<float> slopes, sinks, dummy_out;
  Problem pr;
  EmuProblem(const Case& c, const VariantSpec& v) : slopes(v.slopes), sinks(v.sinks) {
    options = mixpa::testing::case_options(c, {});
    if (v.softcap != 0) options.softcap = v.softcap;
    if (v.window_left != -1) options.window_left = v.window_left;
    in = c.inputs();
    if (!slopes.empty()) in.alibi_slopes = TensorView::contiguous(slopes.data(), DType::kF32, {c.spec.num_heads});
    if (!sinks.empty()) in.sinks = TensorView::contiguous(sinks.data(), DType::kF32, {c.spec.num_heads});
    std::vector<float> tmp;
    const OutputView view = mixpa::testing::output_view(dummy_out, c);
    pr = validate(in, options, view);
  }
  EmuProblem(const EmuProblem&) = delete;
};

// The kernel's output for a case (with a variant) under a device's limits.
struct EmuRun {
  std::vector<float> out, lse;
  int error_flag = 0;
  std::size_t items = 0, merges = 0;
};
EmuRun emulate(const Case& c, const DeviceLimits& dev, const VariantSpec& v = {}, const WorkPlanOptions& opt = {}) {
  const EmuProblem ep(c, v);
  Emulator emu(ep.pr, dev, opt);
  EmuRun r;
  r.out = emu.run();
  r.lse = emu.lse;
  r.error_flag = emu.error_flag;
  r.items = emu.wp.items.size();
  r.merges = emu.wp.merges.size();
  return r;
}

// Few SMs, so that short contexts split too.
const DeviceLimits kTinyGpu{3, 227 * 1024};

std::vector<CaseSpec> emulation_specs() {
  std::vector<CaseSpec> specs = mixpa::testing::coverage_specs();
  specs.push_back(small_spec("split_mixed", 4, 20, 4, 64, 16, {0, 1, 1500, 2100}));
  specs.push_back(small_spec("split_q64", 1, 64, 1, 64, 32, {1100}));
  specs.push_back(small_spec("split_hd256", 1, 8, 1, 256, 64, {1300}));
  specs.push_back(small_spec("gqa3_odd", 2, 9, 3, 64, 16, {31, 18}));
  return specs;
}

class CudaKernelEmulation : public ::testing::TestWithParam<CaseSpec> {};

TEST_P(CudaKernelEmulation, AgreesWithExact) {
  const Case c = generate_case(GetParam(), 11);
  for (const DeviceLimits& dev : {DeviceLimits{}, kTinyGpu}) {
    const EmuRun r = emulate(c, dev);
    EXPECT_EQ(r.error_flag, 0);
    const double err = mixpa::testing::expect_close_to_exact(c, r.out, mixpa::testing::exact(c));
    EXPECT_LT(err, 2e-3) << "sm_count " << dev.sm_count;  // the cpu executor lands at the same values
    RecordProperty("max_abs_error_sm" + std::to_string(dev.sm_count), std::to_string(err));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaKernelEmulation, ::testing::ValuesIn(emulation_specs()),
                         [](const auto& info) { return info.param.name; });

TEST(CudaKernelEmulationProps, NaNInMaskedRowsDoesNotLeakAndBadPagesRaiseTheFlag) {
  Case c = generate_case(small_spec("nan_rows", 3, 16, 2, 64, 32, {45, 7, 33}), 3);
  const auto clean = emulate(c, kTinyGpu).out;
  const std::int64_t bs = 32, row_elems = 2 * 64;
  std::vector<bool> used(c.num_blocks * bs, false);
  for (std::int64_t b = 0; b < 3; ++b)
    for (std::int64_t t = 0; t < c.context_lens[b]; ++t) used[c.block_table[b * c.max_blocks_per_req + t / bs] * bs + t % bs] = true;
  for (std::int64_t row = 0; row < c.num_blocks * bs; ++row)
    if (!used[row])
      for (std::int64_t d = 0; d < row_elems; ++d) {
        c.key_cache[row * row_elems + d] = bf16::from_float(std::numeric_limits<float>::quiet_NaN());
        c.value_cache[row * row_elems + d] = bf16::from_float(std::numeric_limits<float>::infinity());
      }
  EXPECT_EQ(clean, emulate(c, kTinyGpu).out);
  c.block_table[1] = static_cast<std::int32_t>(c.num_blocks);  // request 0 uses column 1 (45 tokens)
  // validate() rejects the bad id on the host; the device check is the kernel's own, so the
  // emulator runs on a problem validated before the table was broken.
  Case good = generate_case(small_spec("nan_rows", 3, 16, 2, 64, 32, {45, 7, 33}), 3);
  const EmuProblem ep(good, {});
  Problem broken = ep.pr;
  broken.block_table = IndexView(c.block_table.data());
  Emulator bad(broken, kTinyGpu);
  bad.run();
  EXPECT_EQ(bad.error_flag, kErrorPageOutOfRange);
}

// Exact float64 attention with the variant, through validate() (the rules every executor gets).
struct ExactResult {
  std::vector<double> out, lse;
};
ExactResult exact_with(const Case& c, const VariantSpec& v) {
  const EmuProblem ep(c, v);
  ExactResult r;
  r.out.resize(ep.pr.shape.num_rows() * ep.pr.shape.head_dim);
  r.lse.resize(ep.pr.shape.num_rows());
  exact_attention_f64(ep.pr, r.out.data(), {}, r.lse.data());
  return r;
}

std::vector<float> alibi_slopes(std::int64_t heads) {  // BLOOM's geometric slopes
  std::vector<float> s(heads);
  for (std::int64_t h = 0; h < heads; ++h) s[h] = std::exp2(-8.0f * static_cast<float>(h + 1) / static_cast<float>(heads));
  return s;
}
std::vector<float> sink_values(std::int64_t heads, float base) {
  std::vector<float> s(heads);
  for (std::int64_t h = 0; h < heads; ++h) s[h] = base + 0.37f * static_cast<float>(h % 5) - 0.5f;
  return s;
}

// Runs one case and variant on both device shapes against exact float64 (out and lse).
void expect_emulation_exact(const Case& c, const std::string& name, const VariantSpec& v) {
  const ExactResult ref = exact_with(c, v);
  for (const DeviceLimits& dev : {DeviceLimits{}, kTinyGpu}) {
    const EmuRun run = emulate(c, dev, v);
    EXPECT_EQ(run.error_flag, 0);
    const AccuracyReport r = compare_to_exact(run.out.data(), ref.out.data(), static_cast<std::int64_t>(run.out.size()));
    const AccuracyReport rl = compare_lse_to_exact(run.lse.data(), ref.lse.data(), static_cast<std::int64_t>(ref.lse.size()));
    EXPECT_TRUE(r.pass()) << c.spec.name << " " << name << " sm " << dev.sm_count << ": max abs error " << r.max_abs_error
                          << ", " << r.failures << " failures";
    EXPECT_TRUE(rl.pass()) << c.spec.name << " " << name << " sm " << dev.sm_count << ": lse max abs error "
                           << rl.max_abs_error << ", " << rl.failures << " failures";
    EXPECT_LT(r.max_abs_error, 2e-3) << c.spec.name << " " << name;
    std::printf("emulation %-16s %-12s sm %3d items %4zu merges %3zu: out max abs error %.2e, lse %.2e\n",
                c.spec.name.c_str(), name.c_str(), dev.sm_count, run.items, run.merges, r.max_abs_error,
                rl.max_abs_error);
  }
}

// Each variant alone and combined, on shapes that split (tiny GPU) and that do not, against
// exact float64 for out and lse: soft-cap, ALiBi, windows (0, inside a page, across pages,
// larger than the context), sinks (ordinary and far above every score).
TEST(CudaKernelEmulationVariants, AgreeWithExact) {
  const std::vector<CaseSpec> specs = {
      small_spec("split_mixed", 4, 20, 4, 64, 16, {0, 1, 1500, 2100}),
      small_spec("gqa_32_4", 3, 32, 4, 128, 32, {70, 1, 257}, 0.3),
      small_spec("q64", 2, 64, 1, 128, 64, {130, 5}),
      small_spec("hd256_split", 2, 8, 1, 256, 32, {1300, 33}),
  };
  for (const CaseSpec& spec : specs) {
    const Case c = generate_case(spec, 21);
    const std::int64_t H = spec.num_heads;
    const std::vector<std::pair<std::string, VariantSpec>> variants = {
        {"softcap", {0.6, -1, {}, {}}},
        {"alibi", {0, -1, alibi_slopes(H), {}}},
        {"window0", {0, 0, {}, {}}},
        {"window5", {0, 5, {}, {}}},
        {"window40", {0, 40, {}, {}}},
        {"window700", {0, 700, {}, {}}},
        {"window_huge", {0, 100000, {}, {}}},
        {"sinks", {0, -1, {}, sink_values(H, 0.0f)}},
        {"sinks_above", {0, -1, {}, sink_values(H, 30.0f)}},
        {"all", {1.5, 300, alibi_slopes(H), sink_values(H, 1.0f)}},
    };
    for (const auto& [name, v] : variants) expect_emulation_exact(c, name, v);
  }
}

// SPEC §6 dtypes and shapes (serving_specs.h), with the variants some of them carry, out and
// lse against exact float64 on both device shapes.
class CudaKernelEmulationServing : public ::testing::TestWithParam<CaseSpec> {};

TEST_P(CudaKernelEmulationServing, AgreesWithExact) {
  const Case c = generate_case(GetParam(), 13);
  std::vector<double> ref_lse;
  const std::vector<double> ref = mixpa::testing::exact(c, {}, &ref_lse);
  for (const DeviceLimits& dev : {DeviceLimits{}, kTinyGpu}) {
    const EmuRun run = emulate(c, dev);
    EXPECT_EQ(run.error_flag, 0);
    const double err = mixpa::testing::expect_close_to_exact(c, run.out, ref);
    const double lse_err = mixpa::testing::expect_lse_close_to_exact(c, run.lse, ref_lse);
    EXPECT_LT(err, 2e-3) << "sm_count " << dev.sm_count;
    std::printf("emulation %-20s sm %3d items %4zu merges %3zu: out max abs error %.2e, lse %.2e\n",
                c.spec.name.c_str(), dev.sm_count, run.items, run.merges, err, lse_err);
  }
}

INSTANTIATE_TEST_SUITE_P(Serving, CudaKernelEmulationServing, ::testing::ValuesIn(mixpa::testing::cuda_serving_specs()),
                         [](const auto& info) { return info.param.name; });

// The kernel dtype each query / cache pair runs on, and the pairs left out (with the reason the
// executor table reports).
TEST(CudaKernelEmulationServingProps, DtypePairs) {
  EXPECT_EQ(kernel_dtype(DType::kBF16, DType::kBF16), KernelDtype::kBf16);
  EXPECT_EQ(kernel_dtype(DType::kF16, DType::kF16), KernelDtype::kF16);
  EXPECT_EQ(kernel_dtype(DType::kBF16, DType::kF8E4M3), KernelDtype::kFp8Bf16);
  EXPECT_EQ(kernel_dtype(DType::kBF16, DType::kF8E5M2), KernelDtype::kFp8Bf16);
  EXPECT_EQ(kernel_dtype(DType::kF16, DType::kF8E4M3), KernelDtype::kFp8F16);
  EXPECT_EQ(kernel_dtype(DType::kF16, DType::kF8E5M2), KernelDtype::kFp8F16);
  for (DType kv : {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2})
    for (DType q : {DType::kBF16, DType::kF16}) {
      const bool mixed16 = (kv == DType::kBF16 || kv == DType::kF16) && q != kv;
      EXPECT_EQ(unsupported_types(q, kv).empty(), !mixed16) << dtype_name(q) << " " << dtype_name(kv);
      if (mixed16) EXPECT_THROW(kernel_dtype(q, kv), Error);
    }
  EXPECT_NE(unsupported_types(DType::kF16, DType::kBF16).find("query F16 with BF16 caches"), std::string::npos);
  for (std::int64_t hd = 16; hd <= 256; hd += 16) EXPECT_GE(kernel_head_dim(hd), hd);
  EXPECT_EQ(kernel_head_dim(16), 64);
  EXPECT_EQ(kernel_head_dim(80), 128);
  EXPECT_EQ(kernel_head_dim(192), 256);
  EXPECT_THROW(kernel_head_dim(72), Error);
  EXPECT_THROW(kernel_head_dim(272), Error);
}

// Every fp8 code through the kernel's conversions (dequant.h) equals its exact value (NaN
// codes aside: the bit path maps them to finite values, never read from used rows).
TEST(CudaKernelEmulationServingProps, Fp8ConversionsAreExact) {
  for (int code = 0; code < 256; ++code) {
    const std::uint32_t w = static_cast<std::uint32_t>(code) * 0x01010101u;  // the code in every byte
    for (bool e5m2 : {false, true}) {
      const float want = e5m2 ? e5m2::from_bits(static_cast<std::uint8_t>(code)).to_float()
                              : e4m3::from_bits(static_cast<std::uint8_t>(code)).to_float();
      if (std::isnan(want)) continue;
      std::uint32_t h[2], b[2];
      fp8x4_to_16<false>(w, e5m2, h);
      fp8x4_to_16<true>(w, e5m2, b);
      for (int i = 0; i < 2; ++i) {
        EXPECT_EQ(lo_f(h[i], true), want) << "f16 " << e5m2 << " code " << code;
        EXPECT_EQ(hi_f(h[i], true), want) << "f16 " << e5m2 << " code " << code;
        EXPECT_EQ(lo_f(b[i], false), want) << "bf16 " << e5m2 << " code " << code;
        EXPECT_EQ(hi_f(b[i], false), want) << "bf16 " << e5m2 << " code " << code;
      }
    }
  }
  // Byte order: codes 0..3 of a word land in order.
  std::uint32_t h[2];
  fp8x4_to_16<false>(0x40383000u, false, h);  // e4m3 codes 0x00 (0), 0x30 (0.5), 0x38 (1), 0x40 (2)
  EXPECT_EQ(lo_f(h[0], true), 0.0f);
  EXPECT_EQ(hi_f(h[0], true), 0.5f);
  EXPECT_EQ(lo_f(h[1], true), 1.0f);
  EXPECT_EQ(hi_f(h[1], true), 2.0f);
}

// fp8 caches and q_len > 1: NaN in the cache rows no request uses never reaches the output.
TEST(CudaKernelEmulationServingProps, NaNInUnusedFp8RowsDoesNotLeak) {
  for (const CaseSpec& spec : {mixpa::testing::serving(small_spec("nan_e4m3", 3, 16, 2, 64, 32, {45, 7, 33}), DType::kBF16,
                                                       DType::kF8E4M3, 1, false, 0.5, 2.0),
                               mixpa::testing::serving(small_spec("nan_e5m2_q4", 2, 16, 2, 80, 16, {45, 4}), DType::kF16,
                                                       DType::kF8E5M2, 4)}) {
    Case c = generate_case(spec, 3);
    const auto clean = emulate(c, kTinyGpu).out;
    const std::int64_t bs = spec.block_size, row_elems = spec.num_kv_heads * spec.head_dim;
    std::vector<bool> used(c.num_blocks * bs, false);
    for (std::int64_t b = 0; b < spec.batch; ++b)
      for (std::int64_t t = 0; t < c.context_lens[b]; ++t) used[c.block_table[b * c.max_blocks_per_req + t / bs] * bs + t % bs] = true;
    int poisoned = 0;
    for (std::int64_t row = 0; row < c.num_blocks * bs; ++row)
      if (!used[row]) {
        ++poisoned;
        std::fill_n(c.key_bytes.begin() + row * row_elems, row_elems, std::uint8_t{0x7f});  // NaN in both formats
        std::fill_n(c.value_bytes.begin() + row * row_elems, row_elems, std::uint8_t{0xff});
      }
    ASSERT_GT(poisoned, 0);
    EXPECT_EQ(clean, emulate(c, kTinyGpu).out) << spec.name;
  }
}

// Page-granular balancing (WorkPlanOptions::balance_pages): blocks cut across CTAs, merged in
// the kernel, no-op padding items; with a window and sinks too.
TEST(CudaKernelEmulationVariants, PageBalancedPlanAgreesWithExact) {
  const Case c = generate_case(small_spec("balanced", 7, 20, 4, 64, 16, {0, 1, 300, 417, 64, 129, 1000}), 8);
  WorkPlanOptions opt;
  opt.balance_pages = true;
  for (const VariantSpec& v : {VariantSpec{}, VariantSpec{0, 150, {}, sink_values(20, 0.5f)}}) {
    const ExactResult ref = exact_with(c, v);
    const EmuRun run = emulate(c, kTinyGpu, v, opt);
    EXPECT_GT(run.merges, 0u);
    EXPECT_TRUE(compare_to_exact(run.out.data(), ref.out.data(), static_cast<std::int64_t>(run.out.size())).pass());
    EXPECT_TRUE(compare_lse_to_exact(run.lse.data(), ref.lse.data(), static_cast<std::int64_t>(ref.lse.size())).pass());
  }
}

// A window reads only the pages it needs: the items cover the last window_left + 1 tokens.
TEST(CudaKernelEmulationVariants, WindowItemsSkipThePagesBeforeIt) {
  const Case c = generate_case(small_spec("long", 1, 16, 1, 128, 32, {5000}), 2);
  const EmuProblem ep(c, VariantSpec{0, 99, {}, {}});
  const Emulator emu(ep.pr, DeviceLimits{});
  std::int64_t tokens = 0;
  for (const WorkItem& w : emu.wp.items) {
    EXPECT_GE(w.token_begin, 5000 - 100);
    EXPECT_EQ(w.position, 4999);
    tokens += w.token_end - w.token_begin;
  }
  EXPECT_EQ(tokens, 100);
}

// The plain case's lse against exact, context 0 included (-inf).
TEST(CudaKernelEmulationVariants, PlainLseAgreesWithExact) {
  const Case c = generate_case(small_spec("lens_edge_bs16", 6, 16, 1, 128, 16, {0, 1, 15, 16, 17, 1100}), 4);
  const ExactResult ref = exact_with(c, {});
  for (const DeviceLimits& dev : {DeviceLimits{}, kTinyGpu}) {
    const EmuRun run = emulate(c, dev);
    EXPECT_TRUE(compare_lse_to_exact(run.lse.data(), ref.lse.data(), static_cast<std::int64_t>(ref.lse.size())).pass());
    EXPECT_EQ(run.lse[0], kNegInf);
  }
}

}  // namespace
}  // namespace mixpa::cuda
