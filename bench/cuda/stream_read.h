// The GPU's read bandwidth, measured in the same run as the kernel it judges.
#pragma once

#include <cstddef>

namespace mixpa::bench {

// Median bytes/second of a plain grid-stride 16-byte streaming read over `bytes` of device
// memory (written once before timing), over `reps` timed launches after a warm-up.
double measure_read_bandwidth(std::size_t bytes, int reps);

}  // namespace mixpa::bench
