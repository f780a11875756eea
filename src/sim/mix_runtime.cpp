// MixRuntime: pipes per hardware block, worker bookkeeping, watchdog, deadlock report.
#include "sim/mix_runtime.h"

#include <condition_variable>
#include <sstream>
#include <system_error>
#include <thread>
#include <ctime>
#include <algorithm>

#include "mixpa/error.h"
#include "sim/mix_check.h"

namespace mixpa::sim {

const char* stage_name(Stage s) {
  switch (s) {
    case Stage::kIdle: return "idle";
    case Stage::kLoad: return "load";
    case Stage::kQK: return "QK";
    case Stage::kSF: return "SF";
    case Stage::kPV: return "PV";
    case Stage::kUP: return "UP";
    case Stage::kFinalize: return "finalize";
    case Stage::kWaitPush: return "wait push";
    case Stage::kWaitPop: return "wait pop";
  }
  return "?";
}

// ---- Injections ---------------------------------------------------------------------------

namespace {
struct InjectionName {
  Injection id;
  const char* name;
};
constexpr InjectionName kInjections[] = {
    {Injection::kLaneHalf0, "lane-half0"},   {Injection::kFreeBeforeCopy, "free-before-copy"},
    {Injection::kSkipWait, "skip-wait"},     {Injection::kPushUnfreed, "push-unfreed"},
    {Injection::kSwapOrder, "swap-order"},   {Injection::kPopNoSplit, "pop-no-split"},
    {Injection::kSlotStride, "slot-stride"},
};
}  // namespace

Injection parse_injection(const std::string& name) {
  if (name.empty() || name == "none") return Injection::kNone;
  std::string names;
  for (const auto& i : kInjections) {
    if (name == i.name) return i.id;
    names += (names.empty() ? "" : ", ") + std::string(i.name);
  }
  throw Error("sim: --inject " + name + " is not a known bug; expected one of {" + names + "}");
}

const char* injection_name(Injection id) {
  for (const auto& i : kInjections)
    if (i.id == id) return i.name;
  return "none";
}

// ---- Worker ---------------------------------------------------------------------------

namespace {
thread_local const Worker* tl_current_worker = nullptr;  // for current_access()
}  // namespace

AccessTag current_access() { return tl_current_worker ? tl_current_worker->tag() : AccessTag{}; }

// Read by the worker's own thread (the only writer), so without the watchdog's mutex.
AccessTag Worker::tag() const {
  if (tag_override_) return *tag_override_;
  return AccessTag{ctx_.block_idx, ctx_.role, stage_, logical_block_, page_};
}

namespace {
double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) * 1e-3;
}
}  // namespace

void Worker::account() {
  const double cpu = thread_cpu_us();
  const double took = std::max(0.0, cpu - cpu_mark_us_);
  if (runtime_->config().record && stage_ != Stage::kIdle && took > 0)
    events_.push_back(Event{stage_, logical_block_, page_, nullptr, -1, clock_us_, clock_us_ + took});
  clock_us_ += took;
  cpu_mark_us_ = cpu;
}

void Worker::stage(Stage s, std::int64_t logical_block, std::int64_t page) {
  std::lock_guard lock(mutex_);
  account();
  stage_ = s;
  logical_block_ = logical_block;
  page_ = page;
}

void Worker::wait_begin(const TilePipe& pipe, bool push, int lane) {
  std::lock_guard lock(mutex_);
  account();
  waiting_on_ = &pipe;
  waiting_push_ = push;
  waiting_lane_ = lane;
}

void Worker::wait_end(const TilePipe& pipe, bool push, int lane, double ready) {
  std::lock_guard lock(mutex_);
  waiting_on_ = nullptr;
  // On the simulated clock the call waited until the slot was free (push) or the tile was
  // pushed (pop); blocking in the OS costs no CPU time, so it is not counted twice.
  if (ready > clock_us_) {
    if (runtime_->config().record) {
      const PipeWait w = pipe.pending(push, lane);
      const int slot = static_cast<int>((w.tile - 1) % pipe.config().depth);
      events_.push_back(Event{push ? Stage::kWaitPush : Stage::kWaitPop, logical_block_, page_,
                              pipe.config().name.c_str(), slot, clock_us_, ready});
    }
    clock_us_ = ready;
  }
  if (runtime_->config().record && !ctx_.sub_block_id)  // the cube and one vector lane sample
    counters_.push_back(CounterSample{pipe.config().name.c_str(), clock_us_, pipe.occupancy()});
  runtime_->progressed();
}

