// Split-KV planning: splits per request = min(items wanted per logical block, tokens / min chunk).
#include "core/split_kv.h"

#include <algorithm>

namespace mixpa {

SplitKvPlan plan_split_kv(const Plan& plan, IndexView context_lens, std::int64_t target_items,
                          std::int64_t min_chunk_tokens, std::int64_t window_left) {
  SplitKvPlan sp;
  const std::int64_t blocks = plan.total_logical_blocks;
  const std::int64_t bs = plan.shape.block_size;
  const std::int64_t wanted = blocks > 0 ? std::max<std::int64_t>(1, (target_items + blocks - 1) / blocks) : 1;
  sp.first.reserve(blocks + 1);
  for (std::int64_t i = 0; i < blocks; ++i) {
    sp.first.push_back(static_cast<std::int64_t>(sp.chunks.size()));
    Variant window;
    window.window_left = window_left;
    const TokenRange seen = visible_tokens(window, context_lens[i / plan.q_loop], plan.shape.q_len);
    const std::int64_t first_page = seen.empty() ? 0 : seen.begin / bs;
    const std::int64_t pages = seen.empty() ? 0 : (seen.end + bs - 1) / bs - first_page;
    const std::int64_t by_length = std::max<std::int64_t>(1, seen.size() / std::max<std::int64_t>(1, min_chunk_tokens));
    const std::int64_t splits = std::clamp<std::int64_t>(std::min(wanted, by_length), 1, std::max<std::int64_t>(pages, 1));
    const std::int64_t per = std::max<std::int64_t>(1, (pages + splits - 1) / splits);
    std::int64_t begin = 0;
    do {
      const std::int64_t end = std::min(pages, begin + per);
      const TokenRange t{std::max(seen.begin, (first_page + begin) * bs), std::min(seen.end, (first_page + end) * bs)};
      sp.chunks.push_back({i, seen.empty() ? TokenRange{} : t});
      begin = end;
    } while (begin < pages);
    sp.max_chunks_per_block =
        std::max(sp.max_chunks_per_block, static_cast<std::int64_t>(sp.chunks.size()) - sp.first.back());
  }
  sp.first.push_back(static_cast<std::int64_t>(sp.chunks.size()));
  return sp;
}

}  // namespace mixpa
