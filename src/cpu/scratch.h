// Per-thread, 64-byte aligned scratch memory for the SIMD kernels. Defined in baseline code
// (scratch.cpp), so no library template is ever instantiated under a kernel's target pragma.
#pragma once

#include <cstddef>

namespace mixpa::cpu {

// A buffer of at least `bytes` bytes, reused by later calls on the same thread (slot 0..7:
// independent buffers of one kernel call). Contents are unspecified.
void* scratch(int slot, std::size_t bytes);

}  // namespace mixpa::cpu
