// Measurements of this machine taken in the same run as the kernels they judge: read
// bandwidth over the very pages a case reads, and the peak of the dot-product instruction.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/cases.h"

namespace mixpa::bench {

// Best GB/s of `reps` multithreaded streaming reads of every K and V row the case's kernel reads,
// page by page in block-table order (same layout, same randomness of page order). Pass r reads
// copies[r % copies.size()] (copies of one case's KV cache, rotated as the timed runs rotate
// them), so its reads are as cold as the kernels' are.
double measure_kv_read_bandwidth(std::span<const Case* const> copies, int threads, int reps);
double measure_kv_read_bandwidth(const Case& c, int threads, int reps);

// Bytes of the largest cache level of this machine (sysfs, else sysconf), 0 when unknown.
std::int64_t last_level_cache_bytes();

// Bytes of [p, p + bytes) that Linux backs with transparent huge pages (the AnonHugePages of the
// mappings holding it, clipped to the range), from /proc/self/smaps; -1 where it cannot tell.
double huge_page_bytes(const void* p, std::size_t bytes);

struct Peak {
  double gflops = 0;
  std::string instruction;  // "vdpbf16ps zmm", "vfmadd231ps zmm" or "vfmadd231ps ymm"
};
// Dot-product peak of the fastest instruction this CPU has (vdpbf16ps, else fp32 FMA on zmm or
// ymm), independent accumulator chains per thread (16 on zmm, 12 on ymm) on `threads` threads.
Peak measure_dot_peak(int threads);

// For tests: each dot-product probe this CPU runs, once, for `iters` steps with a = b = 1. `sum`
// is the sum over every lane of its C chains (chain k starts at k), so a probe that computes
// all it counts returns lanes * (C (C - 1) / 2 + C * iters * step), step = 1 for an FMA and 2
// for vdpbf16ps.
struct ProbeCheck {
  std::string instruction;
  double flop_per_instr;
  int chains;
  double sum;
};
std::vector<ProbeCheck> run_dot_probes_once(std::int64_t iters);
// The AMX tile peak (tdpbf16ps, four independent accumulator tiles per thread). Only call it
// when the cpu executor's "amx" flavour is supported (that also obtains the OS permission).
Peak measure_amx_peak(int threads);

}  // namespace mixpa::bench
