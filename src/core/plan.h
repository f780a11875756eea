// The plan: a pure function of the shapes (SPEC §3). The single source of q_tile, q_loop,
// logical blocks, the hardware-block stride assignment and the pipe geometry that every
// executor reads; executors never decide these themselves.
#pragma once

#include <cstdint>
#include <string>

#include "core/problem.h"

namespace mixpa {

inline constexpr int kDefaultHwBlocks = 24;  // the origin's fixed block_num
inline constexpr int kDefaultPipeDepth = 2;  // the origin's FIFO depth
inline constexpr int kSmallQTile = 16;
inline constexpr int kLargeQTile = 64;

// Slot sizes of the three pipes of one hardware block, and their depth.
struct PipeGeometry {
  int depth = kDefaultPipeDepth;
  std::int64_t sij_slot_bytes = 0;  // C2V fp32 [q_tile, block_size] scores
  std::int64_t pij_slot_bytes = 0;  // V2C bf16 [q_tile, block_size] probabilities
  std::int64_t oi_slot_bytes = 0;   // C2V fp32 [q_tile, head_dim] partial outputs
  std::int64_t fifo_bytes(std::int64_t slot_bytes, int hw_blocks) const { return slot_bytes * depth * hw_blocks; }
};

// One unit of SPMD work: a tile of up to q_tile query rows of one request, all sharing one kv
// head. The rows of a kv head are its (new token p, group head g) pairs, k = p * group + g
// (q_len 1: just the group's heads), so every row of a tile shares one read of each K/V page.
struct LogicalBlock {
  std::int64_t index = 0;
  std::int64_t batch = 0;
  std::int64_t kv_head = 0;
  std::int64_t head_begin = 0;  // q_len 1: first query head of the tile (= kv_head * group + row_begin)
  std::int64_t row_begin = 0;   // first (p, g) pair of the tile among its kv head's q_len * group
  int rows = 0;                 // valid rows (<= q_tile): rows past the kv head's pairs are masked
};

// The query a tile row holds: new token `token` (0..q_len-1) of query head `head`.
struct TileRow {
  std::int64_t token = 0;
  std::int64_t head = 0;
};

struct Plan {
  Shape shape;
  float scale = 1.0f;
  int q_tile = kSmallQTile;             // 64 if a kv head has >= 64 query rows (q_len * group), else 16
  std::int64_t tiles_per_kv_head = 0;   // ceil(q_len * group / q_tile)
  std::int64_t q_loop = 0;              // tiles per request = num_kv_heads * tiles_per_kv_head
  std::int64_t total_logical_blocks = 0;  // batch * q_loop
  int hw_blocks = kDefaultHwBlocks;
  PipeGeometry pipes;

  // Logical block i = (batch_idx = i / q_loop, q_tile_idx = i % q_loop), as the origin numbers it.
  LogicalBlock logical_block(std::int64_t i) const;

  // Row r (< lb.rows) of a logical block: pair k = row_begin + r is (token k / group, head
  // kv_head * group + k % group).
  TileRow tile_row(const LogicalBlock& lb, std::int64_t r) const {
    const std::int64_t group = shape.group(), k = lb.row_begin + r;
    return {k / group, lb.kv_head * group + k % group};
  }

  // Hardware block k runs logical blocks k, k + hw_blocks, k + 2*hw_blocks, ...
  std::int64_t logical_block_count(int hw_block) const;

  std::string to_json() const;  // for traces and --verbose output
};

// q_tile for a kv head of `rows` query rows (q_len * group; SPEC §3, applied per kv head for GQA).
int choose_q_tile(std::int64_t rows);

// Requires a validated shape; hw_blocks >= 1 and pipe_depth >= 1 (checked by validate_options).
Plan make_plan(const Shape& shape, float scale, int hw_blocks = kDefaultHwBlocks, int pipe_depth = kDefaultPipeDepth);

// The stride loop of one hardware block over its logical blocks (CUTLASS TileScheduler shape):
//   for (BlockScheduler s(plan, k); s.is_valid(); ++s) run(s.block());
class BlockScheduler {
 public:
  BlockScheduler(const Plan& plan, int hw_block) : plan_(&plan), current_(hw_block) {}
  bool is_valid() const { return current_ < plan_->total_logical_blocks; }
  BlockScheduler& operator++() { current_ += plan_->hw_blocks; return *this; }
  LogicalBlock block() const { return plan_->logical_block(current_); }

 private:
  const Plan* plan_;
  std::int64_t current_;
};

}  // namespace mixpa
