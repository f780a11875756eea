// The SPMD MIX launch: block_num hardware blocks, each one cube worker and two vector workers
// (1C2V), every worker told block_idx, block_num and sub_block_id.
//
// Two modes, both on blocking OS threads (a blocked worker sleeps, it never spins, so 72
// workers do not oversubscribe a 2-core machine):
//  - threaded: every worker runs when its pipes let it;
//  - single-thread (deterministic): exactly one worker runs at a time and the turn passes in
//    a fixed round-robin order whenever the running worker would block, so a run is the same
//    interleaving every time; a full round without progress is a deadlock, detected at once.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "pipe/tile_pipe.h"

namespace mixpa {

enum class CoreRole : std::uint8_t { kCube, kVector0, kVector1 };
const char* core_name(CoreRole role);

struct CoreContext {
  int block_idx = 0;
  int block_num = 1;
  CoreRole role = CoreRole::kCube;
  int sub_block_id = 0;  // vector lane: 0 or 1 (0 for the cube)
  int worker = 0;        // block_idx * 3 + role
};

// The deterministic mode's turn passing, used by pipes as their wait.
class TurnScheduler final : public PipeWaiter {
 public:
  explicit TurnScheduler(int workers);
  void begin(int worker);   // blocks until it is this worker's turn
  void finish(int worker);  // this worker is done: the turn moves on
  void wait(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
            const std::function<bool()>& ready) override;
  void notify(std::condition_variable& cv) override;
  void abort();  // wakes everyone; waits throw
  bool deadlocked() const { return deadlocked_; }

 private:
  void pass_turn_locked(int from);
  std::mutex mutex_;
  std::condition_variable turn_cv_;
  int current_ = 0;
  std::vector<bool> done_;
  std::atomic<std::uint64_t> progress_{0};
  bool aborted_ = false;
  std::atomic<bool> deadlocked_{false};
};

// Runs body(ctx) on 3 * block_num workers and joins them. The first exception a worker
// throws is rethrown after every worker has ended (workers blocked on pipes are released by
// `on_worker_error`, which should close the pipes). If the OS refuses to start a worker
// thread, the ones already started are released the same way and joined, and mixpa::Error
// names the thread and the limit.
void launch_mix(int block_num, bool single_thread, TurnScheduler* scheduler,
                const std::function<void(const CoreContext&)>& body,
                const std::function<void()>& on_worker_error);

}  // namespace mixpa
