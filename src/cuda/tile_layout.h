// Geometry of the shared-memory ring and of the tiles in it, as pure functions that the
// kernel (nvcc) and the host planner and its CPU tests (g++) share. Every address the
// producer writes and the cube warps read is computed here, so the CPU tests can emulate
// the tiling exactly (tests/cuda: which (page, row) lands in which tile slot).
#pragma once

#include <cstdint>

#include "cuda/kernel_params.h"

#if defined(__CUDACC__)
#define MIXPA_HOST_DEVICE __host__ __device__
#else
#define MIXPA_HOST_DEVICE
#endif

namespace mixpa::cuda {

// Shape of one instantiation: head_dim and row fragments (q_tile / 16).
struct TileGeometry {
  int head_dim = 128;
  int row_frags = 1;  // 1 (q_tile 16) or 4 (q_tile 64)

  MIXPA_HOST_DEVICE constexpr int chunks_per_row() const { return head_dim / 8; }  // 16-byte pieces
  MIXPA_HOST_DEVICE constexpr int row_bytes() const { return head_dim * 2; }
  MIXPA_HOST_DEVICE constexpr int tile_bytes() const { return kTileTokens * row_bytes(); }
  MIXPA_HOST_DEVICE constexpr int stage_bytes() const { return 2 * tile_bytes(); }  // K tile, then V tile
  // Compute warps split a tile's tokens when q_tile is 16 and its rows when q_tile is 64.
  MIXPA_HOST_DEVICE constexpr int token_warps() const { return kComputeWarps / row_frags; }
  MIXPA_HOST_DEVICE constexpr int tokens_per_warp() const { return kTileTokens / token_warps(); }
  // The producer warp copies rows_per_pass rows per instruction (lanes over the 16-byte pieces).
  MIXPA_HOST_DEVICE constexpr int rows_per_pass() const { return 32 / chunks_per_row(); }
  MIXPA_HOST_DEVICE constexpr int passes() const { return kTileTokens / rows_per_pass(); }
  MIXPA_HOST_DEVICE constexpr int merge_buffer_bytes() const {
    return token_warps() > 1 ? 16 * head_dim * 4 : 0;  // one 16-row fp32 O fragment set
  }
};

// Byte offset of 16-byte piece `chunk` of tile row `row`. The XOR swizzle spreads the 8 rows
// an ldmatrix reads (8 consecutive tokens, same logical piece) over 8 distinct bank groups.
MIXPA_HOST_DEVICE constexpr int swizzled_offset(TileGeometry g, int row, int chunk) {
  return row * g.row_bytes() + ((chunk ^ (row & 7)) * 16);
}

// Which tile row and piece producer lane `lane` copies in pass `pass`.
struct ProducerSlot {
  int row;
  int chunk;
};
MIXPA_HOST_DEVICE constexpr ProducerSlot producer_slot(TileGeometry g, int pass, int lane) {
  return {pass * g.rows_per_pass() + lane / g.chunks_per_row(), lane % g.chunks_per_row()};
}

// Fragment addressing of the compute warps (lane = 4 g + t), shared with the CPU emulation test.
// A compute warp `warp` works on row fragment warp / token_warps and on the token slice
// [tw * tokens_per_warp, (tw + 1) * tokens_per_warp) of each stage, tw = warp % token_warps.
MIXPA_HOST_DEVICE constexpr int warp_row_frag(TileGeometry g, int warp) { return warp / g.token_warps(); }
MIXPA_HOST_DEVICE constexpr int warp_token_slice(TileGeometry g, int warp) { return warp % g.token_warps(); }

// ldmatrix.x4 of K for S tile j (8 tokens) and k-step pair pp (dims 32pp..32pp+31): lane
// supplies the address of row (lane & 7) of matrix (lane >> 3) = piece 4pp + (lane >> 3).
// Registers: b[0], b[1] = B of k-step 2pp, b[2], b[3] = B of k-step 2pp + 1.
MIXPA_HOST_DEVICE constexpr ProducerSlot k_fragment_source(TileGeometry g, int tw, int j, int pp, int lane) {
  return {tw * g.tokens_per_warp() + 8 * j + (lane & 7), 4 * pp + (lane >> 3)};
}

// ldmatrix.x4.trans of V for P.V k-step q (16 tokens) and dim pair d (dims 16d..16d+15):
// matrix mi = lane >> 3 holds tokens +8 (mi & 1) and piece 2d + (mi >> 1).
// Registers: b[0], b[1] = B of n-tile 2d, b[2], b[3] = B of n-tile 2d + 1.
MIXPA_HOST_DEVICE constexpr ProducerSlot v_fragment_source(TileGeometry g, int tw, int q, int d, int lane) {
  return {tw * g.tokens_per_warp() + 16 * q + (lane & 7) + 8 * ((lane >> 3) & 1), 2 * d + (lane >> 4)};
}

// Tile-local token column of element e (0..3) of S tile j held by a lane with t = lane & 3.
MIXPA_HOST_DEVICE constexpr int score_column(TileGeometry g, int tw, int j, int t, int e) {
  return tw * g.tokens_per_warp() + 8 * j + 2 * t + (e & 1);
}

// Dynamic shared memory of one CTA: barriers, softmax stats, merge buffer, then the ring.
struct SmemLayout {
  static constexpr int kFullBarriers = 0;                      // u64 [kMaxStages]
  static constexpr int kEmptyBarriers = 8 * kMaxStages;        // u64 [kMaxStages]
  static constexpr int kStatsM = 16 * kMaxStages;              // f32 [kComputeWarps][64]
  static constexpr int kStatsL = kStatsM + 4 * kComputeWarps * 64;
  static constexpr int kMergeBuffer = kStatsL + 4 * kComputeWarps * 64;
  int merge_bytes = 0;
  int stages = 0;
  int stage_bytes = 0;
  MIXPA_HOST_DEVICE constexpr int ring() const { return (kMergeBuffer + merge_bytes + 127) / 128 * 128; }
  MIXPA_HOST_DEVICE constexpr int stage(int s) const { return ring() + s * stage_bytes; }
  MIXPA_HOST_DEVICE constexpr int total() const { return ring() + stages * stage_bytes; }
};

MIXPA_HOST_DEVICE constexpr SmemLayout smem_layout(TileGeometry g, int stages) {
  SmemLayout l;
  l.merge_bytes = g.merge_buffer_bytes();
  l.stages = stages;
  l.stage_bytes = g.stage_bytes();
  return l;
}

// Tiles of a work item: ceil(tokens / kTileTokens); both the producer and the cube warps
// iterate exactly this many, which keeps the pipe's push and pop counts equal.
MIXPA_HOST_DEVICE constexpr int item_tiles(const WorkItem& w) {
  const int n = w.token_end - w.token_begin;
  return n > 0 ? (n + kTileTokens - 1) / kTileTokens : 0;
}

// The page holding token `t` of request `batch`, or -1 when the page id is outside
// [0, num_blocks): the kernel then raises kErrorPageOutOfRange and loads zeros, never forming
// the out-of-range address. The table column t / block_size is < max_blocks_per_req because
// token_end <= context_len <= max_blocks_per_req * block_size (checked on the host).
MIXPA_HOST_DEVICE constexpr std::int64_t lookup_page(const std::int32_t* block_table, std::int64_t max_blocks_per_req,
                                                     std::int64_t num_blocks, int block_size, std::int64_t batch,
                                                     std::int64_t t) {
  const std::int64_t page = block_table[batch * max_blocks_per_req + t / block_size];
  return (page < 0 || page >= num_blocks) ? -1 : page;
}

// 64-bit element offset of row `row` of `page` for `kv_head`.
MIXPA_HOST_DEVICE constexpr std::int64_t row_offset(std::int64_t page, std::int64_t row, std::int64_t kv_head,
                                                    std::int64_t page_stride, std::int64_t row_stride,
                                                    std::int64_t head_stride) {
  return page * page_stride + row * row_stride + kv_head * head_stride;
}

}  // namespace mixpa::cuda
