// The SPMD MIX launch: block_num hardware blocks, each one cube worker and two vector workers
// (1C2V), every worker told block_idx, block_num and sub_block_id.
//
// Two modes, both on blocking OS threads (a blocked worker sleeps, it never spins, so 72
// workers do not oversubscribe a 2-core machine):
//  - threaded: every worker runs when its pipes let it;
//  - single-thread (deterministic): exactly one worker runs at a time and the turn passes in
//    a fixed round-robin order whenever the running worker would block, so a run is the same
//    interleaving every time; when every live worker waits and nobody made progress since it
//    last looked, that is a deadlock, detected at once;
//  - random turns (`set_random(seed)`): the same, but the next worker is drawn from the
//    runnable ones by a seeded generator and a running worker may be preempted at any pipe
//    call, so each seed is one reproducible interleaving out of many.
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
  // Seeded random interleavings; call before the launch.
  void set_random(std::uint64_t seed);
  void begin(int worker);   // blocks until it is this worker's turn
  void finish(int worker);  // this worker is done: the turn moves on
  void wait(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
            const std::function<bool()>& ready) override;
  void notify(std::condition_variable& cv) override;
  void yield_point() override;  // random turns: maybe hand the turn to another runnable worker
  void abort();  // wakes everyone; waits throw
  bool deadlocked() const { return deadlocked_; }

 private:
  static constexpr std::uint64_t kRunnable = ~std::uint64_t{0};
  // Hands the turn to the next runnable worker other than `from` (round-robin, or drawn at
  // random); false if there is none. A worker is runnable unless it is done or found its wait
  // unready at the current progress count (then nothing it waits for has changed).
  bool pass_turn_locked(int from);
  void deadlock_locked();
  std::uint64_t draw_locked();
  std::mutex mutex_;
  std::vector<std::condition_variable> turn_cv_;  // one per worker: only the next one wakes
  int current_ = 0;
  std::vector<bool> done_;
  std::vector<std::uint64_t> stalled_at_;
  std::vector<int> candidates_;
  std::atomic<std::uint64_t> progress_{0};
  bool random_ = false;
  std::uint64_t rng_ = 0;
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
