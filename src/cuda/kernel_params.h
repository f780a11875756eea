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
// head, up to q_tile query rows). The rows of a kv head are its (new token p, group head g)
// pairs k = p * group + g (q_len 1: the group's heads); tile row r is pair
// k = head_begin + r - kv_head * group, i.e. token k / group of head kv_head * group + k % group.
// The range is the union of the rows' visible tokens (a window skips the pages before it) or
// a split-KV chunk of it, and may be empty (context 0: zeros); each row masks its own causal
// limit and window inside it.
// partial < 0: the item is its block's only chunk and writes `out` directly; else it writes
// partial slot `partial`, and the CTA that finishes merge item `merge` last merges it.
// Tokens are 64-bit: token_end - 1 + 63 must not wrap near 2^31.
struct WorkItem {
  std::int32_t batch;
  std::int32_t kv_head;
  std::int32_t head_begin;   // kv_head * group + the tile's first pair (q_len 1: its first query head)
  std::int32_t rows;         // valid query rows, 1..q_tile
  std::int64_t token_begin;
  std::int64_t token_end;
  std::int64_t position;     // the position of new token 0 (context_len - q_len); row p: position + p
  std::int32_t partial;
  std::int32_t merge;        // index into merges when split, else -1
};
static_assert(sizeof(WorkItem) == 48);

// A logical block that was split: partial slots [first_partial, first_partial + num_partials)
// are merged in that (chunk) order into out (and lse) by the last of its items to finish,
// which it learns from merge_counters[index] (reset to 0 by the merger: graphs replay).
struct MergeItem {
  std::int32_t batch;
  std::int32_t head_begin;  // as WorkItem::head_begin
  std::int32_t rows;
  std::int32_t first_partial;
  std::int32_t num_partials;
  std::int32_t kv_head;
  std::int32_t pad[2];
};
static_assert(sizeof(MergeItem) == 32);

// Error-flag bits the kernel raises (atomicOr) instead of reading out of bounds.
inline constexpr int kErrorPageOutOfRange = 1;

// The element types of one launch (SPEC §6), a template argument of the kernel. The query's
// type is the S = Q.K^T mma type; K and V reach the mma as 16-bit values:
//   kBf16   bf16 query, bf16 caches: read in place (the origin's kernel); P rounded to bf16
//   kF16    f16 query, f16 caches: mma.f16 for both products; P rounded to fp16
//   kFp8Bf16 / kFp8F16   bf16 / f16 query, fp8 caches (e4m3fn or e5m2, KernelParams::fp8_e5m2):
//           the compute warps dequantise each stage (K to the query's type, V to bf16, both
//           exact) into a 16-bit tile in shared memory; P rounded to bf16, k_scale folded into
//           the score scale, v_scale applied to the output.
enum class KernelDtype : std::int32_t { kBf16 = 0, kF16 = 1, kFp8Bf16 = 2, kFp8F16 = 3 };
inline constexpr int kNumKernelDtypes = 4;
constexpr bool is_fp8(KernelDtype d) { return d == KernelDtype::kFp8Bf16 || d == KernelDtype::kFp8F16; }
constexpr int kv_elem_bytes(KernelDtype d) { return is_fp8(d) ? 1 : 2; }

// Everything one launch reads. The query is 16-bit bits (bf16 or f16), the caches elements of
// kv_elem_bytes(dtype) bytes; strides are elements, 64-bit.
// The variant (SPEC §6) in the kernel's log2 units: x2 = log2(e) * x.
struct KernelParams {
  const std::uint16_t* query = nullptr;        // [batch, q_len, num_heads, head_dim]
  const void* key_cache = nullptr;             // [num_blocks, block_size, num_kv_heads, head_dim] (or HND strides)
  const void* value_cache = nullptr;
  std::int64_t k_page = 0, k_row = 0, k_head = 0;
  std::int64_t v_page = 0, v_row = 0, v_head = 0;
  const std::int32_t* block_table = nullptr;   // [batch, max_blocks_per_req], int32 ...
  const std::int64_t* block_table64 = nullptr; // ... or int64 (when not null; values checked as page ids)
  std::int64_t max_blocks_per_req = 0;
  std::int64_t num_blocks = 0;
  std::int32_t block_size = 0;
  std::int32_t block_shift = -1;               // log2(block_size) when a power of two, else -1
  std::int32_t num_heads = 0;
  std::int32_t head_dim = 0;                   // of the tensors: a multiple of 16 <= the kernel's (the rest padded)
  std::int32_t q_len = 1;                      // new tokens per request (1..16)
  std::int32_t group = 1;                      // num_heads / num_kv_heads
  std::int32_t fp8_e5m2 = 0;                   // fp8 dtypes: 1 = e5m2, 0 = e4m3fn
  std::int64_t window_left = -1;               // SPEC §6 window (-1: none): each row's first visible token
  float v_scale = 1.0f;                        // fp8: out = v_scale * (P.V) / l (1 otherwise)
  float scale_log2 = 0.0f;                     // scale * k_scale * log2(e): the kernel works in exp2
  // Soft-cap c > 0: x = c tanh(scale q.k / c), i.e. x2 = softcap_log2 * tanh(softcap_pre * q.k)
  float softcap_pre = 0.0f;                    // scale * k_scale / c
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
  float* out = nullptr;                        // [batch, q_len, num_heads, head_dim]
  float* lse = nullptr;                        // [batch, q_len, num_heads] natural log, or nullptr
  float* part_o = nullptr;                     // [num_partials, q_tile, kernel head_dim] unnormalised
  float* part_m = nullptr;                     // [num_partials, q_tile] running max (log2 units)
  float* part_l = nullptr;                     // [num_partials, q_tile] sum of rounded p
  int* error_flag = nullptr;
};

}  // namespace mixpa::cuda
