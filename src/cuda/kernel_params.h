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
// head, up to q_tile query heads). The range is the block's visible tokens (a window skips
// the pages before it) or a split-KV chunk of them, and may be empty (context 0: zeros).
// partial < 0: the item is its block's only chunk and writes `out` directly; else it writes
// partial slot `partial`, and the CTA that finishes merge item `merge` last merges it.
// Tokens are 64-bit: token_end - 1 + 63 must not wrap near 2^31.
struct WorkItem {
  std::int32_t batch;
  std::int32_t kv_head;
  std::int32_t head_begin;
  std::int32_t rows;         // valid query rows, 1..q_tile
  std::int64_t token_begin;
  std::int64_t token_end;
  std::int64_t position;     // the query row's position (context_len - 1): ALiBi's t - pos
  std::int32_t partial;
  std::int32_t merge;        // index into merges when split, else -1
};
static_assert(sizeof(WorkItem) == 48);

// A logical block that was split: partial slots [first_partial, first_partial + num_partials)
// are merged in that (chunk) order into out (and lse) by the last of its items to finish,
// which it learns from merge_counters[index] (reset to 0 by the merger: graphs replay).
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
// The variant (SPEC §6) in the kernel's log2 units: x2 = log2(e) * x.
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
  std::int32_t block_shift = -1;               // log2(block_size) when a power of two, else -1
  std::int32_t num_heads = 0;
  float scale_log2 = 0.0f;                     // scale * log2(e): the kernel works in exp2
  // Soft-cap c > 0: x = c tanh(scale q.k / c), i.e. x2 = softcap_log2 * tanh(softcap_pre * q.k)
  float softcap_pre = 0.0f;                    // scale / c
  float softcap_log2 = 0.0f;                   // c * log2(e); 0 = no soft-cap
  const float* alibi_slopes = nullptr;         // [num_heads] natural units, or nullptr
  const float* sinks = nullptr;                // [num_heads] natural-log units, or nullptr
  std::int32_t q_tile = 16;
  std::int32_t stages = 0;
  const WorkItem* items = nullptr;
  std::int32_t num_items = 0;
  const MergeItem* merges = nullptr;
  std::int32_t num_merges = 0;
  unsigned int* merge_counters = nullptr;      // [num_merges], 0 between launches
  float* out = nullptr;                        // [batch, num_heads, head_dim]
  float* lse = nullptr;                        // [batch, num_heads] natural log, or nullptr
  float* part_o = nullptr;                     // [num_partials, q_tile, head_dim] unnormalised
  float* part_m = nullptr;                     // [num_partials, q_tile] running max (log2 units)
  float* part_l = nullptr;                     // [num_partials, q_tile] sum of rounded p
  int* error_flag = nullptr;
};

}  // namespace mixpa::cuda
