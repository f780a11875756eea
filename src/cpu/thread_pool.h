// A persistent thread pool for the cpu executor: threads are created once and reused by every
// call (a decode step is a few milliseconds; spawning threads per call would show).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mixpa::cpu {

class ThreadPool {
 public:
  ~ThreadPool();

  // Calls fn(item) for every item in [0, n) on `threads` threads (the caller is one of them),
  // handing items out in increasing order. Which thread runs an item is not fixed, so fn's
  // result must depend on the item only. Calls from several threads are serialised.
  void parallel_for(std::int64_t n, int threads, const std::function<void(std::int64_t)>& fn);

  static ThreadPool& instance();

 private:
  void worker(int index);
  void grow(int workers);

  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(std::int64_t)>* fn_ = nullptr;
  std::int64_t n_ = 0;
  std::int64_t next_ = 0;      // next item to hand out (guarded by mutex_)
  int active_ = 0;             // workers taking part in the current call
  int running_ = 0;            // workers still inside the current call
  std::uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace mixpa::cpu
