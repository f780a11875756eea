// Persistent pool: workers sleep on a condition variable between calls; items are handed out
// under a mutex in small grabs (items are whole chunks of pages, so this is not contended).
#include "cpu/thread_pool.h"

#include <string>
#include <system_error>

#include "mixpa/error.h"

namespace mixpa::cpu {

ThreadPool& ThreadPool::instance() {
  static ThreadPool pool;
  return pool;
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::grow(int workers) {
  while (static_cast<int>(threads_.size()) < workers) {
    const int index = static_cast<int>(threads_.size());
    try {
      threads_.emplace_back([this, index] { worker(index); });
    } catch (const std::system_error& e) {
      // The pool stays as it is (the started workers are idle and usable); the call fails.
      throw Error("cpu: cannot start worker thread " + std::to_string(index + 1) + " of " + std::to_string(workers) +
                  ": " + e.what() + "; use fewer threads (--threads / num_threads)");
    }
  }
}

void ThreadPool::worker(int index) {
  std::uint64_t seen = 0;
  for (;;) {
    std::unique_lock lock(mutex_);
    wake_.wait(lock, [&] { return stop_ || (generation_ != seen && index < active_); });
    if (stop_) return;
    seen = generation_;
    while (next_ < n_) {
      const std::int64_t item = next_++;
      lock.unlock();
      (*fn_)(item);
      lock.lock();
    }
    if (--running_ == 0) done_.notify_all();
  }
}

void ThreadPool::parallel_for(std::int64_t n, int threads, const std::function<void(std::int64_t)>& fn) {
  if (n <= 0) return;
  const int helpers = static_cast<int>(std::min<std::int64_t>(threads, n)) - 1;
  if (helpers <= 0) {
    for (std::int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::lock_guard call(call_mutex_);
  std::unique_lock lock(mutex_);
  grow(helpers);
  fn_ = &fn;
  n_ = n;
  next_ = 0;
  active_ = helpers;
  running_ = helpers;
  ++generation_;
  wake_.notify_all();
  while (next_ < n_) {
    const std::int64_t item = next_++;
    lock.unlock();
    fn(item);
    lock.lock();
  }
  done_.wait(lock, [&] { return running_ == 0; });
  fn_ = nullptr;
}

}  // namespace mixpa::cpu
