// Thread-local aligned scratch: grows, never shrinks, freed at thread exit.
#include "cpu/scratch.h"

#include <cstdlib>
#include <memory>
#include <new>

namespace mixpa::cpu {
namespace {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

struct Slot {
  std::unique_ptr<void, FreeDeleter> data;
  std::size_t bytes = 0;
};

}  // namespace

void* scratch(int slot, std::size_t bytes) {
  thread_local Slot slots[8];
  Slot& s = slots[slot];
  if (s.bytes < bytes) {
    const std::size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) throw std::bad_alloc();
    s.data.reset(p);
    s.bytes = rounded;
  }
  return s.data.get();
}

}  // namespace mixpa::cpu
