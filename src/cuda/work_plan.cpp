// Work-item planning for the cuda executor: the shared split-KV plan with a GPU target.
#include "cuda/work_plan.h"

#include <algorithm>
#include <string>
#include <vector>

#include "mixpa/error.h"

namespace mixpa::cuda {

int choose_stages(TileGeometry geometry, int max_smem_per_block, int max_stages) {
  int stages = std::clamp(max_stages, kMinStages, kMaxStages);
  while (stages >= kMinStages && smem_layout(geometry, stages).total() > max_smem_per_block) --stages;
  if (stages < kMinStages)
    throw Error("cuda: head_dim " + std::to_string(geometry.head_dim) + " needs " +
                std::to_string(smem_layout(geometry, kMinStages).total()) + " bytes of shared memory per block, the device has " +
                std::to_string(max_smem_per_block));
  return stages;
}

std::int64_t split_target_items(std::int64_t logical_blocks, int sm_count, double items_per_sm) {
  if (logical_blocks >= sm_count || items_per_sm <= 0.0) return logical_blocks;
  return std::max(logical_blocks, static_cast<std::int64_t>(items_per_sm * sm_count + 0.5));
}

std::int64_t estimate_makespan([[maybe_unused]] const Plan& plan, [[maybe_unused]] IndexView context_lens,
                               const SplitKvPlan& split, int sm_count) {
  // The chunks' token ranges already hold the lengths: the plan and the lengths are in the
  // signature for cost models that weigh pages (block_size) or requests.
  const std::int64_t items = static_cast<std::int64_t>(split.chunks.size());
  const std::int64_t grid = std::max<std::int64_t>(1, std::min<std::int64_t>(items, sm_count));
  std::vector<std::int64_t> load(static_cast<std::size_t>(grid), 0);
  bool any_split = false;
  for (std::int64_t i = 0; i < items; ++i) {
    const KvChunk& c = split.chunks[i];
    load[i % grid] += c.tokens.size() + kItemOverheadTokens;
    any_split = any_split || split.num_chunks(c.logical_block) > 1;
  }
  return *std::max_element(load.begin(), load.end()) + (any_split ? kMergeOverheadTokens : 0);
}

std::int64_t choose_split_target(const Plan& plan, IndexView context_lens, int sm_count,
                                 std::int64_t min_chunk_tokens, std::int64_t window_left) {
  const std::int64_t blocks = plan.total_logical_blocks;
  std::int64_t best_target = blocks, best_cost = -1;
  std::size_t last_items = 0;
  for (int s = 1; s <= kMaxSplitsPerBlock; ++s) {
    const std::int64_t target = blocks * s;
    if (s > 1 && target > 16 * std::int64_t{sm_count}) break;  // far past filling the SMs
    const SplitKvPlan sp = plan_split_kv(plan, context_lens, target, min_chunk_tokens, window_left);
    if (s > 1 && sp.chunks.size() == last_items) continue;  // lengths cap the splits: same plan
    last_items = sp.chunks.size();
    const std::int64_t cost = estimate_makespan(plan, context_lens, sp, sm_count);
    if (best_cost < 0 || cost < best_cost) best_cost = cost, best_target = target;
  }
  return best_target;
}

namespace {

// WorkPlanOptions::balance_pages: one equal run of pages per CTA (an empty block counts one).
void plan_balanced(const Plan& plan, IndexView context_lens, int sm_count, std::int64_t window_left,
                   WorkPlan& w) {
  const std::int64_t blocks = plan.total_logical_blocks, bs = plan.shape.block_size;
  Variant window;
  window.window_left = window_left;
  std::vector<TokenRange> seen(blocks);
  std::vector<std::int64_t> first_page(blocks, 0), units(blocks, 1), unit0(blocks + 1, 0);
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    seen[blk] = visible_tokens(window, context_lens[plan.logical_block(blk).batch], plan.shape.q_len);
    if (!seen[blk].empty()) {
      first_page[blk] = seen[blk].begin / bs;
      units[blk] = (seen[blk].end + bs - 1) / bs - first_page[blk];
    }
    unit0[blk + 1] = unit0[blk] + units[blk];
  }
  const std::int64_t total = unit0[blocks];
  const std::int64_t grid = std::max<std::int64_t>(1, std::min<std::int64_t>(sm_count, total));
  std::vector<std::vector<WorkItem>> per_cta(grid);
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const LogicalBlock lb = plan.logical_block(blk);
    // The CTAs whose runs [k total / grid, (k + 1) total / grid) meet this block's units.
    std::vector<std::pair<std::int64_t, std::int64_t>> cuts;  // (cta, unit end) in order
    for (std::int64_t u = unit0[blk]; u < unit0[blk + 1];) {
      // The CTA k with k total / grid <= u < (k + 1) total / grid.
      std::int64_t cta = std::min<std::int64_t>(grid - 1, u * grid / total);
      while (cta + 1 < grid && (cta + 1) * total / grid <= u) ++cta;
      while (cta > 0 && cta * total / grid > u) --cta;
      const std::int64_t end = std::min(unit0[blk + 1], (cta + 1) * total / grid);
      cuts.push_back({cta, end});
      u = end;
    }
    const std::int64_t n = static_cast<std::int64_t>(cuts.size());
    const std::int32_t merge = n > 1 ? static_cast<std::int32_t>(w.merges.size()) : -1;
    if (n > 1)
      w.merges.push_back({static_cast<std::int32_t>(lb.batch), static_cast<std::int32_t>(lb.head_begin), lb.rows,
                          static_cast<std::int32_t>(w.num_partials), static_cast<std::int32_t>(n),
                          static_cast<std::int32_t>(lb.kv_head), {0, 0}});
    std::int64_t a = 0;
    for (const auto& [cta, end_unit] : cuts) {
      const std::int64_t b = end_unit - unit0[blk];
      WorkItem it{};
      it.batch = static_cast<std::int32_t>(lb.batch);
      it.kv_head = static_cast<std::int32_t>(lb.kv_head);
      it.head_begin = static_cast<std::int32_t>(lb.head_begin);
      it.rows = lb.rows;
      if (!seen[blk].empty()) {
        it.token_begin = std::max(seen[blk].begin, (first_page[blk] + a) * bs);
        it.token_end = std::min(seen[blk].end, (first_page[blk] + b) * bs);
      }
      it.position = context_lens[lb.batch] - plan.shape.q_len;
      it.partial = n > 1 ? static_cast<std::int32_t>(w.num_partials++) : -1;
      it.merge = merge;
      per_cta[cta].push_back(it);
      a = b;
    }
  }
  std::size_t depth = 0;
  for (const auto& l : per_cta) depth = std::max(depth, l.size());
  WorkItem noop{};  // rows 0, no tokens: reads nothing, writes nothing
  noop.partial = noop.merge = -1;
  w.items.assign(depth * grid, noop);
  for (std::int64_t k = 0; k < grid; ++k)
    for (std::size_t j = 0; j < per_cta[k].size(); ++j) w.items[j * grid + k] = per_cta[k][j];
  w.grid = static_cast<int>(grid);
}

}  // namespace

