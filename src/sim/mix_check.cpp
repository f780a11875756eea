// The checker's shadow state: per pipe slot the last write of each producer part, the reads of
// the current tile and the frees of each consumer part; per consumer part its local ring.
#include "sim/mix_check.h"

#include <algorithm>
#include <array>
#include <sstream>

#include "mixpa/paged_attention.h"

namespace mixpa::sim {

std::string describe(const AccessTag& who) {
  if (who.block < 0) return "a caller outside the workers";
  std::ostringstream s;
  s << "block " << who.block << ' ' << core_name(who.role);
  if (who.role != CoreRole::kCube) s << " (lane " << (who.role == CoreRole::kVector1 ? 1 : 0) << ')';
  if (who.logical_block < 0) s << " before its first logical block";
  else {
    s << " in " << stage_name(who.stage) << " of logical block " << who.logical_block;
    if (who.page >= 0) s << ", page " << who.page;
  }
  return s.str();
}

namespace {

struct Write {
  std::int64_t tile = -1;
  AccessTag who;
};
struct Read {
  int part = 0;
  std::size_t offset = 0, bytes = 0;
  AccessTag who;
};
struct SlotShadow {
  std::array<Write, 2> written;  // per producer part: its last completed push into this slot
  std::size_t tile_bytes = 0;    // the whole tile, as pushed
  std::int64_t reads_tile = -1;  // the tile `reads` are of (C2V lane coverage)
  std::vector<Read> reads;
  std::array<Write, 2> popped, freed;  // per consumer part: its last pop / free of this slot
};
struct Pop {
  std::int64_t tile = -1;
  AccessTag who;
};

}  // namespace

class PipeShadow final : public PipeObserver {
 public:
  PipeShadow(MixChecker& checker, const TilePipe& pipe, int block, PipeShadow* next)
      : checker_(checker), config_(pipe.config()), block_(block), producers_(pipe.producer_parts()),
        consumers_(pipe.consumer_parts()), next_(next), slots_(static_cast<std::size_t>(config_.depth)) {}

  void on_access(const TilePipe&, const PipeAccess& a) override {
    const AccessTag who = current_access();
    switch (a.kind) {
      case PipeAccess::kPush: return push(a, who);
      case PipeAccess::kPop: return pop(a, who);
      case PipeAccess::kRead: return read(a, who);
      case PipeAccess::kFree: return release(a, who);
    }
  }

  // What this pipe's local ring holds for consumer part `part` (the "next buffer" of a report).
  std::string local_holding(int part) const {
    const Pop& p = last_pop_[static_cast<std::size_t>(part)];
    std::ostringstream s;
    s << "the " << config_.name << " local ring";
    if (p.tile >= 0) s << ", which holds " << config_.name << " tile " << p.tile << " popped by " << describe(p.who);
    return s.str();
  }

 private:
  std::string lane_name(int part, bool producer) const {
    const bool split = producer ? producers_ == 2 : consumers_ == 2;
    if (!split) return "the cube";
    return "lane " + std::to_string(part);
  }

  std::string rows(std::size_t offset, std::size_t bytes, std::size_t tile_bytes) const {
    std::ostringstream s;
    if (config_.tile_rows > 0 && tile_bytes > 0 && tile_bytes % static_cast<std::size_t>(config_.tile_rows) == 0) {
      const std::size_t row = tile_bytes / static_cast<std::size_t>(config_.tile_rows);
      s << "rows [" << offset / row << ", " << (offset + bytes + row - 1) / row << ')';
    } else {
      s << "bytes [" << offset << ", " << offset + bytes << ')';
    }
    return s.str();
  }

  [[noreturn]] void fail(const std::string& what, const PipeAccess& a, const std::string& access,
                         const std::string& conflict, const std::string& hint) {
    std::ostringstream s;
    s << "sim check: " << what << "\n  pipe " << config_.name << " ("
      << (config_.direction == PipeDirection::kC2V ? "C2V" : "V2C") << ", depth " << config_.depth << ") of block "
      << block_ << ", slot " << a.slot << ", tile " << a.tile << "\n  access:   " << access
      << "\n  conflict: " << conflict;
    if (!hint.empty()) s << "\n  hint: " << hint;
    checker_.fail(s.str());
  }

