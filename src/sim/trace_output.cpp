// Trace outputs of a sim run: Chrome trace JSON, SVG swimlane, summary.
#include "sim/trace_output.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/atomic_file.h"

namespace mixpa::sim {
namespace {

bool is_wait(Stage s) { return s == Stage::kWaitPush || s == Stage::kWaitPop; }
bool is_cube_compute(Stage s) { return s == Stage::kQK || s == Stage::kPV; }
bool is_vector_compute(Stage s) { return s == Stage::kSF || s == Stage::kUP; }

std::string event_name(const Event& e) {
  if (is_wait(e.stage))
    return std::string(stage_name(e.stage)) + ' ' + (e.pipe ? e.pipe : "?") + "[slot " + std::to_string(e.slot) + ']';
  if (e.page < 0) return stage_name(e.stage);
  return std::string(stage_name(e.stage)) + '[' + std::to_string(e.page) + ']';
}

// Total length of the intersection of [a0, a1) with a sorted union of intervals.
double covered(double a0, double a1, const std::vector<std::pair<double, double>>& sorted) {
  double total = 0;
  for (const auto& [b0, b1] : sorted) {
    if (b0 >= a1) break;
    total += std::max(0.0, std::min(a1, b1) - std::max(a0, b0));
  }
  return total;
}

std::vector<std::pair<double, double>> merged(std::vector<std::pair<double, double>> v) {
  std::sort(v.begin(), v.end());
  std::vector<std::pair<double, double>> out;
  for (const auto& iv : v) {
    if (!out.empty() && iv.first <= out.back().second) out.back().second = std::max(out.back().second, iv.second);
    else out.push_back(iv);
  }
  return out;
}

}  // namespace

std::vector<std::string> TraceSummary::lines() const {
  std::vector<std::string> l;
  char buf[256];
  std::snprintf(buf, sizeof buf, "sim pipeline: wall %.3f ms; busy: cube %.1f %%, vector %.1f %%", wall_us / 1e3,
                cube_busy_pct, vector_busy_pct);
  l.emplace_back(buf);
  std::snprintf(buf, sizeof buf,
                "sim pipeline: cube-vector overlap %.1f %% of cube QK/PV time; %.1f %% of vector SF/UP time is "
                "hidden behind cube QK/PV",
                overlap_pct, hidden_pct);
  l.emplace_back(buf);
  std::string w = "sim pipeline: wait per pipe (all blocks):";
  for (const auto& p : waits) {
    std::snprintf(buf, sizeof buf, " %s push %.3f ms, pop %.3f ms;", p.pipe.c_str(), p.push_us / 1e3, p.pop_us / 1e3);
    w += buf;
  }
  l.push_back(w);
  return l;
}

TraceSummary summarize(const MixRuntime& runtime) {
  TraceSummary s;
  double t0 = INFINITY, t1 = 0;
  for (const auto& w : runtime.workers())
    for (const Event& e : w->events()) {
      t0 = std::min(t0, e.t0_us);
      t1 = std::max(t1, e.t1_us);
    }
  if (!(t1 > t0)) return s;
  s.wall_us = t1 - t0;
  s.waits = {{"sij"}, {"pij"}, {"oi"}};
  const int blocks = runtime.config().block_num;
  double cube_busy = 0, vec_busy = 0, cube_compute = 0, overlap = 0, vec_compute = 0, hidden = 0;
  for (int b = 0; b < blocks; ++b) {
    std::vector<std::pair<double, double>> vec_iv, cube_iv;
    for (const Event& e : runtime.workers()[b * 3]->events())
      if (is_cube_compute(e.stage)) cube_iv.emplace_back(e.t0_us, e.t1_us);
    cube_iv = merged(std::move(cube_iv));
    for (int k = 1; k <= 2; ++k)
      for (const Event& e : runtime.workers()[b * 3 + k]->events()) {
        if (is_vector_compute(e.stage)) {
          vec_iv.emplace_back(e.t0_us, e.t1_us);
          vec_compute += e.t1_us - e.t0_us;
          hidden += covered(e.t0_us, e.t1_us, cube_iv);
        }
        if (!is_wait(e.stage)) vec_busy += e.t1_us - e.t0_us;
      }
    vec_iv = merged(std::move(vec_iv));
    for (const Event& e : runtime.workers()[b * 3]->events()) {
      if (!is_wait(e.stage)) cube_busy += e.t1_us - e.t0_us;
      if (is_cube_compute(e.stage)) {
        cube_compute += e.t1_us - e.t0_us;
        overlap += covered(e.t0_us, e.t1_us, vec_iv);
      }
    }
    for (int k = 0; k < 3; ++k)
      for (const Event& e : runtime.workers()[b * 3 + k]->events())
        if (is_wait(e.stage) && e.pipe)
          for (auto& p : s.waits)
            if (p.pipe == e.pipe) (e.stage == Stage::kWaitPush ? p.push_us : p.pop_us) += e.t1_us - e.t0_us;
  }
  s.cube_busy_pct = 100.0 * cube_busy / (blocks * s.wall_us);
  s.vector_busy_pct = 100.0 * vec_busy / (2.0 * blocks * s.wall_us);
  s.overlap_pct = cube_compute > 0 ? 100.0 * overlap / cube_compute : 0;
  s.hidden_pct = vec_compute > 0 ? 100.0 * hidden / vec_compute : 0;
  return s;
}

void write_chrome_trace(const MixRuntime& runtime, const Plan& plan, const std::string& path) {
  using nlohmann::json;
  json events = json::array();
  const int blocks = runtime.config().block_num;
  for (int b = 0; b < blocks; ++b) {
    events.push_back({{"ph", "M"}, {"name", "process_name"}, {"pid", b}, {"args", {{"name", "block " + std::to_string(b)}}}});
    events.push_back({{"ph", "M"}, {"name", "process_sort_index"}, {"pid", b}, {"args", {{"sort_index", b}}}});
    for (int k = 0; k < 3; ++k) {
      const auto& w = *runtime.workers()[b * 3 + k];
      const int tid = b * 3 + k;
      events.push_back({{"ph", "M"}, {"name", "thread_name"}, {"pid", b}, {"tid", tid},
                        {"args", {{"name", "block " + std::to_string(b) + " " + core_name(static_cast<CoreRole>(k))}}}});
      events.push_back({{"ph", "M"}, {"name", "thread_sort_index"}, {"pid", b}, {"tid", tid}, {"args", {{"sort_index", k}}}});
      for (const Event& e : w.events())
        events.push_back({{"ph", "X"}, {"name", event_name(e)}, {"cat", stage_name(e.stage)}, {"pid", b}, {"tid", tid},
                          {"ts", e.t0_us}, {"dur", e.t1_us - e.t0_us},
                          {"args", {{"logical_block", e.logical_block}, {"page", e.page}}}});
      for (const CounterSample& c : w.counters())
        events.push_back({{"ph", "C"}, {"name", std::string("occupancy ") + c.pipe}, {"pid", b}, {"ts", c.t_us},
                          {"args", {{"tiles", c.tiles}}}});
    }
  }
  json doc = {{"traceEvents", events}, {"displayTimeUnit", "ms"},
              {"otherData", {{"generator", "mixpa sim"}, {"plan", json::parse(plan.to_json())}}}};
  write_file_atomically(path, doc.dump());
}

void emit_trace_outputs(const MixRuntime& runtime, const Plan& plan, const Options& options) {
  if (!options.sim.trace_path.empty()) write_chrome_trace(runtime, plan, options.sim.trace_path);
  if (!options.sim.swimlane_path.empty()) write_swimlane_svg(runtime, options.sim.swimlane_path, options.sim.swimlane_blocks, options.sim.swimlane_from_us,
                       options.sim.swimlane_to_us);
  if (options.report)
    for (const std::string& line : summarize(runtime).lines()) options.report(line);
}

}  // namespace mixpa::sim
