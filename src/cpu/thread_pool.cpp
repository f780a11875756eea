// Persistent pool. A call publishes itself in one atomic word (cursor_) and takes items with the
// workers by compare-and-swap; the caller runs items too, so a call whose workers are asleep or
// descheduled (a shared machine) still finishes on the caller alone. Idle workers poll the word
// for spin_ns, then sleep; the caller wakes sleepers only when there are any.
#include "cpu/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <system_error>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "mixpa/error.h"

namespace mixpa::cpu {
namespace {

constexpr int kGenShift = 40, kHelperShift = 32;
constexpr std::uint64_t kIndexMask = (std::uint64_t{1} << kHelperShift) - 1;
constexpr std::int64_t kMaxItems = std::int64_t{1} << 31;  // fits the cursor's index field
constexpr int kMaxHelpers = 255;

std::uint64_t gen_of(std::uint64_t c) { return c >> kGenShift; }
int helpers_of(std::uint64_t c) { return static_cast<int>((c >> kHelperShift) & 0xff); }

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

std::int64_t default_spin_ns() {
  if (const char* s = std::getenv("MIXPA_CPU_SPIN_US"); s != nullptr && *s != '\0') {
    char* end = nullptr;
    const long long us = std::strtoll(s, &end, 10);
    if (end != s && us >= 0) return us * 1000;
  }
  return 100'000;
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

ThreadPool::ThreadPool() : spin_ns_(default_spin_ns()) {}

ThreadPool& ThreadPool::instance() {
  static ThreadPool pool;
  return pool;
}

int ThreadPool::workers() const { return started_.load(std::memory_order_relaxed); }

ThreadPool::~ThreadPool() {
  stop_.store(true);
  {
    std::lock_guard lock(mutex_);
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
    started_.store(static_cast<int>(threads_.size()), std::memory_order_relaxed);
  }
}

void ThreadPool::take_items(std::uint64_t gen) {
  std::uint64_t c = cursor_.load(std::memory_order_acquire);
  for (;;) {
    if (gen_of(c) != gen) return;
    const std::int64_t n = n_.load(std::memory_order_relaxed);
    const auto item = static_cast<std::int64_t>(c & kIndexMask);
    if (item >= n) return;
    if (!cursor_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    // The item is ours: the call cannot end (and body_/fn_ cannot change) before done_ counts it.
    body_.load(std::memory_order_relaxed)(fn_.load(std::memory_order_relaxed), item);
    // seq_cst both ways with run()'s caller_waits_ store and done_ load (no lost wake-up).
    if (done_.fetch_add(1) + 1 == n && caller_waits_.load()) {
      { std::lock_guard lock(mutex_); }
      done_cv_.notify_one();
    }
    c = cursor_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker(int index) {
  std::uint64_t seen = gen_of(cursor_.load(std::memory_order_acquire));
  for (;;) {
    // Poll for the next call, then sleep.
    std::uint64_t c = cursor_.load(std::memory_order_acquire);
    if (gen_of(c) == seen) {
      const std::int64_t until = now_ns() + spin_ns();
      int polls = 0;
      while (gen_of(c = cursor_.load(std::memory_order_acquire)) == seen && !stop_.load(std::memory_order_relaxed)) {
        cpu_relax();
        if (++polls % 64 == 0 && now_ns() >= until) break;
      }
      if (gen_of(c) == seen && !stop_.load()) {
        std::unique_lock lock(mutex_);
        sleepers_.fetch_add(1);
        wake_.wait(lock, [&] { return stop_.load() || gen_of(c = cursor_.load()) != seen; });
        sleepers_.fetch_sub(1);
      }
    }
    if (stop_.load()) return;
    seen = gen_of(c);
    if (index < helpers_of(c)) take_items(seen);
  }
}

void ThreadPool::run(std::int64_t n, int threads, Body body, const void* fn) {
  if (n <= 0) return;
  const int helpers = static_cast<int>(std::min<std::int64_t>({std::int64_t{threads}, n, std::int64_t{kMaxHelpers} + 1})) - 1;
  if (helpers <= 0 || n >= kMaxItems) {
    for (std::int64_t i = 0; i < n; ++i) body(fn, i);
    return;
  }
  std::lock_guard call(call_mutex_);
  grow(helpers);
  // Every item of the previous call is done (it waited for them), so nothing reads these now.
  body_.store(body, std::memory_order_relaxed);
  fn_.store(fn, std::memory_order_relaxed);
  n_.store(n, std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  const std::uint64_t gen = (gen_of(cursor_.load(std::memory_order_relaxed)) + 1) & ((std::uint64_t{1} << 24) - 1);
  cursor_.store(gen << kGenShift | static_cast<std::uint64_t>(helpers) << kHelperShift);  // seq_cst: see sleepers_
  if (sleepers_.load() > 0) {
    { std::lock_guard lock(mutex_); }  // a worker between its check and its wait holds mutex_
    wake_.notify_all();
  }
  take_items(gen);
  // The last items may still run on workers: poll briefly, then sleep until the last is done.
  if (done_.load(std::memory_order_acquire) != n) {
    for (int polls = 0; polls < 4096 && done_.load(std::memory_order_acquire) != n; ++polls) cpu_relax();
    if (done_.load(std::memory_order_acquire) != n) {
      std::unique_lock lock(mutex_);
      caller_waits_.store(true);
      done_cv_.wait(lock, [&] { return done_.load() == n; });
      caller_waits_.store(false);
    }
  }
}

}  // namespace mixpa::cpu
