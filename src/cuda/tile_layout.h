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

// Shape of one instantiation: head_dim, row fragments (q_tile / 16) and the bytes of a cache
// element in the ring (2: bf16 / f16 read in place; 1: fp8, dequantised by the compute warps
// into a 16-bit tile of the same shape, math()).
struct TileGeometry {
  int head_dim = 128;
  int row_frags = 1;   // 1 (q_tile 16) or 4 (q_tile 64)
  int elem_bytes = 2;  // of the ring's K and V rows

  MIXPA_HOST_DEVICE constexpr int chunks_per_row() const { return head_dim * elem_bytes / 16; }  // 16-byte pieces
  MIXPA_HOST_DEVICE constexpr int elems_per_chunk() const { return 16 / elem_bytes; }
  MIXPA_HOST_DEVICE constexpr int row_bytes() const { return head_dim * elem_bytes; }
  MIXPA_HOST_DEVICE constexpr int tile_bytes() const { return kTileTokens * row_bytes(); }
  MIXPA_HOST_DEVICE constexpr int stage_bytes() const { return 2 * tile_bytes(); }  // K tile, then V tile
  // The XOR swizzle's row mask: 7 (8 rows) unless a row has fewer than 8 pieces.
  MIXPA_HOST_DEVICE constexpr int swizzle_mask() const { return (chunks_per_row() < 8 ? chunks_per_row() : 8) - 1; }
  // The 16-bit tiles the mma fragments are loaded from (the ring itself unless it holds fp8).
  MIXPA_HOST_DEVICE constexpr TileGeometry math() const { return {head_dim, row_frags, 2}; }
  // Shared memory of the dequantised K and V tiles (fp8 rings only).
  MIXPA_HOST_DEVICE constexpr int dequant_bytes() const { return elem_bytes == 1 ? math().stage_bytes() : 0; }
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
  return row * g.row_bytes() + ((chunk ^ (row & g.swizzle_mask())) * 16);
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

// Dynamic shared memory of one CTA: barriers, softmax stats, merge buffer, the dequantised
// K and V tiles (fp8 only), then the ring.
struct SmemLayout {
  static constexpr int kFullBarriers = 0;                      // u64 [kMaxStages]
  static constexpr int kEmptyBarriers = 8 * kMaxStages;        // u64 [kMaxStages]
  static constexpr int kStatsM = 16 * kMaxStages;              // f32 [kComputeWarps][64]
  static constexpr int kStatsL = kStatsM + 4 * kComputeWarps * 64;
  static constexpr int kSplitFlag = kStatsL + 4 * kComputeWarps * 64;  // u32: "this CTA merges"
  static constexpr int kMergeBuffer = kSplitFlag + 16;
  int merge_bytes = 0;
  int dequant_bytes = 0;
  int stages = 0;
  int stage_bytes = 0;
  MIXPA_HOST_DEVICE constexpr int dequant() const { return (kMergeBuffer + merge_bytes + 127) / 128 * 128; }
  MIXPA_HOST_DEVICE constexpr int ring() const { return dequant() + dequant_bytes; }
  MIXPA_HOST_DEVICE constexpr int stage(int s) const { return ring() + s * stage_bytes; }
  MIXPA_HOST_DEVICE constexpr int total() const { return ring() + stages * stage_bytes; }
};

MIXPA_HOST_DEVICE constexpr SmemLayout smem_layout(TileGeometry g, int stages) {
  SmemLayout l;
  l.merge_bytes = g.merge_buffer_bytes();
  l.dequant_bytes = g.dequant_bytes();
  l.stages = stages;
  l.stage_bytes = g.stage_bytes();
  return l;
}

// Tiles of a work item: ceil(tokens / kTileTokens); both the producer and the cube warps
// iterate exactly this many, which keeps the pipe's push and pop counts equal.
MIXPA_HOST_DEVICE constexpr int item_tiles(const WorkItem& w) {
  const std::int64_t n = w.token_end - w.token_begin;
  return n > 0 ? static_cast<int>((n + kTileTokens - 1) / kTileTokens) : 0;
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

// log2(block_size) when it is a power of two, else -1 (the stream then divides, once per item).
constexpr int block_shift_of(std::int64_t block_size) {
  int s = 0;
  while ((std::int64_t{1} << s) < block_size) ++s;
  return (std::int64_t{1} << s) == block_size ? s : -1;
}

// The producer lane's address stream. Lane `lane` copies 16-byte piece lane % chunks_per_row
// of the rows lane / chunks_per_row + k * rows_per_pass (k = 0, 1, ...) of the item's tokens,
// continuing from one stage to the next. It holds pointers to its piece of its current K and
// V row (registers) and advances them by rows_per_pass rows per pass; the block table (int32
// or int64) is read only when the stream enters a page (no division per row: one per item, a
// shift for power-of-two block sizes), and the next page's id is loaded one page ahead, so
// the load has a page's worth of passes to land. A page id outside [0, num_blocks) turns the
// stream's copies into zero-fills (bytes = 0, addresses inside page 0) until the next page,
// and open_page reports it; pages past the item's last are never read from the table. A
// lane whose piece lies past the tensors' head_dim (a kernel padded to a larger head_dim)
// always zero-fills, from its row's first piece. T: the cache element (16- or 8-bit).
template <class T>
struct ProducerStream {
  static constexpr int kPieceElems = 16 / static_cast<int>(sizeof(T));
  const T* k = nullptr;          // this lane's piece of its current K row
  const T* v = nullptr;
  std::int64_t k_step = 0, v_step = 0;  // rows_per_pass rows
  std::int64_t k_lane = 0, v_lane = 0;  // kv_head * head stride + kPieceElems * piece
  const std::int32_t* table_row = nullptr;
  const std::int64_t* table_row64 = nullptr;  // an int64 table (table_row is then unused)
  std::int64_t pidx = 0;         // table column of the current page
  std::int64_t last_pidx = -1;   // the item's last table column
  std::int64_t next_pidx = -1;   // the column whose id next_id holds (prefetched)
  std::int64_t next_id = -1;
  int rin = 0;                   // row of the current token in its page
  int rpp = 1;
  std::uint32_t bytes = 0;       // 16, or 0: zero-fill (bad page, past the item's last page, padding piece)
  bool bad = false;              // a bad page was entered (sticky: the producer raises the flag once)
  bool pad = false;              // the lane's piece is past head_dim: zeros only

  MIXPA_HOST_DEVICE std::int64_t table(std::int64_t col) const { return table_row64 ? table_row64[col] : table_row[col]; }

  // Starts the stream at the lane's first token of `w` (w non-empty); false: its page is bad.
  MIXPA_HOST_DEVICE bool begin(const KernelParams& p, const WorkItem& w, TileGeometry g, int lane) {
    rpp = g.rows_per_pass();
    const int piece = lane % g.chunks_per_row();
    pad = piece * kPieceElems >= p.head_dim;
    const int read_piece = pad ? 0 : piece;
    const std::int64_t t = w.token_begin + lane / g.chunks_per_row();
    k_step = rpp * p.k_row, v_step = rpp * p.v_row;
    k_lane = w.kv_head * p.k_head + kPieceElems * read_piece, v_lane = w.kv_head * p.v_head + kPieceElems * read_piece;
    const std::int64_t row0 = static_cast<std::int64_t>(w.batch) * p.max_blocks_per_req;
    table_row = p.block_table64 ? nullptr : p.block_table + row0;
    table_row64 = p.block_table64 ? p.block_table64 + row0 : nullptr;
    if (p.block_shift >= 0) {
      pidx = t >> p.block_shift;
      last_pidx = (w.token_end - 1) >> p.block_shift;
    } else {
      pidx = t / p.block_size;
      last_pidx = (w.token_end - 1) / p.block_size;
    }
    rin = static_cast<int>(t - pidx * p.block_size);
    next_pidx = -1;
    bad = false;
    return open_page(p);
  }

  // One pass on: the lane's next row. false: the stream entered a bad page.
  MIXPA_HOST_DEVICE bool advance(const KernelParams& p) { return skip(p, 1); }

  // n passes on, n * rows_per_pass rows, all but the last inside the current page (the fast
  // path's condition, stays_in_page). false: the stream entered a bad page.
  MIXPA_HOST_DEVICE bool skip(const KernelParams& p, int n) {
    k += n * k_step, v += n * v_step;
    rin += n * rpp;
    if (rin < p.block_size) return true;
    do {  // once, unless block_size < rows_per_pass
      rin -= p.block_size;
      ++pidx;
    } while (rin >= p.block_size);
    return open_page(p);
  }

  // Whether the rows of the next n passes all lie in the current page (then a tile's copies
  // need no page checks: pointers + pass * step).
  MIXPA_HOST_DEVICE bool stays_in_page(const KernelParams& p, int n) const { return rin + (n - 1) * rpp < p.block_size; }

  MIXPA_HOST_DEVICE bool open_page(const KernelParams& p) {
    const T* key = static_cast<const T*>(p.key_cache);
    const T* value = static_cast<const T*>(p.value_cache);
    if (pidx > last_pidx) {  // past the item: nothing to read (the rows are masked)
      bytes = 0;
      k = key, v = value;
      return true;
    }
    const std::int64_t id = pidx == next_pidx ? next_id : table(pidx);
    next_pidx = pidx + 1;
    next_id = next_pidx <= last_pidx ? table(next_pidx) : -1;
    const bool good = id >= 0 && id < p.num_blocks;
    const std::int64_t page = good ? id : 0;
    bytes = good && !pad ? 16u : 0u;
    bad = bad || !good;
    k = key + (page * p.k_page + rin * p.k_row + k_lane);
    v = value + (page * p.v_page + rin * p.v_row + v_lane);
    return good;
  }
};

// Smem destination (byte offset in the K tile) of pass `pass` for a lane: the swizzle repeats
// every swizzle_mask() + 1 rows (8 unless a row has fewer pieces), so a lane needs
// swizzle_period() offsets and adds swizzle_period() * rows_per_pass() rows per period.
MIXPA_HOST_DEVICE constexpr int swizzle_period(TileGeometry g) {
  return (g.swizzle_mask() + 1) / g.rows_per_pass() > 0 ? (g.swizzle_mask() + 1) / g.rows_per_pass() : 1;
}
MIXPA_HOST_DEVICE constexpr int swizzle_period_bytes(TileGeometry g) { return swizzle_period(g) * g.rows_per_pass() * g.row_bytes(); }

}  // namespace mixpa::cuda
