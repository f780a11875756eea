// The runtime the simulated MIX programs run on: per hardware block the three pipes
// (sij C2V, pij V2C, oi C2V), the SPMD launch, the watchdog and the stage/wait recording.
// A program talks to it only through Worker: tpush / tpop / tfree and stage markers.
// Debugging aids: the --check shadow state (mix_check.h), seeded random turn schedules, and a
// test hook that injects one known bug class into the pipes or the programs' pipe calls.
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

// Who accesses a pipe, in which iteration: a worker's place and its current stage.
struct AccessTag {
  int block = -1;
  CoreRole role = CoreRole::kCube;
  Stage stage = Stage::kIdle;
  std::int64_t logical_block = -1, page = -1;
};
// The tag of the worker running on this thread (block -1 outside workers).
AccessTag current_access();

// Bugs the mutation tests inject (SimOptions::inject, docs/sim.md), each a bug class that hit
// the origin or its port on hardware.
enum class Injection : std::uint8_t {
  kNone,
  kLaneHalf0,       // both vector lanes read half 0 of C2V tiles (lane identity)
  kFreeBeforeCopy,  // explicit free: the vectors free an sij slot before copying it out
  kSkipWait,        // the vectors pop oi without waiting for the cube's push
  kPushUnfreed,     // the cube pushes sij without waiting for a free slot
  kSwapOrder,       // the cube pushes the scores of pages 0 and 1 of a logical block swapped
  kPopNoSplit,      // upstream PR #1898 (b): pij popped without the lane split
  kSlotStride,      // upstream PR #1898 (a): sij local slots strided by a full slot
};
Injection parse_injection(const std::string& name);  // "" = kNone; throws Error naming the choices
const char* injection_name(Injection i);

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
  bool check = false;   // shadow state (mix_check.h); a finding throws SimCheckError
  bool random_schedule = false;  // seeded random turns (implies single_thread)
  std::uint64_t schedule_seed = 0;
  int tile_rows = 0;    // q_tile, for reports in rows
  Injection inject = Injection::kNone;
};

class MixChecker;

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
  // A no-op on a pipe that frees at pop (the pop already freed).
  void tfree(TilePipe& pipe, int lane = kWholeTile);
  void done();
  AccessTag tag() const;

 private:
  friend class MixRuntime;
  void wait_begin(const TilePipe& pipe, bool push, int lane);
  void wait_end(const TilePipe& pipe, bool push, int lane, double ready);
  void account();  // closes the running piece of the current stage on the simulated clock
  void push_now(TilePipe& pipe, const void* tile, std::size_t bytes, int lane);
  void flush_held();  // Injection::kSwapOrder: the push held back

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
  // Injections that live in the program's pipe calls.
  Injection inject_ = Injection::kNone;
  std::vector<std::byte> held_;      // kSwapOrder: page 0's scores, pushed after page 1's
  int held_lane_ = kWholeTile;
  AccessTag held_tag_;
  const AccessTag* tag_override_ = nullptr;  // the held push keeps the tag it was made with
  int early_freed_ = 0;  // kFreeBeforeCopy: frees done at the pop, the program's own skipped

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
  // pipe and slot if the pipeline deadlocks (watchdog or, single-threaded, at once), and
  // SimCheckError with the first report when the checker finds something.
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
  std::unique_ptr<MixChecker> checker_;
  std::atomic<std::uint64_t> progress_{0};
};

}  // namespace mixpa::sim
