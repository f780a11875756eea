// Executor "sim": sets up the runtime from the plan (pipe slots, depth, hardware blocks),
// runs the cube and vector programs, then writes the trace, swimlane and summary if asked.
#include "sim/programs.h"
#include "sim/trace_output.h"

namespace mixpa::sim {

void run_sim(const Problem& problem, const Plan& plan, const Options& options, const Results& out) {
  RuntimeConfig rc;
  rc.block_num = plan.hw_blocks;
  rc.depth = plan.pipes.depth;
  rc.sij_slot_bytes = static_cast<std::size_t>(plan.pipes.sij_slot_bytes);
  rc.pij_slot_bytes = static_cast<std::size_t>(plan.pipes.pij_slot_bytes);
  rc.oi_slot_bytes = static_cast<std::size_t>(plan.pipes.oi_slot_bytes);
  rc.single_thread = options.sim.single_thread || options.sim.random_schedule;
  rc.random_schedule = options.sim.random_schedule;
  rc.schedule_seed = options.sim.schedule_seed;
  rc.check = options.sim.check;
  rc.free_mode = options.sim.explicit_free ? FreeMode::kExplicit : FreeMode::kAtPop;
  rc.inject = parse_injection(options.sim.inject);
  rc.tile_rows = plan.q_tile;
  rc.watchdog_seconds = options.sim.watchdog_seconds;
  rc.record = !options.sim.trace_path.empty() || !options.sim.swimlane_path.empty() || bool(options.report);
  MixRuntime runtime(rc);
  const ProgramArgs args{&problem, &plan, out.out, out.lse, options.cancelled ? &options.cancelled : nullptr};
  runtime.run([&](Worker& w) { run_programs(w, args); });
  if (rc.record) emit_trace_outputs(runtime, plan, options);
}

}  // namespace mixpa::sim
