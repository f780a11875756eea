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

struct PipeConfig {
  std::string name;
  PipeDirection direction = PipeDirection::kC2V;
  LaneSplit split = LaneSplit::kUpDown;
  std::size_t slot_bytes = 0;
  int depth = 2;
  FreeMode free_mode = FreeMode::kAtPop;
};

// How a blocked call waits: the default sleeps on the pipe's condition variable; the
// deterministic scheduler substitutes a turn-passing wait. `ready` is called with the pipe's
// lock held; the wait must return once it is true, or throw to abandon the call.
struct PipeWaiter {
  virtual ~PipeWaiter() = default;
  virtual void wait(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                    const std::function<bool()>& ready) = 0;
  virtual void notify(std::condition_variable& cv) { cv.notify_all(); }
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

  // Wakes every waiter; later and pending calls throw mixpa::Error ("closed").
  void close();
  bool closed() const;

  const PipeConfig& config() const { return config_; }
  // The slot and tile a part's next push or pop is for (the watchdog names them).
  PipeWait pending(bool push, int lane) const;
  int occupancy() const;  // tiles pushed by every producer part and not yet freed by every consumer part

 private:
  int producer_parts() const;
  int consumer_parts() const;
  int part_index(int lane, bool producer_side, const char* op) const;
  std::int64_t min_of(const std::vector<std::int64_t>& v) const;
  void check_open(const char* op) const;

  PipeConfig config_;
  PipeWaiter* waiter_;
  std::vector<std::byte> slots_;  // depth * slot_bytes
  std::vector<std::int64_t> pushed_, popped_, freed_;  // per part
  std::vector<double> ready_at_, freed_at_;  // per part x slot: simulated push / free time
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool closed_ = false;
};

}  // namespace mixpa
