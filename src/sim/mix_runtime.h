// The runtime the simulated MIX programs run on: per hardware block the three pipes
// (sij C2V, pij V2C, oi C2V), the SPMD launch, the watchdog and the stage/wait recording.
// A program talks to it only through Worker: tpush / tpop / tfree and stage markers.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/plan.h"
#include "mixpa/paged_attention.h"
#include "pipe/launcher.h"
#include "pipe/tile_pipe.h"

namespace mixpa::sim {

enum class Stage : std::uint8_t { kIdle, kLoad, kQK, kSF, kPV, kUP, kFinalize, kWaitPush, kWaitPop };
const char* stage_name(Stage s);

struct BlockPipes {
  std::unique_ptr<TilePipe> sij, pij, oi;
};

// One recorded interval of a worker on its simulated clock (for traces and the summary).
struct Event {
  Stage stage;
  std::int64_t logical_block;
  std::int64_t page;
  const char* pipe;  // for waits
  int slot;          // for waits
  double t0_us, t1_us;
};

// A pipe-occupancy sample (tiles in flight), taken after a push or pop.
struct CounterSample {
  const char* pipe;
  double t_us;
  int tiles;
};

struct RuntimeConfig {
  int block_num = kDefaultHwBlocks;
  int depth = kDefaultPipeDepth;
  std::size_t sij_slot_bytes = 0, pij_slot_bytes = 0, oi_slot_bytes = 0;
  FreeMode free_mode = FreeMode::kAtPop;
  bool single_thread = false;
  double watchdog_seconds = 10;
  bool record = false;  // keep events for traces
};

class MixRuntime;

// A program's handle on its core: the pipe verbs plus what it is doing, for the watchdog.
class Worker {
 public:
  const CoreContext& ctx() const { return ctx_; }
  BlockPipes& pipes() { return *pipes_; }
  // Marks the start of a stage (for the watchdog report and the trace); ends the previous one.
  void stage(Stage s, std::int64_t logical_block, std::int64_t page);
  void tpush(TilePipe& pipe, const void* tile, std::size_t bytes, int lane = kWholeTile);
  void tpop(TilePipe& pipe, void* tile, std::size_t bytes, int lane = kWholeTile);
  void tfree(TilePipe& pipe, int lane = kWholeTile);
  void done();

 private:
  friend class MixRuntime;
  void wait_begin(const TilePipe& pipe, bool push, int lane);
  void wait_end(const TilePipe& pipe, bool push, int lane, double ready);
  void account();  // closes the running piece of the current stage on the simulated clock

  CoreContext ctx_;
  BlockPipes* pipes_ = nullptr;
  MixRuntime* runtime_ = nullptr;
  // Guarded by mutex_: read by the watchdog.
  mutable std::mutex mutex_;
  Stage stage_ = Stage::kIdle;
  std::int64_t logical_block_ = -1, page_ = -1;
  const TilePipe* waiting_on_ = nullptr;
  bool waiting_push_ = false;
  int waiting_lane_ = kWholeTile;
  bool done_ = false;
  // Simulated time: each core has its own clock, advanced by the thread CPU time its stages
  // take and moved forward to a tile's push (or a slot's free) time when it waits on a pipe,
  // so the trace shows the pipeline as on 3 * block_num independent cores, whatever the OS
  // does with the threads.
  double clock_us_ = 0;
  double cpu_mark_us_ = 0;
  std::vector<Event> events_;
  std::vector<CounterSample> counters_;

 public:
  // Recorded intervals and samples; read after MixRuntime::run returns.
  const std::vector<Event>& events() const { return events_; }
  const std::vector<CounterSample>& counters() const { return counters_; }
};

class MixRuntime {
 public:
  explicit MixRuntime(RuntimeConfig config);
  ~MixRuntime();
  // Runs program(worker) on every worker. Throws mixpa::Error naming every blocked worker,
  // pipe and slot if the pipeline deadlocks (watchdog or, single-threaded, at once).
  void run(const std::function<void(Worker&)>& program);

  void progressed() { ++progress_; }
  const RuntimeConfig& config() const { return config_; }
  const std::vector<std::unique_ptr<Worker>>& workers() const { return workers_; }

 private:
  std::string blocked_report() const;
  void close_all();

  RuntimeConfig config_;
  std::vector<BlockPipes> pipes_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<TurnScheduler> scheduler_;
  std::atomic<std::uint64_t> progress_{0};
};

}  // namespace mixpa::sim