  void push(const PipeAccess& a, const AccessTag& who) {
    SlotShadow& slot = slots_[static_cast<std::size_t>(a.slot)];
    const std::int64_t previous = a.tile - config_.depth;
    if (previous >= 0) {
      for (int c = 0; c < consumers_; ++c) {
        if (freed_count_[static_cast<std::size_t>(c)] > previous) continue;
        const Write& popped = slot.popped[static_cast<std::size_t>(c)];
        const Write& prev_write = slot.written[static_cast<std::size_t>(a.part)];
        std::ostringstream conflict;
        conflict << "tile " << previous << ", pushed by " << describe(prev_write.who) << ", is not yet freed by "
                 << lane_name(c, false) << ": ";
        if (popped.tile == previous) conflict << "popped by " << describe(popped.who) << ", no free yet";
        else conflict << "not popped yet";
        fail("push into a slot not yet freed", a,
             describe(who) + " pushes tile " + std::to_string(a.tile) + " (" +
                 rows(a.offset, a.bytes, a.bytes * static_cast<std::size_t>(producers_)) + ")",
             conflict.str(), "the push did not wait for the slot (producer_acquire / back-pressure)");
      }
    }
    slot.written[static_cast<std::size_t>(a.part)] = Write{a.tile, who};
    slot.tile_bytes = a.bytes * static_cast<std::size_t>(producers_);
  }

  void pop(const PipeAccess& a, const AccessTag& who) {
    SlotShadow& slot = slots_[static_cast<std::size_t>(a.slot)];
    // Before any push the tile's size is what the consumer parts take together.
    const std::size_t tile_bytes = slot.tile_bytes ? slot.tile_bytes : a.bytes * static_cast<std::size_t>(consumers_);
    const std::string access = describe(who) + " pops tile " + std::to_string(a.tile) + " (" +
                               rows(a.offset, a.bytes, tile_bytes) + ")";
    // Data ready: every producer part's push of this very tile completed.
    std::vector<int> missing;
    for (int p = 0; p < producers_; ++p)
      if (slot.written[static_cast<std::size_t>(p)].tile != a.tile) missing.push_back(p);
    if (!missing.empty()) {
      const int p = missing.front();
      const Write& w = slot.written[static_cast<std::size_t>(p)];
      std::ostringstream conflict;
      conflict << "the push of tile " << a.tile << " by " << lane_name(p, true) << " has not completed; ";
      if (w.tile < 0) conflict << "the slot holds nothing yet";
      else conflict << "the slot holds tile " << w.tile << ", pushed by " << describe(w.who);
      if (producers_ == 2 && static_cast<int>(missing.size()) < producers_)
        fail("V2C pop completes without both halves", a, access, conflict.str(),
             "the whole-tile pop must wait for both lanes' halves (TILE_NO_SPLIT on a TILE_UP_DOWN producer)");
      fail("pop reads a slot before its push completed", a, access, conflict.str(),
           "the pop did not wait for the tile's data-ready signal (consumer_wait)");
    }
    // FIFO order: a tile is consumed in the iteration its producer pushed it for.
    for (int p = 0; p < producers_; ++p) {
      const Write& w = slot.written[static_cast<std::size_t>(p)];
      if (who.page < 0 || w.who.page < 0) continue;
      if (w.who.logical_block == who.logical_block && w.who.page == who.page) continue;
      fail("FIFO order violation", a, access,
           "tile " + std::to_string(a.tile) + " was pushed by " + describe(w.who) +
               ", for another iteration than the one consuming it",
           "tiles must be pushed and popped in the same (logical block, page) order on both sides");
    }
    // Lane coverage: each row of a C2V tile goes to exactly one lane.
    if (consumers_ == 2) {
      if (slot.reads_tile != a.tile) {
        slot.reads.clear();
        slot.reads_tile = a.tile;
      }
      for (const Read& r : slot.reads) {
        if (r.part == a.part) continue;
        const std::size_t lo = std::max(r.offset, a.offset), hi = std::min(r.offset + r.bytes, a.offset + a.bytes);
        if (lo >= hi) continue;
        fail(rows(lo, hi - lo, slot.tile_bytes) + " consumed by both lanes", a, access,
             describe(r.who) + " popped tile " + std::to_string(a.tile) + " (" + rows(r.offset, r.bytes, slot.tile_bytes) + ")",
             "each lane must address its own half (lane k: rows [k*R/2, (k+1)*R/2))");
      }
      slot.reads.push_back(Read{a.part, a.offset, a.bytes, who});
    }
    // The local ring: depth slots of a consumer part's share of a slot, then the next buffer.
    const std::size_t budget =
        static_cast<std::size_t>(config_.depth) * (config_.slot_bytes / static_cast<std::size_t>(consumers_));
    if (a.local_offset + a.bytes > budget) {
      std::ostringstream s;
      s << describe(who) << " pops tile " << a.tile << " into local slot " << a.local_slot << " at local bytes ["
        << a.local_offset << ", " << a.local_offset + a.bytes << ") of the " << config_.name << " ring";
      std::ostringstream conflict;
      conflict << "the ring's budget is bytes [0, " << budget << ") (" << config_.depth << " local slots of "
               << budget / static_cast<std::size_t>(config_.depth) << " bytes): the tile runs into "
               << (next_ ? next_->local_holding(a.part) : std::string("whatever follows the last local ring"));
      fail("local slot outside its buffer", a, s.str(), conflict.str(),
           "local slots must be strided by the budgeted share of a slot, not by a whole slot");
    }
    slot.popped[static_cast<std::size_t>(a.part)] = Write{a.tile, who};
    last_pop_[static_cast<std::size_t>(a.part)] = Pop{a.tile, who};
  }

