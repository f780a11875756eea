// A lane-by-lane CPU emulation of the cuda kernel, built on the kernel's own tiling functions
// (tile_layout.h) and on ldmatrix / mma.m16n8k16 fragment semantics as the PTX ISA states
// them. It runs the work plan the executor would launch (persistent stride loop, split-KV
// partials, merge) and must agree with exact attention: a check, on machines without a GPU,
// of every index the kernel computes (swizzle, producer slots, fragment addresses, score
// columns, P packing, the token-warp merge). It does not check the PTX itself.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/check.h"
#include "cuda/work_plan.h"

namespace mixpa::cuda {
namespace {
using mixpa::testing::small_spec;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
using Reg4 = std::array<std::uint32_t, 4>;
using Acc4 = std::array<float, 4>;

float lo_f(std::uint32_t r) { return bf16::from_bits(static_cast<std::uint16_t>(r & 0xffff)).to_float(); }
float hi_f(std::uint32_t r) { return bf16::from_bits(static_cast<std::uint16_t>(r >> 16)).to_float(); }
std::uint32_t pack(float lo, float hi) {
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

// mma.m16n8k16.row.col f32.bf16.bf16.f32, d += a * b, fragments as warp_mma.cuh documents.
void mma(std::array<Acc4, 32>& d, const std::array<Reg4, 32>& a, const std::array<std::uint32_t, 32>& b0,
         const std::array<std::uint32_t, 32>& b1) {
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    A[g][2 * t] = lo_f(a[lane][0]), A[g][2 * t + 1] = hi_f(a[lane][0]);
    A[g + 8][2 * t] = lo_f(a[lane][1]), A[g + 8][2 * t + 1] = hi_f(a[lane][1]);
    A[g][2 * t + 8] = lo_f(a[lane][2]), A[g][2 * t + 9] = hi_f(a[lane][2]);
    A[g + 8][2 * t + 8] = lo_f(a[lane][3]), A[g + 8][2 * t + 9] = hi_f(a[lane][3]);
    B[2 * t][g] = lo_f(b0[lane]), B[2 * t + 1][g] = hi_f(b0[lane]);
    B[2 * t + 8][g] = lo_f(b1[lane]), B[2 * t + 9][g] = hi_f(b1[lane]);
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

struct Emulator {
  const Case& c;
  Plan plan;
  WorkPlan wp;
  std::vector<float> out, part_o, part_m, part_l;
  int error_flag = 0;

  Emulator(const Case& cs, const DeviceLimits& dev)
      : c(cs),
        plan(make_plan(Shape{cs.spec.batch, cs.spec.num_heads, cs.spec.num_kv_heads, cs.spec.head_dim, cs.num_blocks,
                             cs.spec.block_size, cs.max_blocks_per_req},
                       static_cast<float>(cs.scale))),
        wp(plan_work(plan, cs.context_lens.data(), dev)) {
    out.assign(cs.out_elements(), std::numeric_limits<float>::quiet_NaN());  // every element must be written
    part_o.assign(wp.num_partials * wp.q_tile * cs.spec.head_dim, std::numeric_limits<float>::quiet_NaN());
    part_m.assign(wp.num_partials * wp.q_tile, std::numeric_limits<float>::quiet_NaN());
    part_l = part_m;
  }

  template <class Vector>
  const std::uint16_t* bits(const Vector& v) const { return reinterpret_cast<const std::uint16_t*>(v.data()); }

  // The producer warp's TPUSH of one tile (paged_attention.cu: produce).
  void produce(const WorkItem& w, int tile, std::vector<std::uint8_t>& stage) {
    const TileGeometry g = wp.geometry;
    const std::int64_t row = c.spec.num_kv_heads * c.spec.head_dim;
    const std::int64_t page_stride = c.spec.block_size * row, head_stride = c.spec.head_dim;
    std::fill(stage.begin(), stage.end(), 0xff);  // bf16 0xffff is NaN: unwritten bytes would show
    const int t0 = w.token_begin + tile * kTileTokens;
    std::int64_t k_off[32][2];
    for (int lane = 0; lane < 32; ++lane)
      for (int h = 0; h < 2; ++h) {
        const int t = t0 + 32 * h + lane;
        k_off[lane][h] = -1;
        if (t < w.token_end) {
          const std::int64_t page = lookup_page(c.block_table.data(), c.max_blocks_per_req, c.num_blocks,
                                                static_cast<int>(c.spec.block_size), w.batch, t);
          if (page < 0) error_flag |= kErrorPageOutOfRange;
          else k_off[lane][h] = row_offset(page, t % c.spec.block_size, w.kv_head, page_stride, row, head_stride);
        }
      }
    for (int pass = 0; pass < g.passes(); ++pass)
      for (int lane = 0; lane < 32; ++lane) {
        const ProducerSlot slot = producer_slot(g, pass, lane);
        const int src = slot.row & 31;
        const int src_h = producer_slot(g, pass, src).row >> 5;  // the source lane's own selection
        const std::int64_t ko = k_off[src][src_h];
        const int dst = swizzled_offset(g, slot.row, slot.chunk);
        for (int tensor = 0; tensor < 2; ++tensor) {
          std::uint8_t* d = stage.data() + tensor * g.tile_bytes() + dst;
          if (ko < 0) std::memset(d, 0, 16);
          else std::memcpy(d, bits(tensor ? c.value_cache : c.key_cache) + ko + 8 * slot.chunk, 16);
        }
      }
  }

  struct WarpState {
    std::vector<std::array<Acc4, 32>> o;  // [dim tile][lane]
    std::array<std::array<float, 32>, 2> m, l;
  };

  // One compute warp's TPOP ... TFREE of one tile (paged_attention.cu: compute, tile loop).
  void consume(const WorkItem& w, int tile, int warp, const std::vector<std::uint8_t>& stage,
               const std::vector<std::array<Reg4, 32>>& qf, WarpState& st) {
    const TileGeometry g = wp.geometry;
    const int tw = warp_token_slice(g, warp);
    const int s_tiles = g.tokens_per_warp() / 8, k_steps = g.head_dim / 16, dim_tiles = g.head_dim / 8;
    const std::uint8_t* k_tile = stage.data();
    const std::uint8_t* v_tile = stage.data() + g.tile_bytes();
    const int t0 = w.token_begin + tile * kTileTokens;
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
        mma(sc[j], qf[2 * pp], b0, b1);
        mma(sc[j], qf[2 * pp + 1], b2, b3);
      }
    std::array<std::array<float, 32>, 2> mx;
    for (auto& r : mx) r.fill(kNegInf);
    for (int lane = 0; lane < 32; ++lane)
      for (int j = 0; j < s_tiles; ++j)
        for (int e = 0; e < 4; ++e) {
          const int token = t0 + score_column(g, tw, j, lane & 3, e);
          float& v = sc[j][lane][e];
          v = token < w.token_end ? v * (plan.scale * 1.4426950408889634f) : kNegInf;
          mx[e >> 1][lane] = std::fmax(mx[e >> 1][lane], v);
        }
    std::array<std::array<float, 32>, 2> alpha, m_use;
    for (int r = 0; r < 2; ++r) {
      quad_reduce(mx[r], [](float a, float b) { return std::fmax(a, b); });
      for (int lane = 0; lane < 32; ++lane) {
        const float m_new = std::fmax(st.m[r][lane], mx[r][lane]);
        m_use[r][lane] = m_new == kNegInf ? 0.0f : m_new;
        alpha[r][lane] = std::exp2(st.m[r][lane] - m_use[r][lane]);
        st.m[r][lane] = m_new;
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      float row_sum[2] = {0, 0};
      for (int j = 0; j < s_tiles; ++j)
        for (int e = 0; e < 4; ++e) {
          float& v = sc[j][lane][e];
          v = round_to_bf16(std::exp2(v - m_use[e >> 1][lane]));
          row_sum[e >> 1] += v;
        }
      for (int r = 0; r < 2; ++r) st.l[r][lane] = st.l[r][lane] * alpha[r][lane] + row_sum[r];
      for (int n = 0; n < dim_tiles; ++n)
        for (int e = 0; e < 4; ++e) st.o[n][lane][e] *= alpha[e >> 1][lane];
    }
    for (int q = 0; q < g.tokens_per_warp() / 16; ++q) {
      std::array<Reg4, 32> pa;
      for (int lane = 0; lane < 32; ++lane)
        pa[lane] = {pack(sc[2 * q][lane][0], sc[2 * q][lane][1]), pack(sc[2 * q][lane][2], sc[2 * q][lane][3]),
                    pack(sc[2 * q + 1][lane][0], sc[2 * q + 1][lane][1]), pack(sc[2 * q + 1][lane][2], sc[2 * q + 1][lane][3])};
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
        mma(st.o[2 * d], pa, b0, b1);
        mma(st.o[2 * d + 1], pa, b2, b3);
      }
    }
  }

  void run_item(const WorkItem& w) {
    const TileGeometry g = wp.geometry;
    const int hd = g.head_dim, dim_tiles = hd / 8, k_steps = hd / 16;
    std::vector<std::uint8_t> stage(g.stage_bytes());
    std::vector<WarpState> st(kComputeWarps);
    std::vector<std::vector<std::array<Reg4, 32>>> qf(kComputeWarps, std::vector<std::array<Reg4, 32>>(k_steps));
    const std::int64_t qbase = (std::int64_t{w.batch} * c.spec.num_heads + w.head_begin) * hd;
    for (int warp = 0; warp < kComputeWarps; ++warp) {
      st[warp].o.assign(dim_tiles, {});
      for (auto& a : st[warp].o) a.fill({0, 0, 0, 0});
      for (int r = 0; r < 2; ++r) st[warp].m[r].fill(kNegInf), st[warp].l[r].fill(0.0f);
      const int rf = warp_row_frag(g, warp);
      for (int lane = 0; lane < 32; ++lane) {
        const int gg = lane >> 2, t = lane & 3, row0 = 16 * rf + gg, row1 = row0 + 8;
        auto q32 = [&](int row, int col) -> std::uint32_t {
          if (row >= w.rows) return 0;
          const std::uint16_t* q = bits(c.query) + qbase + std::int64_t{row} * hd + col;
          return std::uint32_t{q[0]} | (std::uint32_t{q[1]} << 16);
        };
        for (int kk = 0; kk < k_steps; ++kk) {
          const int col = 16 * kk + 2 * t;
          qf[warp][kk][lane] = {q32(row0, col), q32(row1, col), q32(row0, col + 8), q32(row1, col + 8)};
        }
      }
    }
    for (int tile = 0; tile < item_tiles(w); ++tile) {
      produce(w, tile, stage);
      for (int warp = 0; warp < kComputeWarps; ++warp) consume(w, tile, warp, stage, qf[warp], st[warp]);
    }
    for (auto& s : st)
      for (int r = 0; r < 2; ++r) quad_reduce(s.l[r], [](float a, float b) { return a + b; });
    std::vector<bool> writer(kComputeWarps, true);
    if (g.token_warps() > 1) {
      // stats, then f / m_all / l_all per warp, then the fixed-order accumulation.
      float stats_m[kComputeWarps][64], stats_l[kComputeWarps][64];
      for (int warp = 0; warp < kComputeWarps; ++warp)
        for (int lane = 0; lane < 32; lane += 4)
          for (int r = 0; r < 2; ++r) {
            stats_m[warp][(lane >> 2) + 8 * r] = st[warp].m[r][lane];
            stats_l[warp][(lane >> 2) + 8 * r] = st[warp].l[r][lane];
          }
      std::vector<std::array<std::array<float, 32>, 2>> f(kComputeWarps);
      for (int warp = 0; warp < kComputeWarps; ++warp)
        for (int lane = 0; lane < 32; ++lane)
          for (int r = 0; r < 2; ++r) {
            const int row = (lane >> 2) + 8 * r;
            float m_all = kNegInf;
            for (int k = 0; k < g.token_warps(); ++k) m_all = std::fmax(m_all, stats_m[k][row]);
            float l_all = 0.0f;
            if (m_all != kNegInf)
              for (int k = 0; k < g.token_warps(); ++k) l_all += std::exp2(stats_m[k][row] - m_all) * stats_l[k][row];
            f[warp][r][lane] = m_all == kNegInf ? 0.0f : std::exp2(st[warp].m[r][lane] - m_all);
            st[warp].m[r][lane] = m_all;
            st[warp].l[r][lane] = l_all;
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
          const float L = st[warp].l[r][lane];
          for (int n = 0; n < dim_tiles; ++n)
            for (int e = 0; e < 2; ++e) {
              const float o = st[warp].o[n][lane][2 * r + e];
              const int col = 8 * n + 2 * t + e;
              if (w.partial < 0) out[qbase + std::int64_t{row} * hd + col] = L > 0.0f ? o * (1.0f / L) : 0.0f;
              else part_o[(std::int64_t{w.partial} * wp.q_tile + row) * hd + col] = o;
            }
          if (w.partial >= 0 && t == 0) {
            part_m[std::int64_t{w.partial} * wp.q_tile + row] = st[warp].m[r][lane];
            part_l[std::int64_t{w.partial} * wp.q_tile + row] = L;
          }
        }
      }
    }
  }

  void merge() {
    const int hd = wp.geometry.head_dim;
    for (const MergeItem& mi : wp.merges)
      for (std::int64_t idx = 0; idx < std::int64_t{mi.rows} * hd; ++idx) {
        const std::int64_t r = idx / hd, col = idx % hd;
        float m_all = kNegInf;
        for (int k = 0; k < mi.num_partials; ++k) m_all = std::fmax(m_all, part_m[(mi.first_partial + k) * std::int64_t{wp.q_tile} + r]);
        float o = 0.0f, l = 0.0f;
        if (m_all != kNegInf)
          for (int k = 0; k < mi.num_partials; ++k) {
            const std::int64_t row = (mi.first_partial + k) * std::int64_t{wp.q_tile} + r;
            const float f = std::exp2(part_m[row] - m_all);
            o += f * part_o[row * hd + col];
            l += f * part_l[row];
          }
        out[(std::int64_t{mi.batch} * c.spec.num_heads + mi.head_begin + r) * hd + col] = l > 0.0f ? o / l : 0.0f;
      }
  }

  std::vector<float> run() {
    for (int cta = 0; cta < wp.grid; ++cta)
      for (int i = cta; i < static_cast<int>(wp.items.size()); i += wp.grid) run_item(wp.items[i]);
    merge();
    return out;
  }
};

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
    Emulator emu(c, dev);
    const auto out = emu.run();
    EXPECT_EQ(emu.error_flag, 0);
    const double err = mixpa::testing::expect_close_to_exact(c, out, mixpa::testing::exact(c));
    EXPECT_LT(err, 2e-3) << "sm_count " << dev.sm_count;  // the cpu executor lands at the same values
    RecordProperty("max_abs_error_sm" + std::to_string(dev.sm_count), std::to_string(err));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaKernelEmulation, ::testing::ValuesIn(emulation_specs()),
                         [](const auto& info) { return info.param.name; });

TEST(CudaKernelEmulationProps, NaNInMaskedRowsDoesNotLeakAndBadPagesRaiseTheFlag) {
  Case c = generate_case(small_spec("nan_rows", 3, 16, 2, 64, 32, {45, 7, 33}), 3);
  const auto clean = Emulator(c, kTinyGpu).run();
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
  EXPECT_EQ(clean, Emulator(c, kTinyGpu).run());
  c.block_table[1] = static_cast<std::int32_t>(c.num_blocks);  // request 0 uses column 1 (45 tokens)
  Emulator bad(c, kTinyGpu);
  bad.run();
  EXPECT_EQ(bad.error_flag, kErrorPageOutOfRange);
}

}  // namespace
}  // namespace mixpa::cuda
