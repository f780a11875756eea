// What a sim run shows a person: Chrome/Perfetto trace events (a track per worker),
// an SVG swimlane of a window, and a summary (busy %, cube-vector overlap, pipe waits).
#pragma once

#include <string>

#include <vector>

#include "core/plan.h"
#include "mixpa/paged_attention.h"
#include "sim/mix_runtime.h"

namespace mixpa::sim {

struct TraceSummary {
  double wall_us = 0;
  double cube_busy_pct = 0;    // mean over cube workers: time in load/QK/PV over wall time
  double vector_busy_pct = 0;  // mean over vector workers: time in SF/UP/finalize over wall time
  double overlap_pct = 0;      // cube QK/PV time while a vector of the same block runs SF/UP, over cube QK/PV time
  double hidden_pct = 0;       // vector SF/UP time while its cube runs QK/PV, over vector SF/UP time
  struct PipeWaits { std::string pipe; double push_us = 0, pop_us = 0; };
  std::vector<PipeWaits> waits;  // sij, pij, oi
  std::vector<std::string> lines() const;
};

TraceSummary summarize(const MixRuntime& runtime);
void write_chrome_trace(const MixRuntime& runtime, const Plan& plan, const std::string& path);
// Window: blocks [0, blocks), simulated time [from_us, to_us); to_us < 0 means until block 0's
// vectors finish the first 8 pages of their first logical block.
void write_swimlane_svg(const MixRuntime& runtime, const std::string& path, int blocks = 3, double from_us = 0,
                        double to_us = -1);

// Writes what `options` asks for and sends the summary to options.report.
void emit_trace_outputs(const MixRuntime& runtime, const Plan& plan, const Options& options);

}  // namespace mixpa::sim
