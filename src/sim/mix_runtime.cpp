// MixRuntime: pipes per hardware block, worker bookkeeping, watchdog, deadlock report.
#include "sim/mix_runtime.h"

#include <condition_variable>
#include <sstream>
#include <thread>

#include "mixpa/error.h"

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

// ---- Worker ---------------------------------------------------------------------------

void Worker::close_interval(double now) {
  if (runtime_->config().record && stage_ != Stage::kIdle && now > stage_t0_)
    events_.push_back(Event{stage_, logical_block_, page_, nullptr, -1, stage_t0_, now});
}

void Worker::stage(Stage s, std::int64_t logical_block, std::int64_t page) {
  const double now = runtime_->now_us();
  std::lock_guard lock(mutex_);
  close_interval(now);
  stage_ = s;
  logical_block_ = logical_block;
  page_ = page;
  stage_t0_ = now;
}

void Worker::wait_begin(const TilePipe& pipe, bool push, int lane) {
  std::lock_guard lock(mutex_);
  waiting_on_ = &pipe;
  waiting_push_ = push;
  waiting_lane_ = lane;
}

void Worker::wait_end(const TilePipe& pipe, bool push, int lane, double t0) {
  const double t1 = runtime_->now_us();
  std::lock_guard lock(mutex_);
  waiting_on_ = nullptr;
  // Waiting inside a pipe call is its own interval; time before it stays with the stage.
  if (runtime_->config().record && t1 - t0 > 1.0) {
    close_interval(t0);
    const PipeWait w = pipe.pending(push, lane);
    events_.push_back(Event{push ? Stage::kWaitPush : Stage::kWaitPop, logical_block_, page_,
                            pipe.config().name.c_str(), (w.slot + pipe.config().depth - 1) % pipe.config().depth, t0, t1});
    stage_t0_ = t1;
  }
  if (runtime_->config().record && !ctx_.sub_block_id)  // one vector lane samples for both
    counters_.push_back(CounterSample{pipe.config().name.c_str(), t1, pipe.occupancy()});
  runtime_->progressed();
}

void Worker::tpush(TilePipe& pipe, const void* tile, std::size_t bytes, int lane) {
  const double t0 = runtime_->now_us();
  wait_begin(pipe, true, lane);
  pipe.tpush(tile, bytes, lane);
  wait_end(pipe, true, lane, t0);
}

void Worker::tpop(TilePipe& pipe, void* tile, std::size_t bytes, int lane) {
  const double t0 = runtime_->now_us();
  wait_begin(pipe, false, lane);
  pipe.tpop(tile, bytes, lane);
  wait_end(pipe, false, lane, t0);
}

void Worker::tfree(TilePipe& pipe, int lane) {
  pipe.tfree(lane);
  runtime_->progressed();
}

void Worker::done() {
  const double now = runtime_->now_us();
  std::lock_guard lock(mutex_);
  close_interval(now);
  stage_ = Stage::kIdle;
  done_ = true;
}

// ---- MixRuntime -----------------------------------------------------------------------

MixRuntime::MixRuntime(RuntimeConfig config) : config_(config), start_(std::chrono::steady_clock::now()) {
  const int workers = 3 * config_.block_num;
  if (config_.single_thread) scheduler_ = std::make_unique<TurnScheduler>(workers);
  PipeWaiter* waiter = scheduler_.get();
  pipes_.resize(static_cast<std::size_t>(config_.block_num));
  for (BlockPipes& p : pipes_) {
    p.sij = std::make_unique<TilePipe>(
        PipeConfig{"sij", PipeDirection::kC2V, LaneSplit::kUpDown, config_.sij_slot_bytes, config_.depth, config_.free_mode}, waiter);
    p.pij = std::make_unique<TilePipe>(
        PipeConfig{"pij", PipeDirection::kV2C, LaneSplit::kUpDown, config_.pij_slot_bytes, config_.depth, config_.free_mode}, waiter);
    p.oi = std::make_unique<TilePipe>(
        PipeConfig{"oi", PipeDirection::kC2V, LaneSplit::kUpDown, config_.oi_slot_bytes, config_.depth, config_.free_mode}, waiter);
  }
  for (int w = 0; w < workers; ++w) {
    auto worker = std::make_unique<Worker>();
    worker->pipes_ = &pipes_[static_cast<std::size_t>(w / 3)];
    worker->runtime_ = this;
    workers_.push_back(std::move(worker));
  }
}

MixRuntime::~MixRuntime() = default;

double MixRuntime::now_us() const {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start_).count();
}

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
  if (!config_.single_thread) {
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
  }
  std::exception_ptr error;
  try {
    launch_mix(config_.block_num, config_.single_thread, scheduler_.get(),
               [&](const CoreContext& ctx) {
                 Worker& w = *workers_[static_cast<std::size_t>(ctx.worker)];
                 w.ctx_ = ctx;
                 program(w);
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
  if (!watchdog_report.empty()) {
    std::ostringstream s;
    s << "sim: deadlock: no worker made progress for " << config_.watchdog_seconds << " s; " << watchdog_report;
    throw Error(s.str());
  }
  if (scheduler_ && scheduler_->deadlocked())
    throw Error("sim: deadlock (single-thread scheduler: a full round without progress); " + blocked_report());
  if (error) std::rethrow_exception(error);
}

}  // namespace mixpa::sim
