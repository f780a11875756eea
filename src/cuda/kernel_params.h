// The contract between the host side of executor "cuda" and its kernels: plain structs that
// both g++ and nvcc compile, so the host planner (and its CPU unit tests) never need CUDA.
#pragma once

#include <cstdint>

namespace mixpa::cuda {

inline constexpr int kTileTokens = 64;     // tokens per ring stage (one TPUSH of K and V rows)
inline constexpr int kComputeWarps = 4;    // the fused cube+vector warps
inline constexpr int kProducerWarps = 1;   // the load producer (gathers pages through the table)
inline constexpr int kThreads = 32 * (kComputeWarps + kProducerWarps);
inline constexpr int kMaxStages = 8;
inline constexpr int kMinStages = 2;

// One work item: tokens [token_begin, token_end) of one logical block (one request, one kv
// head, up to q_tile query heads). token_end <= context_lens[batch]; the range may be empty
// (context 0), which writes zeros. partial < 0: the item is its block's only chunk and writes
// `out` directly; else it writes partial slot `partial` for the merge kernel.
struct WorkItem {
  std::int32_t batch;
  std::int32_t kv_head;
  std::int32_t head_begin;
  std::int32_t rows;         // valid query rows, 1..q_tile
  std::int32_t token_begin;
  std::int32_t token_end;
  std::int32_t partial;
  std::int32_t pad;
};
static_assert(sizeof(WorkItem) == 32);

// A logical block that was split: partial slots [first_partial, first_partial + num_partials)
// are merged in that (chunk) order into out.
struct MergeItem {
  std::int32_t batch;
  std::int32_t head_begin;
  std::int32_t rows;
  std::int32_t first_partial;
  std::int32_t num_partials;
  std::int32_t pad[3];
};
static_assert(sizeof(MergeItem) == 32);

// Error-flag bits the kernel raises (atomicOr) instead of reading out of bounds.
inline constexpr int kErrorPageOutOfRange = 1;

// Everything one launch reads. Element pointers are bf16 bits; strides are elements, 64-bit.
struct KernelParams {
  const std::uint16_t* query = nullptr;        // [batch, num_heads, head_dim]
  const std::uint16_t* key_cache = nullptr;    // [num_blocks, block_size, num_kv_heads, head_dim]
  const std::uint16_t* value_cache = nullptr;
  std::int64_t k_page = 0, k_row = 0, k_head = 0;
  std::int64_t v_page = 0, v_row = 0, v_head = 0;
  const std::int32_t* block_table = nullptr;   // [batch, max_blocks_per_req]
  std::int64_t max_blocks_per_req = 0;
  std::int64_t num_blocks = 0;
  std::int32_t block_size = 0;
  std::int32_t num_heads = 0;
  float scale_log2 = 0.0f;                     // scale * log2(e): the kernel works in exp2
  std::int32_t q_tile = 16;
  std::int32_t stages = 0;
  const WorkItem* items = nullptr;
  std::int32_t num_items = 0;
  const MergeItem* merges = nullptr;
  std::int32_t num_merges = 0;
  float* out = nullptr;                        // [batch, num_heads, head_dim]
  float* part_o = nullptr;                     // [num_partials, q_tile, head_dim] unnormalised
  float* part_m = nullptr;                     // [num_partials, q_tile] running max (log2 units)
  float* part_l = nullptr;                     // [num_partials, q_tile] sum of rounded p
  int* error_flag = nullptr;
};

}  // namespace mixpa::cuda