void Worker::push_now(TilePipe& pipe, const void* tile, std::size_t bytes, int lane) {
  wait_begin(pipe, true, lane);
  const double free_at = pipe.tpush(tile, bytes, lane, clock_us_);
  wait_end(pipe, true, lane, free_at);
}

void Worker::flush_held() {
  if (held_.empty()) return;
  std::vector<std::byte> tile;
  tile.swap(held_);
  tag_override_ = &held_tag_;
  push_now(*pipes_->sij, tile.data(), tile.size(), held_lane_);
  tag_override_ = nullptr;
}

void Worker::tpush(TilePipe& pipe, const void* tile, std::size_t bytes, int lane) {
  if (inject_ == Injection::kSwapOrder && &pipe == pipes_->sij.get()) {
    if (held_.empty() && page_ == 0) {  // hold page 0's scores back...
      const auto* b = static_cast<const std::byte*>(tile);
      held_.assign(b, b + bytes);
      held_lane_ = lane;
      held_tag_ = tag();
      return;
    }
    if (!held_.empty()) {  // ...and push them after page 1's
      push_now(pipe, tile, bytes, lane);
      flush_held();
      return;
    }
  }
  flush_held();
  push_now(pipe, tile, bytes, lane);
}

void Worker::tpop(TilePipe& pipe, void* tile, std::size_t bytes, int lane) {
  flush_held();
  wait_begin(pipe, false, lane);
  double ready = 0;
  if (inject_ == Injection::kFreeBeforeCopy && &pipe == pipes_->sij.get() && ctx_.role != CoreRole::kCube) {
    const PopTicket t = pipe.consumer_wait(bytes, lane, clock_us_);
    pipe.tfree(lane, clock_us_);  // the bug: the slot goes back before its data is copied out
    ++early_freed_;
    pipe.copy_out(t, tile);
    ready = t.ready;
  } else {
    ready = pipe.tpop(tile, bytes, lane, clock_us_);
  }
  wait_end(pipe, false, lane, ready);
}

void Worker::tfree(TilePipe& pipe, int lane) {
  flush_held();
  if (pipe.config().free_mode == FreeMode::kAtPop) return;
  if (early_freed_ > 0 && &pipe == pipes_->sij.get()) {
    --early_freed_;
    return;
  }
  pipe.tfree(lane, clock_us_);
  runtime_->progressed();
}

void Worker::done() {
  std::lock_guard lock(mutex_);
  account();
  stage_ = Stage::kIdle;
  done_ = true;
}

// ---- MixRuntime -----------------------------------------------------------------------

MixRuntime::MixRuntime(RuntimeConfig config) : config_(config) {
  const int workers = 3 * config_.block_num;
  if (config_.random_schedule) config_.single_thread = true;
  if (config_.single_thread) {
    scheduler_ = std::make_unique<TurnScheduler>(workers);
    if (config_.random_schedule) scheduler_->set_random(config_.schedule_seed);
  }
  PipeWaiter* waiter = scheduler_.get();
  // Faults of the pipe configuration; free-before-copy needs pipes that wait for TFREE.
  const Injection inject = config_.inject;
  const FreeMode mode = inject == Injection::kFreeBeforeCopy ? FreeMode::kExplicit : config_.free_mode;
  auto make = [&](const char* name, PipeDirection dir, std::size_t bytes, PipeFault fault) {
    PipeConfig c{name, dir, LaneSplit::kUpDown, bytes, config_.depth, mode};
    c.tile_rows = config_.tile_rows;
    c.fault = fault;
    return std::make_unique<TilePipe>(c, waiter);
  };
  auto fault = [&](Injection when, PipeFault f) { return inject == when ? f : PipeFault::kNone; };
  pipes_.resize(static_cast<std::size_t>(config_.block_num));
  for (BlockPipes& p : pipes_) {
    const PipeFault c2v_half0 = fault(Injection::kLaneHalf0, PipeFault::kPopHalfZero);
    PipeFault sij_fault = c2v_half0;
    if (inject == Injection::kPushUnfreed) sij_fault = PipeFault::kPushSkipsWait;
    if (inject == Injection::kSlotStride) sij_fault = PipeFault::kLocalStrideFullSlot;
    const PipeFault oi_fault = inject == Injection::kSkipWait ? PipeFault::kPopSkipsWait : c2v_half0;
    p.sij = make("sij", PipeDirection::kC2V, config_.sij_slot_bytes, sij_fault);
    p.pij = make("pij", PipeDirection::kV2C, config_.pij_slot_bytes, fault(Injection::kPopNoSplit, PipeFault::kPopNoSplit));
    p.oi = make("oi", PipeDirection::kC2V, config_.oi_slot_bytes, oi_fault);
  }
  if (config_.check) {
    checker_ = std::make_unique<MixChecker>();
    // A vector lane's local memory: the sij ring, then the oi ring; the cube's: the pij ring.
    for (int b = 0; b < config_.block_num; ++b) {
      BlockPipes& p = pipes_[static_cast<std::size_t>(b)];
      PipeShadow* oi = checker_->attach(*p.oi, b, nullptr);
      checker_->attach(*p.sij, b, oi);
      checker_->attach(*p.pij, b, nullptr);
    }
  }
  for (int w = 0; w < workers; ++w) {
    auto worker = std::make_unique<Worker>();
    worker->pipes_ = &pipes_[static_cast<std::size_t>(w / 3)];
    worker->runtime_ = this;
    worker->inject_ = inject;
    workers_.push_back(std::move(worker));
  }
}

