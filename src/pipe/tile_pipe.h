// Tile pipes with the origin's semantics (SPEC §2): a FIFO of `depth` slots of `slot_bytes`,
// one direction, back-pressure when every slot holds an unconsumed tile, and the lane split.
//
// A side of a pipe has one or two *parts*: with TILE_UP_DOWN the vector side is two lanes,
// lane k owning rows [k*R/2, (k+1)*R/2) of every tile, i.e. bytes [k*B/2, (k+1)*B/2) of a
// row-major tile of B bytes. A tile is full when every producer part has pushed it, and its
// slot is free again when every consumer part has freed it. All state is counters per part:
// tile n lives in slot n % depth, which is free for it once every consumer freed tile n - depth.
//
// Under the verbs, CUTLASS's split: tpush = producer_acquire + copy + producer_commit,
// tpop = consumer_wait + copy (+ consumer_release when freeing at pop), tfree = consumer_release.
//
// For the sim's checker (src/sim/mix_check.h) a pipe reports every access to an observer, and
// for its mutation tests a pipe can be configured with one deliberate fault (PipeFault).
#pragma once

#include <array>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace mixpa {

enum class PipeDirection : std::uint8_t { kC2V, kV2C };
enum class LaneSplit : std::uint8_t { kUpDown, kNoSplit };  // TILE_UP_DOWN / TILE_NO_SPLIT
enum class FreeMode : std::uint8_t { kAtPop, kExplicit };  // origin's generation frees at pop

inline constexpr int kWholeTile = -1;  // the lane argument of the cube's (unsplit) side

// Test hook: one deliberately broken piece of the pipe protocol, as kernels and pipe
// declarations have got it wrong on hardware. kNone everywhere outside mutation tests.
enum class PipeFault : std::uint8_t {
  kNone,
  kPopSkipsWait,       // consumer_wait skipped: a pop copies whatever the slot holds now
  kPushSkipsWait,      // producer_acquire skipped: a push writes its slot even if it is not free
  kPopHalfZero,        // a split consumer's lane offset is always 0 (both lanes read half 0)
  kPopNoSplit,         // V2C popped without the lane split: waits for and releases lane 0 only
  kLocalStrideFullSlot,  // consumer's local slots strided by a full slot, budgeted a lane's share
};

struct PipeConfig {
  std::string name;
  PipeDirection direction = PipeDirection::kC2V;
  LaneSplit split = LaneSplit::kUpDown;
  std::size_t slot_bytes = 0;
  int depth = 2;
  FreeMode free_mode = FreeMode::kAtPop;
  int tile_rows = 0;  // rows of a whole tile, for reports in rows (0 = unknown: bytes)
  PipeFault fault = PipeFault::kNone;
};

class TilePipe;

// One access, as an observer sees it (called with the pipe's lock held, in the pipe's order).
struct PipeAccess {
  enum Kind : std::uint8_t { kPush, kPop, kRead, kFree } kind = kPush;
  int part = 0;               // producer part (push) or consumer part (pop, read, free)
  std::int64_t tile = -1;     // the tile this part's call is for (its n-th push / pop / free)
  int slot = -1;              // tile % depth
  std::size_t offset = 0;     // bytes of the slot copied: [offset, offset + bytes)
  std::size_t bytes = 0;
  int local_slot = -1;        // pop: where the tile lands in the consumer's local ring
  std::size_t local_offset = 0;  //   (byte offset from the ring's start)
};

struct PipeObserver {
  virtual ~PipeObserver() = default;
  // May throw to abandon the call (the pipe's state is then as after the access).
  virtual void on_access(const TilePipe& pipe, const PipeAccess& access) = 0;
};

// A pop split in two (consumer_wait, then copy_out), so a program can do things in between.
struct PopTicket {
  int part = 0;
  std::int64_t tile = -1;
  int slot = -1;
  std::size_t offset = 0, bytes = 0;
  double ready = 0;
};

