// Split-KV (flash-decoding) planning: which token ranges of a request are computed as separate
// work items and merged afterwards with the log-sum-exp rule (SoftmaxState::merge).
// A pure function of the shapes and context lengths, never of the thread count, so every
// executor (cpu, cuda) that follows it gets bitwise the same result for any number of workers.
#pragma once

#include <cstdint>
#include <vector>

#include "core/plan.h"

namespace mixpa {

// Enough items to balance up to ~64 workers; below this many logical blocks requests are split.
inline constexpr std::int64_t kSplitTargetItems = 256;
// A chunk reads at least this many tokens: its merge (rows x head_dim floats) stays negligible.
inline constexpr std::int64_t kSplitMinChunkTokens = 2048;

// One work item: tokens [tokens.begin, tokens.end) of logical block `logical_block`. Chunk
// boundaries fall on page boundaries (the first and last chunk may start or end inside a page:
// a window's first visible token, the context's last).
struct KvChunk {
  std::int64_t logical_block = 0;
  TokenRange tokens;
};

struct SplitKvPlan {
  std::vector<KvChunk> chunks;          // grouped by logical block, pages in increasing order
  std::vector<std::int64_t> first;      // chunks of block i are [first[i], first[i+1]); size blocks + 1
  std::int64_t max_chunks_per_block = 0;
  std::int64_t num_chunks(std::int64_t block) const { return first[block + 1] - first[block]; }
};

// The visible tokens of request b come from context_lens[b] and the window (window_left >= 0:
// only the last window_left + 1 tokens; the pages before them are skipped entirely). A request
// with no visible token still gets one (empty) chunk so its output is written (zeros).
SplitKvPlan plan_split_kv(const Plan& plan, IndexView context_lens,
                          std::int64_t target_items = kSplitTargetItems,
                          std::int64_t min_chunk_tokens = kSplitMinChunkTokens, std::int64_t window_left = -1);

}  // namespace mixpa