  void read(const PipeAccess& a, const AccessTag& who) {
    const SlotShadow& slot = slots_[static_cast<std::size_t>(a.slot)];
    if (freed_count_[static_cast<std::size_t>(a.part)] <= a.tile) return;
    const Write& freed = slot.freed[static_cast<std::size_t>(a.part)];
    std::ostringstream conflict;
    conflict << "freed by " << describe(freed.who) << "; ";
    const Write& now = slot.written[0];
    if (now.tile != a.tile)
      conflict << "the slot has since been overwritten with tile " << now.tile << ", pushed by " << describe(now.who);
    else
      conflict << "not yet overwritten in this run, but the producer may push tile " << a.tile + config_.depth
               << " into it at any time";
    fail("use of a popped tile after its TFREE", a,
         describe(who) + " reads tile " + std::to_string(a.tile) + " (" + rows(a.offset, a.bytes, slot.tile_bytes) + ")",
         conflict.str(), "copy the tile out (or finish using it) before TFREE hands the slot back");
  }

  void release(const PipeAccess& a, const AccessTag& who) {
    SlotShadow& slot = slots_[static_cast<std::size_t>(a.slot)];
    freed_count_[static_cast<std::size_t>(a.part)] = a.tile + 1;
    slot.freed[static_cast<std::size_t>(a.part)] = Write{a.tile, who};
    if (consumers_ != 2) return;
    for (int c = 0; c < consumers_; ++c)
      if (freed_count_[static_cast<std::size_t>(c)] <= a.tile) return;
    // Every lane freed the tile: each row must have gone to some lane.
    if (slot.reads_tile != a.tile || slot.tile_bytes == 0) return;
    std::vector<std::pair<std::size_t, std::size_t>> covered;
    for (const Read& r : slot.reads) covered.emplace_back(r.offset, r.offset + r.bytes);
    std::sort(covered.begin(), covered.end());
    std::size_t at = 0;
    for (const auto& [lo, hi] : covered) {
      if (lo > at) break;
      at = std::max(at, hi);
    }
    if (at >= slot.tile_bytes) return;
    std::size_t gap_end = slot.tile_bytes;
    for (const auto& [lo, hi] : covered)
      if (lo > at) gap_end = std::min(gap_end, lo);
    std::ostringstream reads;
    for (const Read& r : slot.reads)
      reads << (&r == &slot.reads.front() ? "" : "; ") << describe(r.who) << " popped "
            << rows(r.offset, r.bytes, slot.tile_bytes);
    fail(rows(at, gap_end - at, slot.tile_bytes) + " consumed by no lane", a,
         describe(who) + " frees tile " + std::to_string(a.tile) + ", the last lane to do so", reads.str(),
         "each lane must address its own half (lane k: rows [k*R/2, (k+1)*R/2))");
  }

  MixChecker& checker_;
  const PipeConfig config_;
  const int block_, producers_, consumers_;
  PipeShadow* next_;
  std::vector<SlotShadow> slots_;
  std::array<std::int64_t, 2> freed_count_{0, 0};  // per consumer part, as the checker saw the frees
  std::array<Pop, 2> last_pop_;
};

MixChecker::MixChecker() = default;
MixChecker::~MixChecker() = default;

PipeShadow* MixChecker::attach(TilePipe& pipe, int block, PipeShadow* next_local) {
  shadows_.push_back(std::make_unique<PipeShadow>(*this, pipe, block, next_local));
  pipe.set_observer(shadows_.back().get());
  return shadows_.back().get();
}

void MixChecker::fail(const std::string& report) {
  {
    std::lock_guard lock(mutex_);
    if (report_.empty()) report_ = report;
  }
  throw SimCheckError(report);
}

bool MixChecker::failed() const {
  std::lock_guard lock(mutex_);
  return !report_.empty();
}

std::string MixChecker::report() const {
  std::lock_guard lock(mutex_);
  return report_;
}

}  // namespace mixpa::sim
