// Executor "sim": agreement with the reference (bit for bit) and exact attention, the stride
// loop, single-thread vs threaded, pipe depths, the watchdog's deadlock report, traces.
#include <gtest/gtest.h>

#include <filesystem>
#include <limits>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unistd.h>

#include "common/check.h"
#include "sim/mix_runtime.h"

namespace mixpa {
namespace {

using testing::coverage_specs;
using testing::run_case;

class SimCoverage : public ::testing::TestWithParam<CaseSpec> {};

TEST_P(SimCoverage, BitwiseEqualToReferenceAndCloseToExact) {
  const Case c = generate_case(GetParam(), 21);
  const auto sim = run_case(c, "sim");
  EXPECT_EQ(sim, run_case(c, "reference"));
  testing::expect_close_to_exact(c, sim, testing::exact(c));
}
INSTANTIATE_TEST_SUITE_P(Shapes, SimCoverage, ::testing::ValuesIn(coverage_specs()),
                         [](const auto& info) { return info.param.name; });

TEST(Sim, MoreLogicalBlocksThanHardwareBlocksAndAnyDepth) {
  const Case c = generate_case(testing::small_spec("stride", 10, 20, 2, 64, 16, {0, 1, 33, 16, 17, 90, 2, 64, 5, 40}), 3);
  const auto ref = run_case(c, "reference");
  for (int blocks : {1, 3, 7, 24})
    for (int depth : {1, 2, 3}) {
      Options o;
      o.hw_blocks = blocks;
      o.pipe_depth = depth;
      EXPECT_EQ(run_case(c, "sim", o), ref) << "blocks " << blocks << " depth " << depth;
    }
}

TEST(Sim, SingleThreadAndThreadedGiveTheSameBits) {
  const Case c = generate_case(testing::small_spec("modes", 5, 64, 1, 128, 32, {100, 0, 1, 65, 31}), 4);
  Options single;
  single.sim.single_thread = true;
  single.hw_blocks = 2;
  Options threaded;
  threaded.hw_blocks = 2;
  EXPECT_EQ(run_case(c, "sim", single), run_case(c, "sim", threaded));
}

// A test-only program that breaks SF-first: the vectors pop oi before pushing pij, so the
// cube (waiting for pij) and the vectors (waiting for oi) wait on each other.
void broken_program(sim::Worker& w) {
  w.stage(sim::Stage::kQK, 0, 0);
  float s[16 * 16] = {}, o[16 * 16] = {};
  bf16 p[16 * 16] = {};
  if (w.ctx().role == CoreRole::kCube) {
    w.tpush(*w.pipes().sij, s, sizeof s);
    w.stage(sim::Stage::kPV, 0, 0);
    w.tpop(*w.pipes().pij, p, sizeof p);
    w.tpush(*w.pipes().oi, o, sizeof o);
  } else {
    const int lane = w.ctx().sub_block_id;
    w.tpop(*w.pipes().sij, s, sizeof s / 2, lane);
    w.stage(sim::Stage::kUP, 0, 0);
    w.tpop(*w.pipes().oi, o, sizeof o / 2, lane);  // before pushing pij: deadlock
    w.tpush(*w.pipes().pij, p, sizeof p / 2, lane);
  }
}

void expect_deadlock_report(bool single_thread) {
  sim::RuntimeConfig rc;
  rc.block_num = 2;
  rc.sij_slot_bytes = rc.oi_slot_bytes = 16 * 16 * 4;
  rc.pij_slot_bytes = 16 * 16 * 2;
  rc.single_thread = single_thread;
  rc.watchdog_seconds = 0.3;
  sim::MixRuntime rt(rc);
  try {
    rt.run(broken_program);
    ADD_FAILURE() << "no deadlock reported";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("deadlock"), std::string::npos) << msg;
    EXPECT_NE(msg.find("6 workers blocked"), std::string::npos) << msg;
    EXPECT_NE(msg.find("block 1 cube (logical block 0, page 0, in PV) waits to pop pij slot 0"), std::string::npos) << msg;
    EXPECT_NE(msg.find("block 0 vector1 (logical block 0, page 0, in UP) waits to pop oi slot 0"), std::string::npos) << msg;
  }
}

TEST(SimWatchdog, ThreadedDeadlockIsReportedAndUnwound) { expect_deadlock_report(false); }
TEST(SimWatchdog, SingleThreadDeadlockIsReportedAtOnce) { expect_deadlock_report(true); }

TEST(SimWatchdog, ExplicitLateFreeWithDepthOneDeadlocks) {
  // A consumer that frees a slot only after its next pop: with depth 1 the producer can never
  // push that next tile — circular back-pressure, the hazard SPEC §3 describes.
  sim::RuntimeConfig rc;
  rc.block_num = 1;
  rc.sij_slot_bytes = rc.oi_slot_bytes = rc.pij_slot_bytes = 64;
  rc.depth = 1;
  rc.free_mode = FreeMode::kExplicit;
  rc.single_thread = true;
  sim::MixRuntime rt(rc);
  EXPECT_THROW(rt.run([](sim::Worker& w) {
    float t[16] = {};
    if (w.ctx().role == CoreRole::kCube) {
      for (int i = 0; i < 2; ++i) w.tpush(*w.pipes().sij, t, sizeof t);
    } else {
      const int lane = w.ctx().sub_block_id;
      for (int i = 0; i < 2; ++i) w.tpop(*w.pipes().sij, t, sizeof t / 2, lane);  // second pop never comes
      w.tfree(*w.pipes().sij, lane);
      w.tfree(*w.pipes().sij, lane);
    }
  }), Error);
}

TEST(SimTrace, ChromeTraceSwimlaneAndSummary) {
  const Case c = generate_case(testing::small_spec("trace", 6, 16, 1, 128, 32, {100, 64, 1, 0, 40, 70}), 8);
  const std::string dir = std::filesystem::temp_directory_path() / ("mixpa_trace_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  Options o;
  o.sim.trace_path = dir + "/t.json";
  o.sim.swimlane_path = dir + "/t.svg";
  std::vector<std::string> report;
  o.report = [&](std::string_view line) { report.emplace_back(line); };
  run_case(c, "sim", o);
  std::ifstream in(o.sim.trace_path);
  const nlohmann::json trace = nlohmann::json::parse(in);
  int threads = 0, qk = 0, sf = 0, pv = 0, up = 0, counters = 0;
  for (const auto& e : trace["traceEvents"]) {
    if (e["ph"] == "M" && e["name"] == "thread_name") ++threads;
    if (e["ph"] == "C") ++counters;
    if (e["ph"] != "X") continue;
    const std::string name = e["name"];
    qk += name.rfind("QK[", 0) == 0;
    sf += name.rfind("SF[", 0) == 0;
    pv += name.rfind("PV[", 0) == 0;
    up += name.rfind("UP[", 0) == 0;
  }
  EXPECT_EQ(threads, 72);  // 24 blocks x (cube, vector0, vector1)
  EXPECT_GE(qk, 4 + 2 + 1 + 2 + 3);  // every page of every non-empty request
  EXPECT_GE(sf, 2 * (4 + 2 + 1 + 2 + 3));
  EXPECT_GE(pv, 4 + 2 + 1 + 2 + 3);
  EXPECT_GE(up, 2 * (4 + 2 + 1 + 2 + 3));
  EXPECT_GT(counters, 0);
  std::ifstream svg_in(o.sim.swimlane_path);
  std::stringstream svg;
  svg << svg_in.rdbuf();
  EXPECT_EQ(svg.str().rfind("<svg", 0), 0u);
  EXPECT_NE(svg.str().find("</svg>"), std::string::npos);
  EXPECT_NE(svg.str().find("blk 0 cube"), std::string::npos);
  EXPECT_NE(svg.str().find("SF (vector)"), std::string::npos);
  ASSERT_EQ(report.size(), 3u);
  EXPECT_NE(report[0].find("busy: cube"), std::string::npos);
  EXPECT_NE(report[1].find("overlap"), std::string::npos);
  EXPECT_NE(report[2].find("sij"), std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mixpa

namespace mixpa {
namespace {

TEST(Sim, MaskedRowsAndUnusedPagesMayHoldNaN) {
  Case c = generate_case(testing::small_spec("nan", 2, 20, 1, 64, 16, {37, 5}, 0.2, 8), 2);
  // Distinct pages: request 0 uses pages 0-2, request 1 page 3; pages 4-7 are unused.
  for (std::int64_t j = 0; j < c.max_blocks_per_req; ++j) {
    c.block_table[j] = static_cast<std::int32_t>(j < 3 ? j : 7);
    c.block_table[c.max_blocks_per_req + j] = 3;
  }
  const auto clean = run_case(c, "sim");
  const bf16 nan = bf16::from_float(std::numeric_limits<float>::quiet_NaN());
  auto poison = [&](std::int64_t page, std::int64_t from_row) {
    for (std::int64_t r = from_row; r < 16; ++r)
      for (std::int64_t d = 0; d < 64; ++d) c.key_cache[(page * 16 + r) * 64 + d] = c.value_cache[(page * 16 + r) * 64 + d] = nan;
  };
  poison(2, 37 % 16);
  poison(3, 5);
  for (std::int64_t p = 4; p < 8; ++p) poison(p, 0);
  EXPECT_EQ(run_case(c, "sim"), clean);
}

}  // namespace
}  // namespace mixpa
