// Host-side planning of a cuda launch: the work items (logical block x KV chunk), the merge
// list, the ring depth and the grid, as a pure function of the plan, the context lengths and
// the device's limits. No CUDA here: the CPU tests check it on machines without a GPU.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/plan.h"
#include "core/split_kv.h"
#include "cuda/kernel_params.h"
#include "cuda/tile_layout.h"

namespace mixpa::cuda {

// A chunk reads at least this many tokens: its partial (q_tile x head_dim floats) and the
// merge stay small next to the chunk's KV bytes (16 x 128 x 4 B vs 512 x 512 B).
inline constexpr std::int64_t kMinChunkTokens = 512;

struct DeviceLimits {
  int sm_count = 132;                  // H100 SXM / H200
  int max_smem_per_block = 227 * 1024; // cudaDevAttrMaxSharedMemoryPerBlockOptin
};

// Cost model of the split choice, in token-equivalents of one CTA's time: an item costs its
// tokens plus kItemOverheadTokens (Q load, epilogue: about 1 us at ~25 GB/s per SM), and any
// split adds the merge (now inside the kernel: the last CTA of a block; budgeted as before,
// about 5 us). Estimates, to be measured (--sweep).
inline constexpr std::int64_t kItemOverheadTokens = 32;
inline constexpr std::int64_t kMergeOverheadTokens = 256;
inline constexpr int kMaxSplitsPerBlock = 64;

// Tuning knobs (defaults = the heuristic); the bench's --sweep measures alternatives.
struct WorkPlanOptions {
  int max_stages = kMaxStages;                     // cap on the ring depth (>= kMinStages)
  double items_per_sm = -1.0;                      // < 0: cost model; 0: never split; > 0: ~this many items per SM
  std::int64_t min_chunk_tokens = kMinChunkTokens;
  // Page-granular balancing (stream-K style): the blocks' pages, concatenated, are cut into
  // one equal run per CTA, so every CTA reads the same number of pages (Case1: 124.1 pages
  // each instead of 2 blocks on 124 CTAs and 1 on 8); blocks cut in two or three are merged in
  // the kernel. CTA k's items sit at k, k + grid, ... (the stride loop), padded with no-op
  // items (rows 0, no tokens). Off by default until a device measures it (bench --sweep).
  bool balance_pages = false;
};

// The element types of a problem (SPEC §6: query BF16/F16; caches BF16/F16/F8_E4M3/F8_E5M2).
struct KernelTypes {
  DType query = DType::kBF16;
  DType kv = DType::kBF16;
};

// "" when the kernels compute a query of `query` against caches of `kv`, else what they do not
// (a bf16 query with f16 caches and the reverse are the combinations left out).
std::string unsupported_types(DType query, DType kv);
// The kernel dtype for the pair; throws mixpa::Error for one unsupported_types names.
KernelDtype kernel_dtype(DType query, DType kv);
// The instantiation's head_dim for a tensor head_dim (a multiple of 16 in 16..256): 64, 128 or
// 256, the smallest that holds it (the kernel pads the rest); throws otherwise.
int kernel_head_dim(std::int64_t head_dim);

struct WorkPlan {
  TileGeometry geometry;              // the instantiation: kernel head_dim, row fragments, ring element bytes
  KernelDtype dtype = KernelDtype::kBf16;
  bool fp8_e5m2 = false;
  std::int64_t window_left = -1;
  int q_tile = 16;
  int stages = 0;
  int smem_bytes = 0;
  int grid = 0;                       // persistent CTAs: min(items, SMs)
  std::vector<WorkItem> items;        // in chunk order, grouped by logical block
  std::vector<MergeItem> merges;      // split blocks only
  std::int64_t num_partials = 0;
};

// Stages of the ring that fit the device's shared memory (at most kMaxStages); throws
// mixpa::Error when not even kMinStages fit.
int choose_stages(TileGeometry geometry, int max_smem_per_block, int max_stages = kMaxStages);

// A fixed split target: no split when the logical blocks already fill the SMs, else about
// items_per_sm items per SM (0: no split).
std::int64_t split_target_items(std::int64_t logical_blocks, int sm_count, double items_per_sm);

// The persistent grid's makespan for a split plan: item i runs on CTA i % min(items, SMs);
// the busiest CTA's tokens + per-item overheads, + the merge when any block is split.
std::int64_t estimate_makespan(const Plan& plan, IndexView context_lens, const SplitKvPlan& split, int sm_count);

// The split target (items handed to plan_split_kv) with the smallest estimated makespan over
// 1..kMaxSplitsPerBlock splits per block; ties keep fewer items. Pure in shapes, lengths, SMs.
std::int64_t choose_split_target(const Plan& plan, IndexView context_lens, int sm_count,
                                 std::int64_t min_chunk_tokens, std::int64_t window_left = -1);

// The whole launch plan. context_lens are host values (they fix the chunks); each must lie in
// [0, max_blocks_per_req * block_size] (throws mixpa::Error naming the request otherwise).
// window_left >= 0: each request's items cover the union of its rows' windows (the pages
// before them are never read; each row masks its own). Throws for a head_dim, q_tile or dtype
// pair the kernels do not have.
WorkPlan plan_work(const Plan& plan, IndexView context_lens, const DeviceLimits& limits,
                   const WorkPlanOptions& options = {}, std::int64_t window_left = -1, KernelTypes types = {});

// The launch parameters a plan fixes (shape, scale, k_scale and soft-cap in log2 units,
// v_scale, window, block shift, ring depth, item and merge counts); the caller sets the
// pointers. Shared by the executor and the CPU emulation test, so both run the kernel on the
// same numbers.
KernelParams kernel_params(const Plan& plan, const WorkPlan& work, float softcap, float k_scale = 1.0f,
                           float v_scale = 1.0f);

}  // namespace mixpa::cuda
