// Runs of pages: the chunk driver's page loop for flavours whose per-page stages (softmax, the
// UP rescale of O) cost too much on small pages. A run is one page when block_size >= the
// run length (so such a flavour computes exactly what the per-page drive_chunk gives), and
// consecutive pages up to at least kRunTokens tokens when the pages are smaller (block_size
// 1..15: SGLang's token-level pages): the stages then see one span of tokens whose rows lie on
// several pages.
//
//   f(job)
//   for each run of job.tokens     (PageWalk spans, grouped)
//     f.qk(run); f.softmax(run); f.pv(run)
//   f.finish(out)
#pragma once

#include <concepts>
#include <cstdint>

#include "core/page_walk.h"
#include "cpu/chunk_kernel.h"

namespace mixpa::cpu {

inline constexpr int kRunTokens = 32;         // small pages are grouped up to at least this many tokens
inline constexpr int kMaxRunSpans = kRunTokens;  // block_size 1: kRunTokens pages of one token
// The most tokens a run holds: one page, or small pages until kRunTokens (< kRunTokens + 15).
inline constexpr std::int64_t max_run_tokens(std::int64_t block_size) {
  return block_size >= kRunTokens / 2 ? block_size : 2 * kRunTokens;
}

struct PageRun {
  PageSpan spans[kMaxRunSpans];
  int count = 0;
  std::int64_t tokens = 0;      // rows of all spans together
  std::int64_t next_page = -1;  // the page after the run's last span, -1 at the walk's end
};

template <class F, class Out = ChunkOut>
concept RunFlavour = requires(F& f, const PageRun& run, const Out& out) {
  f.qk(run);
  f.softmax(run);
  f.pv(run);
  f.finish(out);
};

// Pages of block_size >= kRunTokens / 2 are runs of one page each (the per-page order of
// chunk_driver.h); smaller ones are grouped until a run holds kRunTokens tokens.
// A group flavour (the avx2 group kernel: tiles of several kv heads over the same pages) takes
// its tiles' outputs as `out`.
template <class F, class Out>
inline void drive_chunk_runs(F& f, const ChunkJob& job, const Out& out) {
  static_assert(RunFlavour<F, Out>, "a run flavour needs qk(run), softmax(run), pv(run) and finish(out)");
  const bool group = job.problem->shape.block_size < kRunTokens / 2;
  PageRun run;
  for (PageWalk w(*job.problem, job.batch, job.tokens); w.is_valid(); ++w) {
    run.spans[run.count++] = *w;
    run.tokens += w->rows();
    run.next_page = w->next_page;
    if (!group || run.tokens >= kRunTokens || run.count == kMaxRunSpans || w->next_page < 0) {
      f.qk(run);
      f.softmax(run);
      f.pv(run);
      run.count = 0;
      run.tokens = 0;
    }
  }
  f.finish(out);
}

}  // namespace mixpa::cpu
