// Plan construction: q_tile / q_loop / logical blocks / pipe geometry from the shapes alone.
#include "core/plan.h"

#include <algorithm>
#include <sstream>

namespace mixpa {

int choose_q_tile(std::int64_t rows) { return rows >= kLargeQTile ? kLargeQTile : kSmallQTile; }

Plan make_plan(const Shape& shape, float scale, int hw_blocks, int pipe_depth) {
  Plan p;
  p.shape = shape;
  p.scale = scale;
  p.q_tile = choose_q_tile(shape.rows_per_kv_head());
  p.tiles_per_kv_head = (shape.rows_per_kv_head() + p.q_tile - 1) / p.q_tile;
  p.q_loop = shape.num_kv_heads * p.tiles_per_kv_head;
  p.total_logical_blocks = shape.batch * p.q_loop;
  p.hw_blocks = hw_blocks;
  p.pipes.depth = pipe_depth;
  p.pipes.sij_slot_bytes = std::int64_t{p.q_tile} * shape.block_size * 4;
  p.pipes.pij_slot_bytes = std::int64_t{p.q_tile} * shape.block_size * 2;
  p.pipes.oi_slot_bytes = std::int64_t{p.q_tile} * shape.head_dim * 4;
  return p;
}

LogicalBlock Plan::logical_block(std::int64_t i) const {
  LogicalBlock lb;
  lb.index = i;
  lb.batch = i / q_loop;
  const std::int64_t tile = i % q_loop;
  lb.kv_head = tile / tiles_per_kv_head;
  const std::int64_t tile_in_group = tile % tiles_per_kv_head;
  const std::int64_t group = shape.group();
  lb.row_begin = tile_in_group * q_tile;
  lb.head_begin = lb.kv_head * group + lb.row_begin;
  lb.rows = static_cast<int>(std::min<std::int64_t>(q_tile, shape.rows_per_kv_head() - lb.row_begin));
  return lb;
}

std::int64_t Plan::logical_block_count(int hw_block) const {
  if (hw_block >= total_logical_blocks) return 0;
  return (total_logical_blocks - hw_block + hw_blocks - 1) / hw_blocks;
}

std::string Plan::to_json() const {
  std::ostringstream s;
  s << "{\"batch\": " << shape.batch << ", \"num_heads\": " << shape.num_heads
    << ", \"num_kv_heads\": " << shape.num_kv_heads << ", \"head_dim\": " << shape.head_dim
    << ", \"num_blocks\": " << shape.num_blocks << ", \"block_size\": " << shape.block_size
    << ", \"max_blocks_per_req\": " << shape.max_blocks_per_req << ", \"q_len\": " << shape.q_len << ", \"scale\": " << scale
    << ", \"q_tile\": " << q_tile << ", \"q_loop\": " << q_loop
    << ", \"total_logical_blocks\": " << total_logical_blocks << ", \"hw_blocks\": " << hw_blocks
    << ", \"pipe_depth\": " << pipes.depth << ", \"sij_slot_bytes\": " << pipes.sij_slot_bytes
    << ", \"pij_slot_bytes\": " << pipes.pij_slot_bytes << ", \"oi_slot_bytes\": " << pipes.oi_slot_bytes << "}";
  return s.str();
}

}  // namespace mixpa
