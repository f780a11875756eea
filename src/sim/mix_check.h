// `--check`: shadow state per pipe slot and per local tile, kept beside the real pipes of a
// MixRuntime. Every pipe access (push, pop, read, free; see PipeObserver) is checked against
// what the slot and the consumer's local ring should hold, and the first violation becomes a
// report naming block, core, lane, pipe, slot, tile, iteration and both conflicting accesses:
//  - a pop that reads a slot before its push completed;
//  - a V2C pop that completes without both lanes' halves;
//  - a push into a slot whose previous tile is not freed by every consumer part;
//  - a read of a popped tile after its TFREE (explicit free), saying whether the slot has been
//    overwritten by then;
//  - a C2V tile row consumed by both lanes, or by no lane once the tile is freed;
//  - a FIFO order violation: a tile consumed in another iteration (logical block, page) than
//    the one its producer pushed it for;
//  - a pop whose local slot runs past its ring's budget into the next local buffer.
// Shadow state of a pipe is touched only under that pipe's lock (observer calls), so the
// checker adds no locking of its own but for the first report.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pipe/tile_pipe.h"
#include "sim/mix_runtime.h"

namespace mixpa::sim {

class PipeShadow;

class MixChecker {
 public:
  MixChecker();
  ~MixChecker();
  // Watches `pipe` of hardware block `block`. A consumer's local ring for this pipe is followed
  // in its local memory by the ring of `next_local` (nullptr: nothing after it).
  PipeShadow* attach(TilePipe& pipe, int block, PipeShadow* next_local);

  // Records the first report and throws SimCheckError with it.
  [[noreturn]] void fail(const std::string& report);
  bool failed() const;
  std::string report() const;

 private:
  std::vector<std::unique_ptr<PipeShadow>> shadows_;
  mutable std::mutex mutex_;
  std::string report_;
};

// Names an access for a report: "block 0 vector1 (lane 1) in SF of logical block 3, page 2".
std::string describe(const AccessTag& who);

}  // namespace mixpa::sim
