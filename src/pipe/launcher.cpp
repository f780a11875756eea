// SPMD MIX launcher and the deterministic turn scheduler.
#include "pipe/launcher.h"

#include <exception>
#include <string>
#include <system_error>
#include <thread>

#include "mixpa/error.h"

namespace mixpa {
namespace {
thread_local int tl_worker = -1;
}

const char* core_name(CoreRole role) {
  switch (role) {
    case CoreRole::kCube: return "cube";
    case CoreRole::kVector0: return "vector0";
    case CoreRole::kVector1: return "vector1";
  }
  return "?";
}

TurnScheduler::TurnScheduler(int workers)
    : turn_cv_(static_cast<std::size_t>(workers)), done_(static_cast<std::size_t>(workers), false),
      stalled_at_(static_cast<std::size_t>(workers), kRunnable) {}

void TurnScheduler::set_random(std::uint64_t seed) {
  random_ = true;
  rng_ = seed;
}

// splitmix64: a fixed, portable sequence per seed (a standard distribution may differ by library).
std::uint64_t TurnScheduler::draw_locked() {
  std::uint64_t z = (rng_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void TurnScheduler::begin(int worker) {
  tl_worker = worker;
  std::unique_lock lock(mutex_);
  turn_cv_[worker].wait(lock, [&] { return current_ == worker || aborted_; });
}

bool TurnScheduler::pass_turn_locked(int from) {
  const int n = static_cast<int>(done_.size());
  const std::uint64_t progress = progress_.load();
  auto runnable = [&](int w) { return !done_[w] && stalled_at_[w] != progress; };
  int next = -1;
  if (random_) {
    candidates_.clear();
    for (int w = 0; w < n; ++w)
      if (w != from && runnable(w)) candidates_.push_back(w);
    if (!candidates_.empty()) next = candidates_[draw_locked() % candidates_.size()];
  } else {
    for (int k = 1; k < n && next < 0; ++k)
      if (runnable((from + k) % n)) next = (from + k) % n;
  }
  if (next < 0) return false;
  current_ = next;
  turn_cv_[next].notify_one();
  return true;
}

void TurnScheduler::deadlock_locked() {
  deadlocked_ = true;
  aborted_ = true;
  for (auto& cv : turn_cv_) cv.notify_all();
}

void TurnScheduler::finish(int worker) {
  std::lock_guard lock(mutex_);
  done_[worker] = true;
  if (aborted_) return;
  bool live = false;
  for (bool d : done_) live = live || !d;
  // Workers remain but every one of them waits on something nobody can change any more.
  if (!pass_turn_locked(worker) && live) deadlock_locked();
}

void TurnScheduler::notify(std::condition_variable& cv) {
  ++progress_;
  cv.notify_all();
}

void TurnScheduler::wait(std::unique_lock<std::mutex>& pipe_lock, std::condition_variable&,
                         const std::function<bool()>& ready) {
  const int me = tl_worker;
  while (!ready()) {
    const std::uint64_t seen = progress_.load();
    pipe_lock.unlock();
    {
      std::unique_lock lock(mutex_);
      if (aborted_) throw Error("simulation aborted");
      stalled_at_[me] = seen;
      // Nobody else can run and nothing changed since this wait looked: a deadlock.
      if (!pass_turn_locked(me)) {
        if (progress_.load() == seen) {
          deadlock_locked();
          throw Error("deadlock");
        }
        current_ = me;  // progress since the look: look again
      }
      turn_cv_[me].wait(lock, [&] { return current_ == me || aborted_; });
      if (aborted_) throw Error("simulation aborted");
      stalled_at_[me] = kRunnable;
    }
    pipe_lock.lock();
  }
}

void TurnScheduler::yield_point() {
  const int me = tl_worker;
  if (!random_ || me < 0) return;
  std::unique_lock lock(mutex_);
  if (aborted_) throw Error("simulation aborted");
  if (draw_locked() % 4 != 0) return;  // preempt at about one pipe call in four
  if (!pass_turn_locked(me)) return;
  turn_cv_[me].wait(lock, [&] { return current_ == me || aborted_; });
  if (aborted_) throw Error("simulation aborted");
}

void TurnScheduler::abort() {
  std::lock_guard lock(mutex_);
  aborted_ = true;
  for (auto& cv : turn_cv_) cv.notify_all();
}

void launch_mix(int block_num, bool single_thread, TurnScheduler* scheduler,
                const std::function<void(const CoreContext&)>& body,
                const std::function<void()>& on_worker_error) {
  const int workers = 3 * block_num;
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(workers));
  std::mutex error_mutex;
  int first_failed = -1;  // the worker whose exception is rethrown: the first in time
  // Only the first failure releases the others (closing pipes, aborting the scheduler); the
  // others' errors are mostly consequences ("pipe closed").
  auto first_failure = [&](int w) {
    std::lock_guard lock(error_mutex);
    if (first_failed >= 0) return false;
    first_failed = w;
    return true;
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(workers));
  std::string start_error;
  for (int w = 0; w < workers; ++w) {
    try {
      threads.emplace_back([&, w] {
        CoreContext ctx;
        ctx.block_idx = w / 3;
        ctx.block_num = block_num;
        ctx.role = static_cast<CoreRole>(w % 3);
        ctx.sub_block_id = ctx.role == CoreRole::kVector1 ? 1 : 0;
        ctx.worker = w;
        try {
          if (single_thread) scheduler->begin(w);
          body(ctx);
        } catch (...) {
          errors[w] = std::current_exception();
          if (first_failure(w)) {
            if (single_thread) scheduler->abort();
            on_worker_error();
          }
        }
        if (single_thread) scheduler->finish(w);
      });
    } catch (const std::system_error& e) {
      // The OS refused a thread (thread or memory limits). The workers already started would
      // wait forever for their block's missing cores: release them, join them, report it.
      start_error = "sim: cannot start worker thread " + std::to_string(w + 1) + " of " + std::to_string(workers) +
                    " (" + std::to_string(block_num) + " hardware blocks x 3 cores): " + e.what() +
                    "; use fewer hardware blocks (--blocks / hw_blocks)";
      if (first_failure(w)) {
        if (single_thread) scheduler->abort();
        on_worker_error();
      }
      break;
    }
  }
  for (auto& t : threads) t.join();
  if (first_failed >= 0 && errors[static_cast<std::size_t>(first_failed)])
    std::rethrow_exception(errors[static_cast<std::size_t>(first_failed)]);
  if (!start_error.empty()) throw Error(start_error);
}

}  // namespace mixpa
