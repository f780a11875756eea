// Host-side planning of the cuda executor and the kernel's tiling arithmetic, on the CPU:
// work items cover every request's tokens exactly once and in order, splits follow the SM
// count, the ring fits shared memory, and the producer's (page, row) -> tile slot mapping and
// the compute warps' fragment addresses hit the right bytes. Runs in every build.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include "common/check.h"
#include "cuda/work_plan.h"

namespace mixpa::cuda {
namespace {
using mixpa::testing::small_spec;

const DeviceLimits kH100{132, 227 * 1024};
const DeviceLimits kA100{108, 163 * 1024};

Plan plan_of(const CaseSpec& spec, std::int64_t num_blocks, std::int64_t max_blocks) {
  return make_plan(Shape{spec.batch, spec.num_heads, spec.num_kv_heads, spec.head_dim, num_blocks, spec.block_size, max_blocks},
                   1.0f);
}

std::vector<std::int32_t> lens_of(const CaseSpec& spec) {
  std::vector<std::int32_t> lens(spec.batch);
  for (std::int64_t b = 0; b < spec.batch; ++b) lens[b] = spec.context_lens[b % spec.context_lens.size()];
  return lens;
}

// Every logical block's items tile [0, ctx) contiguously; partial slots are dense and unique.
void expect_consistent(const Plan& plan, const std::vector<std::int32_t>& lens, const WorkPlan& w, const DeviceLimits& dev) {
  std::int64_t item = 0, partials = 0;
  std::size_t merge = 0;
  for (std::int64_t blk = 0; blk < plan.total_logical_blocks; ++blk) {
    const LogicalBlock lb = plan.logical_block(blk);
    std::int32_t next = 0;
    const std::int64_t first = item;
    while (item < static_cast<std::int64_t>(w.items.size()) && w.items[item].batch == lb.batch &&
           w.items[item].head_begin == lb.head_begin) {
      const WorkItem& it = w.items[item];
      EXPECT_EQ(it.kv_head, lb.kv_head);
      EXPECT_EQ(it.rows, lb.rows);
      EXPECT_EQ(it.token_begin, next) << "block " << blk;
      EXPECT_LE(it.token_begin, it.token_end);
      next = it.token_end;
      ++item;
    }
    const std::int64_t n = item - first;
    ASSERT_GE(n, 1) << "block " << blk << " has no item";
    EXPECT_EQ(next, lens[lb.batch]) << "block " << blk;
    if (n == 1) {
      EXPECT_EQ(w.items[first].partial, -1);
    } else {
      ASSERT_LT(merge, w.merges.size());
      const MergeItem& m = w.merges[merge++];
      EXPECT_EQ(m.batch, lb.batch);
      EXPECT_EQ(m.head_begin, lb.head_begin);
      EXPECT_EQ(m.rows, lb.rows);
      EXPECT_EQ(m.first_partial, partials);
      EXPECT_EQ(m.num_partials, n);
      for (std::int64_t i = first; i < item; ++i) EXPECT_EQ(w.items[i].partial, partials++);
      for (std::int64_t i = first; i < item; ++i) EXPECT_GT(w.items[i].token_end, w.items[i].token_begin);
    }
  }
  EXPECT_EQ(item, static_cast<std::int64_t>(w.items.size()));
  EXPECT_EQ(merge, w.merges.size());
  EXPECT_EQ(partials, w.num_partials);
  EXPECT_EQ(w.grid, std::min<std::int64_t>(dev.sm_count, w.items.size()));
  EXPECT_GE(w.stages, kMinStages);
  EXPECT_LE(w.smem_bytes, dev.max_smem_per_block);
  EXPECT_EQ(w.smem_bytes, smem_layout(w.geometry, w.stages).total());
}

TEST(CudaWorkPlan, OriginCasesAndOddShapesAreConsistent) {
  std::vector<CaseSpec> specs = mixpa::testing::coverage_specs();
  for (const char* name : {"Case1", "Case2", "SmallCase1", "Decode32k"}) specs.push_back(find_case(name));
  specs.push_back(small_spec("mixed", 6, 20, 1, 128, 16, {0, 1, 2, 9000, 64, 65}));
  specs.push_back(small_spec("gqa32_4", 4, 32, 4, 128, 16, {0, 1, 1000, 40000}));
  for (const DeviceLimits& dev : {kH100, kA100}) {
    for (const CaseSpec& spec : specs) {
      const auto lens = lens_of(spec);
      std::int32_t max_len = 1;
      for (auto l : lens) max_len = std::max(max_len, l);
      const std::int64_t max_blocks = (std::max<std::int64_t>(spec.max_model_len, max_len) + spec.block_size - 1) / spec.block_size;
      const Plan plan = plan_of(spec, 1000, max_blocks);
      SCOPED_TRACE(spec.name + " sm " + std::to_string(dev.sm_count));
      const WorkPlan w = plan_work(plan, lens.data(), dev);
      expect_consistent(plan, lens, w, dev);
    }
  }
}

// balance_pages: every CTA gets an equal run of pages (within one), the items of each block
// tile its tokens in chunk order, split blocks have a merge item, padding items are no-ops.
TEST(CudaWorkPlan, PageBalancingGivesEveryCtaTheSamePages) {
  for (const char* name : {"Case1", "Case2", "SmallCase1"}) {
    const CaseSpec spec = find_case(name);
    const auto lens = lens_of(spec);
    const Plan plan = plan_of(spec, 1000, (spec.max_model_len + spec.block_size - 1) / spec.block_size);
    WorkPlanOptions opt;
    opt.balance_pages = true;
    const WorkPlan w = plan_work(plan, lens.data(), kH100, opt);
    ASSERT_EQ(w.grid, 132) << name;
    ASSERT_EQ(w.items.size() % 132, 0u);
    std::vector<std::int64_t> pages(w.grid, 0);
    std::map<std::pair<int, int>, std::vector<WorkItem>> by_block;
    for (std::size_t i = 0; i < w.items.size(); ++i) {
      const WorkItem& it = w.items[i];
      if (it.rows == 0) {
        EXPECT_EQ(it.token_end, it.token_begin);
        continue;
      }
      pages[i % w.grid] += (it.token_end - it.token_begin + spec.block_size - 1) / spec.block_size;
      by_block[{it.batch, it.head_begin}].push_back(it);
    }
    const auto [lo, hi] = std::minmax_element(pages.begin(), pages.end());
    EXPECT_LE(*hi - *lo, 2) << name;
    EXPECT_EQ(static_cast<std::int64_t>(by_block.size()), plan.total_logical_blocks);
    std::int64_t partials = 0;
    for (auto& [key, items] : by_block) {
      std::sort(items.begin(), items.end(), [](const WorkItem& a, const WorkItem& b) { return a.token_begin < b.token_begin; });
      std::int64_t next = 0;
      for (const WorkItem& it : items) {
        EXPECT_EQ(it.token_begin, next);
        next = it.token_end;
        if (items.size() > 1) {
          ASSERT_GE(it.merge, 0);
          EXPECT_EQ(w.merges[it.merge].num_partials, static_cast<int>(items.size()));
          EXPECT_EQ(it.partial, w.merges[it.merge].first_partial + (&it - items.data()));
          ++partials;
        } else {
          EXPECT_EQ(it.partial, -1);
        }
      }
      EXPECT_EQ(next, lens[key.first]);
    }
    EXPECT_EQ(partials, w.num_partials);
    std::printf("%-10s balanced: %zu item slots, %zu merges, pages per CTA %lld..%lld\n", name, w.items.size(),
                w.merges.size(), static_cast<long long>(*lo), static_cast<long long>(*hi));
  }
}

TEST(CudaWorkPlan, SplitsFollowTheSmCount) {
  // Case1: 256 logical blocks fill 132 SMs: no split, no merge kernel.
  const CaseSpec case1 = find_case("Case1");
  const WorkPlan w1 = plan_work(plan_of(case1, 1000, 256), lens_of(case1).data(), kH100);
  EXPECT_EQ(w1.items.size(), 256u);
  EXPECT_TRUE(w1.merges.empty());
  EXPECT_EQ(w1.grid, 132);
  // SmallCase1 (24 blocks), Case2 (64 blocks), Decode32k (8 blocks) are split to fill the SMs.
  for (const char* name : {"SmallCase1", "Case2", "Decode32k"}) {
    const CaseSpec spec = find_case(name);
    const auto lens = lens_of(spec);
    const Plan plan = plan_of(spec, 1000, (spec.max_model_len + spec.block_size - 1) / spec.block_size);
    const WorkPlan w = plan_work(plan, lens.data(), kH100);
    EXPECT_EQ(w.merges.size(), static_cast<std::size_t>(plan.total_logical_blocks)) << name;
    EXPECT_GE(w.items.size(), 120u) << name;
    EXPECT_EQ(w.grid, std::min<int>(132, static_cast<int>(w.items.size()))) << name;
    for (const WorkItem& it : w.items) EXPECT_GE(it.token_end - it.token_begin, kMinChunkTokens) << name;
    // The cost model is never worse (by its own estimate) than any fixed items-per-SM target.
    const SplitKvPlan chosen = plan_split_kv(plan, lens.data(), choose_split_target(plan, lens.data(), 132, kMinChunkTokens),
                                             kMinChunkTokens);
    const std::int64_t best = estimate_makespan(plan, lens.data(), chosen, 132);
    for (double ips : {0.0, 1.0, 2.0, 4.0, 8.0}) {
      const SplitKvPlan fixed = plan_split_kv(plan, lens.data(), split_target_items(plan.total_logical_blocks, 132, ips),
                                              kMinChunkTokens);
      EXPECT_LE(best, estimate_makespan(plan, lens.data(), fixed, 132)) << name << " items/SM " << ips;
    }
    std::printf("%-10s items %zu grid %d est. makespan %lld tokens\n", name, w.items.size(), w.grid,
                static_cast<long long>(best));
  }
}

TEST(CudaWorkPlan, MakespanCountsTheBusiestCta) {
  // Two blocks of 1000 and 10 tokens, unsplit, on 4 SMs: the 1000-token CTA decides.
  const CaseSpec spec = small_spec("two", 2, 16, 1, 128, 16, {1000, 10});
  const Plan plan = plan_of(spec, 200, 100);
  const auto lens = lens_of(spec);
  const SplitKvPlan sp = plan_split_kv(plan, lens.data(), 2, kMinChunkTokens);
  EXPECT_EQ(estimate_makespan(plan, lens.data(), sp, 4), 1000 + kItemOverheadTokens);
  // On one SM both items queue on the same CTA.
  EXPECT_EQ(estimate_makespan(plan, lens.data(), sp, 1), 1010 + 2 * kItemOverheadTokens);
}

TEST(CudaWorkPlan, OptionsCapStagesAndSteerSplits) {
  const CaseSpec small = find_case("SmallCase1");
  const Plan plan = plan_of(small, 1000, 256);
  const auto lens = lens_of(small);
  const WorkPlan no_split = plan_work(plan, lens.data(), kH100, {kMaxStages, 0.0, kMinChunkTokens});
  EXPECT_EQ(no_split.items.size(), 24u);
  EXPECT_TRUE(no_split.merges.empty());
  const WorkPlan capped = plan_work(plan, lens.data(), kH100, {3, -1.0, kMinChunkTokens});
  EXPECT_EQ(capped.stages, 3);
  const WorkPlan many = plan_work(plan, lens.data(), kH100, {kMaxStages, 8.0, 256});
  EXPECT_GT(many.items.size(), plan_work(plan, lens.data(), kH100).items.size());
  for (const WorkPlan* w : {&no_split, &capped, &many}) expect_consistent(plan, lens, *w, kH100);
}

TEST(CudaWorkPlan, RingDepthFitsSharedMemory) {
  for (int hd : {64, 128, 256})
    for (int rf : {1, 4}) {
      const TileGeometry g{hd, rf};
      const int h100 = choose_stages(g, kH100.max_smem_per_block);
      const int a100 = choose_stages(g, kA100.max_smem_per_block);
      EXPECT_GE(a100, kMinStages);
      EXPECT_GE(h100, a100);
      EXPECT_LE(smem_layout(g, h100).total(), kH100.max_smem_per_block);
      if (h100 < kMaxStages)
        EXPECT_GT(smem_layout(g, h100 + 1).total(), kH100.max_smem_per_block) << "hd " << hd << ": could use more stages";
    }
  EXPECT_THROW(choose_stages(TileGeometry{256, 1}, 48 * 1024), Error);
}

TEST(CudaWorkPlan, RejectsWhatTheKernelsCannotDo) {
  // head_dim 96 runs on the 128 kernel (padded); 72 is no multiple of 16; a bf16 query on f16
  // caches has no kernel.
  const CaseSpec hd96 = small_spec("hd96", 1, 16, 1, 96, 16, {10});
  EXPECT_EQ(plan_work(plan_of(hd96, 10, 4), lens_of(hd96).data(), kH100).geometry.head_dim, 128);
  const CaseSpec hd72 = small_spec("hd72", 1, 16, 1, 72, 16, {10});
  EXPECT_THROW(plan_work(plan_of(hd72, 10, 4), lens_of(hd72).data(), kH100), Error);
  EXPECT_THROW(plan_work(plan_of(hd96, 10, 4), lens_of(hd96).data(), kH100, {}, -1, {DType::kBF16, DType::kF16}), Error);
  const WorkPlan fp8 = plan_work(plan_of(hd96, 10, 4), lens_of(hd96).data(), kH100, {}, -1, {DType::kF16, DType::kF8E5M2});
  EXPECT_EQ(fp8.dtype, KernelDtype::kFp8F16);
  EXPECT_TRUE(fp8.fp8_e5m2);
  EXPECT_EQ(fp8.geometry.elem_bytes, 1);
  const CaseSpec ok = small_spec("ok", 2, 16, 1, 128, 16, {10, 20});
  std::vector<std::int32_t> bad = {10, 65};  // > max_blocks_per_req * block_size = 64
  EXPECT_THROW(plan_work(plan_of(ok, 10, 4), bad.data(), kH100), Error);
  bad = {-1, 3};
  EXPECT_THROW(plan_work(plan_of(ok, 10, 4), bad.data(), kH100), Error);
}

// ---- the kernel's tiling arithmetic -----------------------------------------------------

TEST(CudaTiling, SwizzleIsABijectionPerRowAndConflictFreeForLdmatrix) {
  for (int hd : {64, 128, 256}) {
    const TileGeometry g{hd, 1};
    for (int row = 0; row < kTileTokens; ++row) {
      std::set<int> offsets;
      for (int c = 0; c < g.chunks_per_row(); ++c) {
        const int off = swizzled_offset(g, row, c);
        EXPECT_EQ(off % 16, 0);
        EXPECT_GE(off, row * g.row_bytes());
        EXPECT_LT(off, (row + 1) * g.row_bytes());
        offsets.insert(off);
      }
      EXPECT_EQ(static_cast<int>(offsets.size()), g.chunks_per_row());
    }
    // An 8x8 ldmatrix reads 8 consecutive rows (8-aligned) of one logical piece: 8 distinct
    // 16-byte bank groups (128 bytes = all 32 banks).
    for (int row0 = 0; row0 < kTileTokens; row0 += 8)
      for (int c = 0; c < g.chunks_per_row(); ++c) {
        std::set<int> groups;
        for (int r = 0; r < 8; ++r) groups.insert((swizzled_offset(g, row0 + r, c) / 16) % 8);
        EXPECT_EQ(groups.size(), 8u) << "hd " << hd << " row0 " << row0 << " piece " << c;
      }
  }
}

TEST(CudaTiling, ProducerWritesEveryPieceOfEveryRowOnce) {
  for (int hd : {64, 128, 256}) {
    const TileGeometry g{hd, 1};
    std::vector<int> hits(kTileTokens * g.chunks_per_row(), 0);
    for (int pass = 0; pass < g.passes(); ++pass) {
      const int half = producer_slot(g, pass, 0).row >> 5;
      for (int lane = 0; lane < 32; ++lane) {
        const ProducerSlot s = producer_slot(g, pass, lane);
        ASSERT_LT(s.row, kTileTokens);
        ASSERT_LT(s.chunk, g.chunks_per_row());
        EXPECT_EQ(s.row >> 5, half) << "a pass must read one half of the resolved offsets";
        ++hits[s.row * g.chunks_per_row() + s.chunk];
      }
    }
    for (int h : hits) EXPECT_EQ(h, 1) << "hd " << hd;
  }
}

// The producer's gather, emulated with the kernel's functions: slot (tile row r, piece c) of
// tile `tile` of an item holds K[token t0 + r] piece c, or zeros past the item's range.
TEST(CudaTiling, GatherPlacesTheRightPageRows) {
  const int bs = 16;
  const std::int64_t max_blocks = 20, num_blocks = 50, kvh = 3, hd = 64;
  std::vector<std::int32_t> table(2 * max_blocks);
  for (std::size_t i = 0; i < table.size(); ++i) table[i] = static_cast<std::int32_t>((i * 37 + 11) % num_blocks);
  const std::int64_t page_stride = bs * kvh * hd + 8, row_stride = kvh * hd, head_stride = hd;  // padded pages
  const TileGeometry g{static_cast<int>(hd), 1};
  const WorkItem w{1, 2, 0, 16, 48, 48 + 100, 147, -1, -1};  // request 1, kv head 2, tokens [48, 148)
  ASSERT_EQ(item_tiles(w), 2);
  for (int tile = 0; tile < item_tiles(w); ++tile) {
    const std::int64_t t0 = w.token_begin + tile * kTileTokens;
    for (int pass = 0; pass < g.passes(); ++pass)
      for (int lane = 0; lane < 32; ++lane) {
        const ProducerSlot s = producer_slot(g, pass, lane);
        const std::int64_t t = t0 + s.row;
        if (t >= w.token_end) continue;  // zero-filled
        const std::int64_t page = lookup_page(table.data(), max_blocks, num_blocks, bs, w.batch, t);
        ASSERT_GE(page, 0);
        EXPECT_EQ(page, table[w.batch * max_blocks + t / bs]);
        const std::int64_t off = row_offset(page, t % bs, w.kv_head, page_stride, row_stride, head_stride) + 8 * s.chunk;
        EXPECT_EQ(off, page * page_stride + (t % bs) * row_stride + 2 * head_stride + 8 * s.chunk);
      }
  }
  std::vector<std::int32_t> bad = table;
  bad[1 * max_blocks + 3] = static_cast<std::int32_t>(num_blocks);
  EXPECT_EQ(lookup_page(bad.data(), max_blocks, num_blocks, bs, 1, 3 * bs + 5), -1);
  bad[1 * max_blocks + 3] = -4;
  EXPECT_EQ(lookup_page(bad.data(), max_blocks, num_blocks, bs, 1, 3 * bs), -1);
}

// The producer's per-lane address stream (ProducerStream) against the page lookup, row by
// row, across tiles and pages: power-of-two and other block sizes (division fallback),
// block sizes below rows_per_pass, items starting inside a page (windows), bad page ids.
TEST(CudaTiling, ProducerStreamFollowsThePages) {
  for (int hd : {64, 128, 256})
    for (int bs : {1, 3, 16, 24, 64, 128}) {
      const TileGeometry g{hd, 1};
      const std::int64_t max_blocks = 400, num_blocks = 97, kvh = 2;
      std::vector<std::int32_t> table(2 * max_blocks);
      for (std::size_t i = 0; i < table.size(); ++i) table[i] = static_cast<std::int32_t>((i * 37 + 11) % num_blocks);
      table[max_blocks + 7] = -3;  // a bad page of request 1
      std::vector<std::uint16_t> cache(1);
      KernelParams p;
      p.key_cache = cache.data();
      p.value_cache = cache.data() + 1;
      p.k_row = kvh * hd + 8, p.k_page = bs * p.k_row + 16, p.k_head = hd;  // padded rows and pages
      p.v_row = kvh * hd, p.v_page = bs * p.v_row, p.v_head = hd;
      p.block_table = table.data();
      p.max_blocks_per_req = max_blocks;
      p.num_blocks = num_blocks;
      p.block_size = bs;
      p.head_dim = hd;
      p.block_shift = block_shift_of(bs);
      EXPECT_EQ(p.block_shift >= 0, (bs & (bs - 1)) == 0);
      for (std::int64_t begin : {std::int64_t{0}, std::int64_t{5}, std::int64_t{bs}, std::int64_t{3 * bs + 1}}) {
        const std::int64_t end = std::min<std::int64_t>(begin + 150, max_blocks * bs);
        const WorkItem w{1, 1, 0, 16, begin, end, end - 1, -1, -1};
        for (int lane = 0; lane < 32; ++lane) {
          ProducerStream<std::uint16_t> st;
          bool bad_seen = !st.begin(p, w, g, lane), bad_touched = false;
          const std::int64_t piece = lane % g.chunks_per_row();
          for (std::int64_t t = begin + lane / g.chunks_per_row(); t < end; t += g.rows_per_pass()) {
            const std::int64_t id = table[max_blocks + t / bs];
            if (id < 0) {
              EXPECT_EQ(st.bytes, 0u) << "bs " << bs << " t " << t;
              bad_touched = true;
            } else {
              ASSERT_EQ(st.bytes, 16u) << "bs " << bs << " t " << t;
              ASSERT_EQ(st.k - static_cast<const std::uint16_t*>(p.key_cache), id * p.k_page + (t % bs) * p.k_row + p.k_head + 8 * piece) << "hd " << hd << " bs " << bs << " t " << t;
              ASSERT_EQ(st.v - static_cast<const std::uint16_t*>(p.value_cache), id * p.v_page + (t % bs) * p.v_row + p.v_head + 8 * piece);
            }
            if (t + g.rows_per_pass() < end && !st.advance(p)) bad_seen = true;
          }
          EXPECT_EQ(bad_seen, bad_touched) << "a lane reports exactly the bad pages it enters: bs " << bs << " begin " << begin;
        }
      }
    }
}

TEST(CudaTiling, OffsetsAre64Bit) {
  // A 1 M-page cache of 128-token pages, 8 kv heads: offsets far past 2^31 elements.
  const std::int64_t off = row_offset(1'000'000, 127, 7, 128 * 8 * 128, 8 * 128, 128);
  EXPECT_EQ(off, 1'000'000LL * 131072 + 127 * 1024 + 7 * 128);
}

TEST(CudaTiling, FragmentSourcesCoverTheWarpsTokens) {
  for (int rf : {1, 4}) {
    const TileGeometry g{128, rf};
    for (int warp = 0; warp < kComputeWarps; ++warp) {
      const int tw = warp_token_slice(g, warp);
      EXPECT_EQ(warp_row_frag(g, warp) * g.token_warps() + tw, warp);
      std::set<int> k_rows, v_rows;
      for (int j = 0; j < g.tokens_per_warp() / 8; ++j)
        for (int lane = 0; lane < 32; ++lane) {
          const ProducerSlot s = k_fragment_source(g, tw, j, 0, lane);
          k_rows.insert(s.row);
          EXPECT_EQ(s.chunk, lane >> 3);
          for (int e = 0; e < 4; ++e) {
            const int col = score_column(g, tw, j, lane & 3, e);
            EXPECT_GE(col, tw * g.tokens_per_warp());
            EXPECT_LT(col, (tw + 1) * g.tokens_per_warp());
          }
        }
      for (int q = 0; q < g.tokens_per_warp() / 16; ++q)
        for (int lane = 0; lane < 32; ++lane) v_rows.insert(v_fragment_source(g, tw, q, 0, lane).row);
      EXPECT_EQ(static_cast<int>(k_rows.size()), g.tokens_per_warp());
      EXPECT_EQ(k_rows, v_rows);
      EXPECT_EQ(*k_rows.begin(), tw * g.tokens_per_warp());
    }
  }
}

}  // namespace
}  // namespace mixpa::cuda
