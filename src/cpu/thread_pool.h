// A persistent thread pool for the cpu executor: threads are created once and reused by every
// call (a decode step is a few milliseconds; spawning threads per call would show). Between
// calls a worker spins briefly before it sleeps, so the layers of a decode step, called back to
// back, do not pay a wake-up each (issue 17: <= 20 us fixed cost per call).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace mixpa::cpu {

class ThreadPool {
 public:
  ThreadPool();
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Calls fn(item) for every item in [0, n) on up to `threads` threads (the caller is one of
  // them), handing items out in increasing order. Which thread runs an item is not fixed, so
  // fn's result must depend on the item only. Calls from several threads are serialised.
  // Nothing is allocated per call (fn is passed by reference, not as a std::function).
  template <class Fn>
  void parallel_for(std::int64_t n, int threads, Fn&& fn) {
    using F = std::remove_reference_t<Fn>;
    run(n, threads, [](const void* f, std::int64_t i) { (*static_cast<F*>(const_cast<void*>(f)))(i); }, &fn);
  }

  // How long an idle worker polls for the next call before it sleeps on a condition variable.
  // Default 100 us, or MIXPA_CPU_SPIN_US from the environment (0: sleep at once).
  void set_spin_ns(std::int64_t ns) { spin_ns_.store(ns, std::memory_order_relaxed); }
  std::int64_t spin_ns() const { return spin_ns_.load(std::memory_order_relaxed); }

  // Workers that have been started (they live until the process ends).
  int workers() const;

  static ThreadPool& instance();

 private:
  using Body = void (*)(const void* fn, std::int64_t item);
  void run(std::int64_t n, int threads, Body body, const void* fn);
  void worker(int index);
  void grow(int workers);
  // Takes items of call `gen` until none is left; returns after its last item's completion.
  void take_items(std::uint64_t gen);

  // The current call: cursor_ = generation << 40 | helpers << 32 | next item. Items are taken
  // by compare-and-swap on the cursor, which fails once a later call has begun, so a worker
  // that comes late to a call either takes one of its items (and the call waits for it) or
  // touches nothing. body_/fn_/n_ are written before the cursor's release store and read after
  // a successful acquire CAS; the next call rewrites them only after every item is done.
  std::atomic<std::uint64_t> cursor_{0};
  std::atomic<Body> body_{nullptr};
  std::atomic<const void*> fn_{nullptr};
  std::atomic<std::int64_t> n_{0};
  std::atomic<std::int64_t> done_{0};  // items of the current call completed
  std::atomic<std::int64_t> spin_ns_;
  std::atomic<int> sleepers_{0};  // workers inside (or entering) the wake_ wait
  std::atomic<bool> caller_waits_{false};
  std::atomic<bool> stop_{false};

  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;       // for the two sleeps below only
  std::condition_variable wake_, done_cv_;
  std::vector<std::thread> threads_;  // grown under call_mutex_
  std::atomic<int> started_{0};
};

}  // namespace mixpa::cpu
