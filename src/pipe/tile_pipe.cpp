// Tile pipe: counters per part, a condition variable (or a scheduler's wait) for blocking.
#include "pipe/tile_pipe.h"

#include <algorithm>
#include <cstring>

#include "mixpa/error.h"

namespace mixpa {
namespace {

struct DefaultWaiter final : PipeWaiter {
  void wait(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, const std::function<bool()>& ready) override {
    cv.wait(lock, ready);
  }
};

DefaultWaiter& default_waiter() {
  static DefaultWaiter w;
  return w;
}

}  // namespace

TilePipe::TilePipe(PipeConfig config, PipeWaiter* waiter)
    : config_(std::move(config)), waiter_(waiter ? waiter : &default_waiter()) {
  if (config_.depth < 1) throw Error("pipe " + config_.name + ": depth " + std::to_string(config_.depth) + " must be >= 1");
  if (config_.slot_bytes == 0) throw Error("pipe " + config_.name + ": slot_bytes must be > 0");
  slots_.resize(config_.slot_bytes * static_cast<std::size_t>(config_.depth));
  pushed_.assign(producer_parts(), 0);
  popped_.assign(consumer_parts(), 0);
  freed_.assign(consumer_parts(), 0);
  released_.assign(producer_parts(), 0);
  ready_at_.assign(static_cast<std::size_t>(producer_parts() * config_.depth), 0.0);
  freed_at_.assign(static_cast<std::size_t>(consumer_parts() * config_.depth), 0.0);
}

int TilePipe::producer_parts() const {
  return config_.split == LaneSplit::kUpDown && config_.direction == PipeDirection::kV2C ? 2 : 1;
}
int TilePipe::consumer_parts() const {
  return config_.split == LaneSplit::kUpDown && config_.direction == PipeDirection::kC2V ? 2 : 1;
}

int TilePipe::part_index(int lane, bool producer_side, const char* op) const {
  const int parts = producer_side ? producer_parts() : consumer_parts();
  if (parts == 2) {
    if (lane != 0 && lane != 1)
      throw Error("pipe " + config_.name + ": " + op + " with lane id " + std::to_string(lane) +
                  ", the split side's lanes are {0, 1}");
    return lane;
  }
  if (lane != kWholeTile && lane != 0)
    throw Error("pipe " + config_.name + ": " + op + " with lane id " + std::to_string(lane) +
                " on the unsplit side (whole tiles)");
  return 0;
}

std::int64_t TilePipe::min_of(const std::vector<std::int64_t>& v) const { return *std::min_element(v.begin(), v.end()); }

void TilePipe::check_open(const char* op) const {
  if (closed_) throw Error("pipe " + config_.name + ": " + op + " on a closed pipe");
}

std::size_t TilePipe::checked_bytes(std::size_t bytes, int parts) const {
  if (bytes * parts > config_.slot_bytes)
    throw Error("pipe " + config_.name + ": tile of " + std::to_string(bytes * parts) + " bytes exceeds the slot of " +
                std::to_string(config_.slot_bytes) + " bytes");
  return bytes;
}

double TilePipe::tpush(const void* tile, std::size_t bytes, int lane, double now) {
  waiter_->yield_point();
  const int part = part_index(lane, true, "push");
  checked_bytes(bytes, producer_parts());
  std::unique_lock lock(mutex_);
  check_open("push");
  const std::int64_t n = pushed_[part];
  // producer_acquire: tile n may use slot n % depth once its previous tile n - depth is
  // released to this part (every consumer part freed it).
  if (config_.fault != PipeFault::kPushSkipsWait)
    waiter_->wait(lock, cv_, [&] { return closed_ || n < released_[part] + config_.depth; });
  check_open("push");
  const int index = static_cast<int>(n % config_.depth);
  std::byte* slot = slots_.data() + static_cast<std::size_t>(index) * config_.slot_bytes;
  std::memcpy(slot + part * bytes, tile, bytes);
  // Every consumer part has freed this slot's previous tile (and not yet this one).
  double free_time = 0;
  for (int c = 0; c < consumer_parts(); ++c) free_time = std::max(free_time, freed_at_[c * config_.depth + index]);
  ready_at_[part * config_.depth + index] = std::max(now, free_time);
  ++pushed_[part];  // producer_commit
  waiter_->notify(cv_);
  PipeAccess a;
  a.kind = PipeAccess::kPush;
  a.part = part;
  a.tile = n;
  a.slot = index;
  a.offset = part * bytes;
  a.bytes = bytes;
  notify_observer(a);
  return free_time;
}

std::int64_t TilePipe::wait_pop_locked(std::unique_lock<std::mutex>& lock, int part) {
  check_open("pop");
  const std::int64_t n = popped_[part];
  // consumer_wait: tile n is full once every producer part pushed it.
  if (config_.fault == PipeFault::kPopNoSplit && producer_parts() == 2)
    waiter_->wait(lock, cv_, [&] { return closed_ || n < pushed_[0]; });
  else if (config_.fault != PipeFault::kPopSkipsWait)
    waiter_->wait(lock, cv_, [&] { return closed_ || n < min_of(pushed_); });
  check_open("pop");
  return n;
}

void TilePipe::release_locked(int part, std::int64_t tile, double at) {
  freed_at_[part * config_.depth + static_cast<int>(tile % config_.depth)] = at;
  ++freed_[part];  // consumer_release
  if (config_.fault == PipeFault::kPopNoSplit && producer_parts() == 2) {
    ++released_[0];  // the unsplit free hands back lane 0's part of the slot only
  } else {
    const std::int64_t all = min_of(freed_);
    for (auto& r : released_) r = all;
  }
  waiter_->notify(cv_);
}

namespace {
PipeAccess access_of(PipeAccess::Kind kind, const PopTicket& t) {
  PipeAccess a;
  a.kind = kind;
  a.part = t.part;
  a.tile = t.tile;
  a.slot = t.slot;
  a.offset = t.offset;
  a.bytes = t.bytes;
  return a;
}
}  // namespace

PopTicket TilePipe::pop_locked(std::unique_lock<std::mutex>& lock, std::size_t bytes, int part) {
  PopTicket t;
  t.part = part;
  t.tile = wait_pop_locked(lock, part);
  t.slot = static_cast<int>(t.tile % config_.depth);
  t.offset = config_.fault == PipeFault::kPopHalfZero ? 0 : part * bytes;
  t.bytes = bytes;
  for (int p = 0; p < producer_parts(); ++p) t.ready = std::max(t.ready, ready_at_[p * config_.depth + t.slot]);
  ++popped_[part];
  PipeAccess a = access_of(PipeAccess::kPop, t);
  // The consumer's local ring: a share of a slot per local slot, unless the fault strides it
  // by a whole slot.
  const std::size_t stride =
      config_.fault == PipeFault::kLocalStrideFullSlot ? config_.slot_bytes : config_.slot_bytes / consumer_parts();
  a.local_slot = t.slot;
  a.local_offset = static_cast<std::size_t>(a.local_slot) * stride;
  notify_observer(a);
  return t;
}

double TilePipe::tpop(void* tile, std::size_t bytes, int lane, double now) {
  waiter_->yield_point();
  const int part = part_index(lane, false, "pop");
  checked_bytes(bytes, consumer_parts());
  std::unique_lock lock(mutex_);
  const PopTicket t = pop_locked(lock, bytes, part);
  std::memcpy(tile, slots_.data() + static_cast<std::size_t>(t.slot) * config_.slot_bytes + t.offset, bytes);
  if (config_.free_mode == FreeMode::kAtPop) {
    release_locked(part, t.tile, std::max(now, t.ready));
    notify_observer(access_of(PipeAccess::kFree, t));
  }
  return t.ready;
}

PopTicket TilePipe::consumer_wait(std::size_t bytes, int lane, double now) {
  (void)now;
  waiter_->yield_point();
  const int part = part_index(lane, false, "pop");
  checked_bytes(bytes, consumer_parts());
  if (config_.free_mode == FreeMode::kAtPop)
    throw Error("pipe " + config_.name + ": a split pop (wait, then copy) needs explicit free");
  std::unique_lock lock(mutex_);
  return pop_locked(lock, bytes, part);
}

void TilePipe::copy_out(const PopTicket& t, void* tile) {
  waiter_->yield_point();
  std::unique_lock lock(mutex_);
  check_open("read");
  std::memcpy(tile, slots_.data() + static_cast<std::size_t>(t.slot) * config_.slot_bytes + t.offset, t.bytes);
  notify_observer(access_of(PipeAccess::kRead, t));
}

void TilePipe::tfree(int lane, double now) {
  waiter_->yield_point();
  const int part = part_index(lane, false, "free");
  std::unique_lock lock(mutex_);
  check_open("free");
  if (config_.free_mode == FreeMode::kAtPop)
    throw Error("pipe " + config_.name + ": free on a pipe that frees at pop");
  if (freed_[part] >= popped_[part]) throw Error("pipe " + config_.name + ": free without a pop");
  PopTicket t;
  t.part = part;
  t.tile = freed_[part];
  t.slot = static_cast<int>(t.tile % config_.depth);
  release_locked(part, t.tile, now);
  notify_observer(access_of(PipeAccess::kFree, t));
}

void TilePipe::close() {
  std::lock_guard lock(mutex_);
  closed_ = true;
  cv_.notify_all();
}

bool TilePipe::closed() const {
  std::lock_guard lock(mutex_);
  return closed_;
}

PipeWait TilePipe::pending(bool push, int lane) const {
  std::lock_guard lock(mutex_);
  const int part = lane == kWholeTile ? 0 : lane;
  const auto& counters = push ? pushed_ : popped_;
  PipeWait w;
  w.op = push ? "push" : "pop";
  if (part < 0 || part >= static_cast<int>(counters.size())) return w;
  w.tile = counters[part];
  w.slot = static_cast<int>(w.tile % config_.depth);
  return w;
}

int TilePipe::occupancy() const {
  std::lock_guard lock(mutex_);
  return static_cast<int>(min_of(pushed_) - min_of(freed_));
}

}  // namespace mixpa