std::string unsupported_types(DType query, DType kv) {
  if (query != DType::kBF16 && query != DType::kF16) return "query dtype " + std::string(dtype_name(query));
  switch (kv) {
    case DType::kBF16:
    case DType::kF16:
      if (query != kv)
        return "query " + std::string(dtype_name(query)) + " with " + std::string(dtype_name(kv)) +
               " caches (a 16-bit cache needs the query in its dtype)";
      return {};
    case DType::kF8E4M3:
    case DType::kF8E5M2: return {};
    default: return std::string(dtype_name(kv)) + " caches";
  }
}

KernelDtype kernel_dtype(DType query, DType kv) {
  if (const std::string why = unsupported_types(query, kv); !why.empty()) throw Error("cuda: " + why + " not supported");
  if (kv == DType::kF8E4M3 || kv == DType::kF8E5M2) return query == DType::kF16 ? KernelDtype::kFp8F16 : KernelDtype::kFp8Bf16;
  return kv == DType::kF16 ? KernelDtype::kF16 : KernelDtype::kBf16;
}

int kernel_head_dim(std::int64_t head_dim) {
  if (head_dim < 16 || head_dim > 256 || head_dim % 16 != 0)
    throw Error("cuda: head_dim " + std::to_string(head_dim) + " is not supported (a multiple of 16 in 16..256)");
  return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256;
}

