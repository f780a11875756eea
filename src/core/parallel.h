// A minimal fork-join loop for host-side chores (case generation, exact verification).
// Executors own their own scheduling; this is not on any hot path.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace mixpa {

inline int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

// Calls fn(begin, end) on contiguous chunks of [0, n) from up to `threads` threads.
// Chunk boundaries depend only on n and `chunks`, so results that are a pure function of
// (begin, end) do not depend on the thread count.
template <class Fn>
void parallel_chunks(std::int64_t n, std::int64_t chunks, int threads, Fn&& fn) {
  if (n <= 0) return;
  chunks = std::clamp<std::int64_t>(chunks, 1, n);
  auto chunk_range = [&](std::int64_t c) { return std::pair{n * c / chunks, n * (c + 1) / chunks}; };
  threads = static_cast<int>(std::clamp<std::int64_t>(threads, 1, chunks));
  if (threads == 1) {
    for (std::int64_t c = 0; c < chunks; ++c) fn(chunk_range(c).first, chunk_range(c).second);
    return;
  }
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (std::int64_t c = t; c < chunks; c += threads) fn(chunk_range(c).first, chunk_range(c).second);
    });
  for (auto& th : pool) th.join();
}

}  // namespace mixpa
