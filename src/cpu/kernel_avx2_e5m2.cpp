// The avx2 chunk kernel for e5m2 caches (kernel_avx2_tile.h); its own translation unit so the
// cache dtypes' instantiations compile in parallel.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <new>
#include <span>

#include "core/element.h"
#include "cpu/chunk_kernel.h"
#include "cpu/page_run.h"
#include "cpu/scratch.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include "cpu/kernel_avx2_tile.h"

namespace mixpa::cpu {

void attend_avx2_e5m2(const ChunkJob& job, const ChunkOut& out) { avx2::attend_rows<e5m2>(job, out); }
void attend_group_avx2_e5m2(std::span<const ChunkJob> jobs, std::span<const ChunkOut> outs) {
  avx2::attend_group_rows<e5m2>(jobs, outs);
}

}  // namespace mixpa::cpu

#pragma GCC pop_options
