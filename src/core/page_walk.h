// The page walk: the one place a range of a request's tokens becomes pages of the cache.
// Every executor (reference, sim, cpu, cuda's planner) walks pages through it:
//   for (PageWalk w(problem, batch, tokens); w.is_valid(); ++w) { const PageSpan& p = *w; ... }
// yields, page by page, the page id, the rows of the page inside the range and the next
// page's id (for prefetching). A window, a split-KV chunk or (later) a query row's causal
// limit is just a different token range; no kernel re-derives "valid = len - i * bs".
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/problem.h"

namespace mixpa {

struct PageSpan {
  std::int64_t index = 0;       // page j of the request: tokens [j * block_size, (j + 1) * block_size)
  std::int64_t page = 0;        // its id in the cache (validated in [0, num_blocks))
  std::int64_t next_page = -1;  // the id of the walk's next page, -1 on the last
  std::int64_t token0 = 0;      // the token of the page's row 0
  std::int64_t begin = 0;       // rows [begin, end) of the page are in the range
  std::int64_t end = 0;
  std::int64_t rows() const { return end - begin; }
  bool full(std::int64_t block_size) const { return begin == 0 && end == block_size; }
};

class PageWalk {
 public:
  PageWalk(const Problem& pr, std::int64_t batch, TokenRange tokens)
      : pr_(&pr), batch_(batch), tokens_(tokens), bs_(pr.shape.block_size) {
    if (tokens.empty()) {
      index_ = last_ = 0;
    } else {
      index_ = tokens.begin / bs_;
      last_ = (tokens.end + bs_ - 1) / bs_;
    }
    if (index_ < last_) settle();
  }

  bool is_valid() const { return index_ < last_; }
  const PageSpan& operator*() const { return span_; }
  const PageSpan* operator->() const { return &span_; }
  PageWalk& operator++() {
    if (++index_ < last_) settle();
    return *this;
  }
  // Pages the whole walk visits.
  std::int64_t num_pages() const { return last_ - (tokens_.empty() ? 0 : tokens_.begin / bs_); }

 private:
  void settle() {
    span_.index = index_;
    span_.page = pr_->page(batch_, index_);
    span_.next_page = index_ + 1 < last_ ? pr_->page(batch_, index_ + 1) : -1;
    span_.token0 = index_ * bs_;
    span_.begin = std::max<std::int64_t>(0, tokens_.begin - span_.token0);
    span_.end = std::min<std::int64_t>(bs_, tokens_.end - span_.token0);
  }

  const Problem* pr_;
  std::int64_t batch_;
  TokenRange tokens_;
  std::int64_t bs_;
  std::int64_t index_ = 0, last_ = 0;
  PageSpan span_;
};

}  // namespace mixpa