// How a blocked call waits: the default sleeps on the pipe's condition variable; the
// deterministic scheduler substitutes a turn-passing wait. `ready` is called with the pipe's
// lock held; the wait must return once it is true, or throw to abandon the call.
struct PipeWaiter {
  virtual ~PipeWaiter() = default;
  virtual void wait(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                    const std::function<bool()>& ready) = 0;
  virtual void notify(std::condition_variable& cv) { cv.notify_all(); }
  // Called before every pipe call, without the pipe's lock: a scheduler may switch workers here.
  virtual void yield_point() {}
};

// What a blocked caller waits for, for the watchdog's report.
struct PipeWait {
  const char* op = "";  // "push" or "pop"
  int slot = -1;
  std::int64_t tile = -1;
};

class TilePipe {
 public:
  explicit TilePipe(PipeConfig config, PipeWaiter* waiter = nullptr);

  // Producer: waits for the slot of this part's next tile to be free (back-pressure), copies
  // `bytes` (a whole tile, or a lane's half) into it and publishes it.
  // Simulated time: `now` is the caller's clock; returns when the slot became free in that
  // time (the latest free of its previous tile by any consumer part), so a caller's clock is
  // max(now, returned) after the push.
  double tpush(const void* tile, std::size_t bytes, int lane = kWholeTile, double now = 0);
  // Consumer: waits for this part's next tile to be full and copies `bytes` out of it; frees
  // the slot part at once when the pipe frees at pop. Returns the tile's ready time (the
  // latest push of it by any producer part).
  double tpop(void* tile, std::size_t bytes, int lane = kWholeTile, double now = 0);
  // Consumer, FreeMode::kExplicit: hands back the oldest popped, unfreed tile of this part.
  void tfree(int lane = kWholeTile, double now = 0);
  // tpop in two steps, FreeMode::kExplicit only: wait for the tile (it counts as popped), and
  // later copy it out of its slot, whatever the slot holds by then.
  PopTicket consumer_wait(std::size_t bytes, int lane = kWholeTile, double now = 0);
  void copy_out(const PopTicket& ticket, void* tile);

  // Sees every access from now on; set before the pipe is used.
  void set_observer(PipeObserver* observer) { observer_ = observer; }
  int producer_parts() const;
  int consumer_parts() const;

  // Wakes every waiter; later and pending calls throw mixpa::Error ("closed").
  void close();
  bool closed() const;

  const PipeConfig& config() const { return config_; }
  // The slot and tile a part's next push or pop is for (the watchdog names them).
  PipeWait pending(bool push, int lane) const;
  int occupancy() const;  // tiles pushed by every producer part and not yet freed by every consumer part

 private:
  int part_index(int lane, bool producer_side, const char* op) const;
  std::int64_t min_of(const std::vector<std::int64_t>& v) const;
  void check_open(const char* op) const;
  std::size_t checked_bytes(std::size_t bytes, int parts) const;
  std::int64_t wait_pop_locked(std::unique_lock<std::mutex>& lock, int part);
  void release_locked(int part, std::int64_t tile, double at);
  PopTicket pop_locked(std::unique_lock<std::mutex>& lock, std::size_t bytes, int part);
  void notify_observer(const PipeAccess& a) const {
    if (observer_) observer_->on_access(*this, a);
  }

  PipeConfig config_;
  PipeWaiter* waiter_;
  std::vector<std::byte> slots_;  // depth * slot_bytes
  PipeObserver* observer_ = nullptr;
  std::vector<std::int64_t> pushed_, popped_, freed_;  // per part
  // Per producer part: tiles whose slot part is released to it. Normally the slowest consumer
  // part's freed count for every producer part; PipeFault::kPopNoSplit releases lane 0 only.
  std::vector<std::int64_t> released_;
  std::vector<double> ready_at_, freed_at_;  // per part x slot: simulated push / free time
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool closed_ = false;
};

}  // namespace mixpa