WorkPlan plan_work(const Plan& plan, IndexView context_lens, const DeviceLimits& limits,
                   const WorkPlanOptions& options, std::int64_t window_left, KernelTypes types) {
  const Shape& s = plan.shape;
  WorkPlan w;
  w.q_tile = plan.q_tile;
  w.dtype = kernel_dtype(types.query, types.kv);
  w.fp8_e5m2 = types.kv == DType::kF8E5M2;
  w.window_left = window_left;
  const int row_frags = plan.q_tile / 16;
  const int kernel_hd = kernel_head_dim(s.head_dim);
  if (!(row_frags == 1 || row_frags == 4) || plan.q_tile % 16 != 0)
    throw Error("cuda: q_tile " + std::to_string(plan.q_tile) + " is not supported (supported: 16, 64)");
  if (s.num_heads > (1 << 30) || s.batch > (1 << 30) || s.max_blocks_per_req * s.block_size > (std::int64_t{1} << 31) ||
      s.batch * s.q_len > (1 << 30))
    throw Error("cuda: shapes exceed the kernel's 32-bit work-item fields");
  w.geometry = TileGeometry{kernel_hd, row_frags, kv_elem_bytes(w.dtype)};
  w.stages = choose_stages(w.geometry, limits.max_smem_per_block, options.max_stages);
  w.smem_bytes = smem_layout(w.geometry, w.stages).total();

  const std::int64_t max_tokens = s.max_blocks_per_req * s.block_size;
  for (std::int64_t b = 0; b < s.batch; ++b)
    if (context_lens[b] < 0 || context_lens[b] > max_tokens)
      throw Error("context_lens: request " + std::to_string(b) + " has " + std::to_string(context_lens[b]) +
                  " tokens, must be in [0, " + std::to_string(max_tokens) + "]");

  const std::int64_t blocks = plan.total_logical_blocks;
  if (options.balance_pages) {
    plan_balanced(plan, context_lens, limits.sm_count, window_left, w);
    return w;
  }
  const std::int64_t min_chunk = std::max<std::int64_t>(1, options.min_chunk_tokens);
  const std::int64_t target = options.items_per_sm < 0.0
                                  ? choose_split_target(plan, context_lens, limits.sm_count, min_chunk, window_left)
                                  : split_target_items(blocks, limits.sm_count, options.items_per_sm);
  const SplitKvPlan sp = plan_split_kv(plan, context_lens, target, min_chunk, window_left);
  w.items.reserve(sp.chunks.size());
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const LogicalBlock lb = plan.logical_block(blk);
    const std::int64_t ctx = context_lens[lb.batch];
    const std::int64_t n = sp.num_chunks(blk);
    const std::int32_t merge = n > 1 ? static_cast<std::int32_t>(w.merges.size()) : -1;
    if (n > 1) {
      w.merges.push_back({static_cast<std::int32_t>(lb.batch), static_cast<std::int32_t>(lb.head_begin), lb.rows,
                          static_cast<std::int32_t>(w.num_partials), static_cast<std::int32_t>(n),
                          static_cast<std::int32_t>(lb.kv_head), {0, 0}});
    }
    for (std::int64_t c = sp.first[blk]; c < sp.first[blk + 1]; ++c) {
      const KvChunk& ch = sp.chunks[c];
      WorkItem it{};
      it.batch = static_cast<std::int32_t>(lb.batch);
      it.kv_head = static_cast<std::int32_t>(lb.kv_head);
      it.head_begin = static_cast<std::int32_t>(lb.head_begin);
      it.rows = lb.rows;
      it.token_begin = ch.tokens.begin;
      it.token_end = ch.tokens.end;
      it.position = ctx - s.q_len;
      it.partial = n > 1 ? static_cast<std::int32_t>(w.num_partials++) : -1;
      it.merge = merge;
      w.items.push_back(it);
    }
  }
  w.grid = static_cast<int>(std::min<std::int64_t>(static_cast<std::int64_t>(w.items.size()), limits.sm_count));
  return w;
}

KernelParams kernel_params(const Plan& plan, const WorkPlan& work, float softcap, float k_scale, float v_scale) {
  constexpr float kLog2e = 1.4426950408889634f;
  KernelParams p;
  p.head_dim = static_cast<std::int32_t>(plan.shape.head_dim);
  p.q_len = static_cast<std::int32_t>(plan.shape.q_len);
  p.group = static_cast<std::int32_t>(plan.shape.group());
  p.fp8_e5m2 = work.fp8_e5m2 ? 1 : 0;
  p.window_left = work.window_left;
  p.v_scale = v_scale;
  p.max_blocks_per_req = plan.shape.max_blocks_per_req;
  p.num_blocks = plan.shape.num_blocks;
  p.block_size = static_cast<std::int32_t>(plan.shape.block_size);
  p.block_shift = block_shift_of(plan.shape.block_size);
  p.num_heads = static_cast<std::int32_t>(plan.shape.num_heads);
  // k_scale folds into the score's scale (SPEC §6: scale * (q . k_scale K)); 1 for 16-bit caches.
  const float scale = plan.scale * k_scale;
  p.scale_log2 = scale * kLog2e;
  if (softcap > 0.0f) {
    p.softcap_pre = scale / softcap;
    p.softcap_log2 = softcap * kLog2e;
  }
  p.q_tile = work.q_tile;
  p.stages = work.stages;
  p.num_items = static_cast<std::int32_t>(work.items.size());
  p.num_merges = static_cast<std::int32_t>(work.merges.size());
  return p;
}

}  // namespace mixpa::cuda