MixRuntime::~MixRuntime() = default;

void MixRuntime::close_all() {
  for (BlockPipes& p : pipes_) {
    p.sij->close();
    p.pij->close();
    p.oi->close();
  }
}

std::string MixRuntime::blocked_report() const {
  std::ostringstream s;
  int blocked = 0;
  for (const auto& w : workers_) {
    std::lock_guard lock(w->mutex_);
    if (w->done_ || !w->waiting_on_) continue;
    const PipeWait pw = w->waiting_on_->pending(w->waiting_push_, w->waiting_lane_);
    s << (blocked++ ? "; " : "") << "block " << w->ctx_.block_idx << ' ' << core_name(w->ctx_.role)
      << " (logical block " << w->logical_block_ << ", page " << w->page_ << ", in " << stage_name(w->stage_)
      << ") waits to " << pw.op << ' ' << w->waiting_on_->config().name << " slot " << pw.slot << " (tile " << pw.tile
      << ')';
  }
  return std::to_string(blocked) + " workers blocked: " + s.str();
}

void MixRuntime::run(const std::function<void(Worker&)>& program) {
  std::mutex m;
  std::condition_variable cv;
  bool finished = false;
  std::string watchdog_report;
  std::thread watchdog;
  if (!config_.single_thread) try {
    watchdog = std::thread([&] {
      std::uint64_t seen = progress_.load();
      auto last = std::chrono::steady_clock::now();
      std::unique_lock lock(m);
      while (!cv.wait_for(lock, std::chrono::milliseconds(20), [&] { return finished; })) {
        const std::uint64_t now_progress = progress_.load();
        const auto now = std::chrono::steady_clock::now();
        if (now_progress != seen) {
          seen = now_progress;
          last = now;
        } else if (std::chrono::duration<double>(now - last).count() > config_.watchdog_seconds) {
          watchdog_report = blocked_report();
          close_all();  // blocked workers throw "closed" and unwind
          return;
        }
      }
    });
  } catch (const std::system_error& e) {
    throw Error(std::string("sim: cannot start the watchdog thread: ") + e.what());
  }
  std::exception_ptr error;
  try {
    launch_mix(config_.block_num, config_.single_thread, scheduler_.get(),
               [&](const CoreContext& ctx) {
                 Worker& w = *workers_[static_cast<std::size_t>(ctx.worker)];
                 w.ctx_ = ctx;
                 tl_current_worker = &w;
                 w.cpu_mark_us_ = thread_cpu_us();
                 program(w);
                 w.flush_held();
                 w.done();
               },
               [&] { close_all(); });
  } catch (...) {
    error = std::current_exception();
  }
  if (watchdog.joinable()) {
    {
      std::lock_guard lock(m);
      finished = true;
    }
    cv.notify_all();
    watchdog.join();
  }
  // The checker's finding is the cause; the other workers' errors are its unwinding.
  if (checker_ && checker_->failed()) throw SimCheckError(checker_->report());
  if (!watchdog_report.empty()) {
    std::ostringstream s;
    s << "sim: deadlock: no worker made progress for " << config_.watchdog_seconds << " s; " << watchdog_report;
    throw Error(s.str());
  }
  if (scheduler_ && scheduler_->deadlocked())
    throw Error("sim: deadlock (turn scheduler: every live worker waits and nothing changed since it looked); " +
                blocked_report());
  if (error) std::rethrow_exception(error);
}

}  // namespace mixpa::sim
