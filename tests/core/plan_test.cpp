// The plan: q_tile / q_loop / logical blocks / stride assignment / pipe geometry.
#include <gtest/gtest.h>

#include <set>

#include "core/plan.h"

namespace mixpa {
namespace {

Shape shape(std::int64_t batch, std::int64_t heads, std::int64_t kv, std::int64_t dim, std::int64_t bs) {
  Shape s;
  s.batch = batch; s.num_heads = heads; s.num_kv_heads = kv; s.head_dim = dim; s.block_size = bs;
  s.num_blocks = 100; s.max_blocks_per_req = 10;
  return s;
}

TEST(Plan, OriginCase1) {
  const Plan p = make_plan(shape(256, 16, 1, 128, 128), 1.0f);
  EXPECT_EQ(p.q_tile, 16);
  EXPECT_EQ(p.q_loop, 1);
  EXPECT_EQ(p.total_logical_blocks, 256);
  EXPECT_EQ(p.hw_blocks, 24);
  EXPECT_EQ(p.pipes.depth, 2);
  EXPECT_EQ(p.pipes.sij_slot_bytes, 16 * 128 * 4);
  EXPECT_EQ(p.pipes.pij_slot_bytes, 16 * 128 * 2);
  EXPECT_EQ(p.pipes.oi_slot_bytes, 16 * 128 * 4);
  EXPECT_EQ(p.pipes.fifo_bytes(p.pipes.sij_slot_bytes, p.hw_blocks), 24 * 2 * 16 * 128 * 4);
}

TEST(Plan, OriginCase2UsesQTile64) {
  const Plan p = make_plan(shape(64, 64, 1, 128, 64), 1.0f);
  EXPECT_EQ(p.q_tile, 64);
  EXPECT_EQ(p.q_loop, 1);
  EXPECT_EQ(p.total_logical_blocks, 64);
}

TEST(Plan, OddHeadsMaskSpareRows) {
  const Plan p = make_plan(shape(3, 20, 1, 128, 16), 1.0f);
  EXPECT_EQ(p.q_tile, 16);
  EXPECT_EQ(p.q_loop, 2);
  EXPECT_EQ(p.total_logical_blocks, 6);
  const LogicalBlock last = p.logical_block(5);
  EXPECT_EQ(last.batch, 2);
  EXPECT_EQ(last.head_begin, 16);
  EXPECT_EQ(last.rows, 4);
  EXPECT_EQ(p.logical_block(4).rows, 16);
}

TEST(Plan, GqaTilesStayInsideOneKvHead) {
  const Plan p = make_plan(shape(2, 32, 4, 128, 32), 1.0f);  // group 8
  EXPECT_EQ(p.q_tile, 16);
  EXPECT_EQ(p.tiles_per_kv_head, 1);
  EXPECT_EQ(p.q_loop, 4);
  for (std::int64_t i = 0; i < p.total_logical_blocks; ++i) {
    const LogicalBlock lb = p.logical_block(i);
    EXPECT_EQ(lb.rows, 8);
    EXPECT_EQ(lb.head_begin / 8, lb.kv_head);
    EXPECT_EQ(lb.batch, i / 4);
  }
  const Plan big = make_plan(shape(1, 256, 2, 64, 16), 1.0f);  // group 128 -> q_tile 64
  EXPECT_EQ(big.q_tile, 64);
  EXPECT_EQ(big.q_loop, 4);
  EXPECT_EQ(big.logical_block(3).head_begin, 128 + 64);
}

TEST(Plan, EveryHeadCoveredExactlyOnce) {
  for (std::int64_t heads : {1, 5, 16, 20, 63, 64, 65, 100, 128}) {
    for (std::int64_t kv : {1, 5}) {
      if (heads % kv) continue;
      const Plan p = make_plan(shape(3, heads, kv, 64, 16), 1.0f);
      std::multiset<std::pair<std::int64_t, std::int64_t>> seen;
      for (std::int64_t i = 0; i < p.total_logical_blocks; ++i) {
        const LogicalBlock lb = p.logical_block(i);
        ASSERT_GE(lb.rows, 1);
        ASSERT_LE(lb.rows, p.q_tile);
        for (int r = 0; r < lb.rows; ++r) {
          const std::int64_t h = lb.head_begin + r;
          ASSERT_EQ(h / (heads / kv), lb.kv_head);
          seen.insert({lb.batch, h});
        }
      }
      ASSERT_EQ(static_cast<std::int64_t>(seen.size()), 3 * heads);
      ASSERT_EQ(std::set(seen.begin(), seen.end()).size(), seen.size());
    }
  }
}

TEST(Plan, StrideAssignment) {
  const Plan p = make_plan(shape(50, 16, 1, 128, 128), 1.0f, 24);
  std::set<std::int64_t> all;
  std::int64_t total = 0;
  for (int k = 0; k < 24; ++k) {
    std::int64_t n = 0;
    for (BlockScheduler s(p, k); s.is_valid(); ++s) {
      EXPECT_EQ(s.block().index % 24, k);
      all.insert(s.block().index);
      ++n;
    }
    EXPECT_EQ(n, p.logical_block_count(k));
    total += n;
  }
  EXPECT_EQ(total, 50);
  EXPECT_EQ(all.size(), 50u);
  EXPECT_EQ(p.logical_block_count(0), 3);   // 0, 24, 48
  EXPECT_EQ(p.logical_block_count(2), 2);   // 2, 26
  const Plan few = make_plan(shape(2, 16, 1, 128, 128), 1.0f, 24);
  EXPECT_EQ(few.logical_block_count(5), 0);
}

TEST(Plan, JsonNamesTheFields) {
  const std::string j = make_plan(shape(1, 16, 1, 128, 128), 1.0f).to_json();
  EXPECT_NE(j.find("\"q_tile\": 16"), std::string::npos);
  EXPECT_NE(j.find("\"hw_blocks\": 24"), std::string::npos);
}

}  // namespace
}  // namespace mixpa
