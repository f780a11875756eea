// The sim as a MIX debugging tool: --check stays silent on the correct programs (every depth,
// both free disciplines, the origin's shapes and the coverage shapes), and each injected bug
// class is caught with the report that names it; seeded random schedules give identical bits
// for the correct programs and expose the injected races.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/check.h"
#include "sim/mix_runtime.h"

namespace mixpa {
namespace {

using testing::run_case;

Options sim_options(int depth, bool explicit_free, int blocks = 24) {
  Options o;
  o.pipe_depth = depth;
  o.hw_blocks = blocks;
  o.sim.check = true;
  o.sim.explicit_free = explicit_free;
  return o;
}

// The origin's shapes (SPEC §4) with short, mixed contexts and fewer requests (Case1 keeps two
// logical blocks per hardware block).
std::vector<CaseSpec> origin_shapes_small() {
  std::vector<CaseSpec> specs;
  for (const char* name : {"Case1", "Case2", "SmallCase1"}) {
    CaseSpec s = find_case(name);
    s.name += "_small";
    s.batch = std::min<std::int64_t>(s.batch, s.num_heads > 16 ? 24 : 48);
    s.context_lens = {300, 129, 1, 0, 200, 65};
    s.max_model_len = 2048;
    specs.push_back(s);
  }
  return specs;
}

// Runs with --check and returns the report; fails the test if there is none.
std::string check_report(const Case& c, Options o) {
  o.sim.check = true;
  try {
    run_case(c, "sim", o);
  } catch (const SimCheckError& e) {
    return e.what();
  }
  ADD_FAILURE() << "--check reported nothing (inject " << o.sim.inject << ")";
  return {};
}

#define EXPECT_HAS(text, fragment) EXPECT_NE((text).find(fragment), std::string::npos) << (text)

class SimCheckClean : public ::testing::TestWithParam<CaseSpec> {};

TEST_P(SimCheckClean, EveryDepthAndFreeModeRunsCleanAndBitExact) {
  const Case c = generate_case(GetParam(), 5);
  const auto ref = run_case(c, "reference");
  for (int depth : {1, 2, 3})
    for (bool explicit_free : {false, true})
      EXPECT_EQ(run_case(c, "sim", sim_options(depth, explicit_free)), ref)
          << "depth " << depth << (explicit_free ? " explicit free" : " free at pop");
}
// Every coverage shape and the origin's shapes: the release run's; sanitizer runs take the few
// shapes below (the same code paths, a tenth of the time).
INSTANTIATE_TEST_SUITE_P(CoverageSlow, SimCheckClean, ::testing::ValuesIn(testing::coverage_specs()),
                         [](const auto& info) { return info.param.name; });
INSTANTIATE_TEST_SUITE_P(OriginSlow, SimCheckClean, ::testing::ValuesIn(origin_shapes_small()),
                         [](const auto& info) { return info.param.name; });
INSTANTIATE_TEST_SUITE_P(VariantsSlow, SimCheckClean, ::testing::ValuesIn(testing::variant_specs()),
                         [](const auto& info) { return info.param.name; });
std::vector<CaseSpec> few_shapes() {
  CaseSpec origin = find_case("SmallCase1");
  origin.name = "SmallCase1_tiny";
  origin.batch = 8;
  origin.context_lens = {130, 1, 0, 64, 200};
  origin.max_model_len = 512;
  return {testing::coverage_specs()[0], testing::coverage_specs()[4], testing::coverage_specs()[8], origin};
}
INSTANTIATE_TEST_SUITE_P(Few, SimCheckClean, ::testing::ValuesIn(few_shapes()),
                         [](const auto& info) { return info.param.name; });

TEST(SimCheckClean, SmallCase1FullAtEveryDepthAndFreeModeSlow) {
  const Case c = generate_case(find_case("SmallCase1"), 0);
  const auto ref = run_case(c, "sim");
  for (int depth : {1, 2, 3})
    for (bool explicit_free : {false, true}) EXPECT_EQ(run_case(c, "sim", sim_options(depth, explicit_free)), ref);
}

TEST(SimCheckClean, TurnSchedulesToo) {
  const Case c = generate_case(testing::small_spec("turns", 5, 20, 1, 64, 16, {0, 1, 33, 90, 40}), 3);
  const auto ref = run_case(c, "reference");
  for (int depth : {1, 2}) {
    Options o = sim_options(depth, depth == 1, 3);
    o.sim.single_thread = true;
    EXPECT_EQ(run_case(c, "sim", o), ref);
  }
}

// ---- Mutation tests: each injected bug, caught with its report ----------------------------

// Two blocks, each with more than depth pages in its first logical block.
Case mutation_case() { return generate_case(testing::small_spec("mut", 4, 16, 1, 64, 16, {70, 50, 33, 64}), 7); }

Options turns(const char* inject, int depth = 2, bool explicit_free = false) {
  Options o = sim_options(depth, explicit_free, 2);
  o.sim.single_thread = true;
  o.sim.inject = inject;
  return o;
}

TEST(SimMutation, LaneHalf0BothLanesReadHalfZero) {
  const std::string r = check_report(mutation_case(), turns("lane-half0"));
  EXPECT_HAS(r, "sim check: rows [0, 8) consumed by both lanes");
  EXPECT_HAS(r, "pipe sij (C2V, depth 2) of block 0, slot 0, tile 0");
  EXPECT_HAS(r, "access:   block 0 vector1 (lane 1) in SF of logical block 0, page 0 pops tile 0 (rows [0, 8))");
  EXPECT_HAS(r, "conflict: block 0 vector0 (lane 0) in SF of logical block 0, page 0 popped tile 0 (rows [0, 8))");
}

TEST(SimMutation, LaneHalf0WithoutCheckGivesWrongNumbers) {
  const Case c = mutation_case();
  Options o = turns("lane-half0");
  o.sim.check = false;
  EXPECT_NE(run_case(c, "sim", o), run_case(c, "reference"));
}

TEST(SimMutation, FreeBeforeCopyIsAUseAfterFree) {
  const std::string r = check_report(mutation_case(), turns("free-before-copy", 1));
  EXPECT_HAS(r, "sim check: use of a popped tile after its TFREE");
  EXPECT_HAS(r, "pipe sij (C2V, depth 1) of block 0, slot 0, tile 0");
  EXPECT_HAS(r, "access:   block 0 vector0 (lane 0) in SF of logical block 0, page 0 reads tile 0 (rows [0, 8))");
  EXPECT_HAS(r, "conflict: freed by block 0 vector0 (lane 0) in SF of logical block 0, page 0");
}

TEST(SimMutation, SkipWaitPopsBeforeThePush) {
  const std::string r = check_report(mutation_case(), turns("skip-wait"));
  EXPECT_HAS(r, "sim check: pop reads a slot before its push completed");
  EXPECT_HAS(r, "pipe oi (C2V, depth 2) of block 0, slot 0, tile 0");
  EXPECT_HAS(r, "access:   block 0 vector0 (lane 0) in UP of logical block 0, page 0 pops tile 0 (rows [0, 8))");
  EXPECT_HAS(r, "conflict: the push of tile 0 by the cube has not completed; the slot holds nothing yet");
}

TEST(SimMutation, PushUnfreedOverwritesAHeldSlot) {
  // At depth >= 2 the programs' order alone keeps sij's next slot free (the cube is at most
  // two score tiles ahead); at depth 1 only the wait does.
  const std::string r = check_report(mutation_case(), turns("push-unfreed", 1));
  EXPECT_HAS(r, "sim check: push into a slot not yet freed");
  EXPECT_HAS(r, "pipe sij (C2V, depth 1) of block 0, slot 0, tile 1");
  EXPECT_HAS(r, "access:   block 0 cube in QK of logical block 0, page 1 pushes tile 1 (rows [0, 16))");
  EXPECT_HAS(r, "conflict: tile 0, pushed by block 0 cube in QK of logical block 0, page 0, is not yet freed by lane 0: "
                "not popped yet");
}

TEST(SimMutation, SwapOrderIsAFifoOrderViolation) {
  const std::string r = check_report(mutation_case(), turns("swap-order"));
  EXPECT_HAS(r, "sim check: FIFO order violation");
  EXPECT_HAS(r, "pipe sij (C2V, depth 2) of block 0, slot 0, tile 0");
  EXPECT_HAS(r, "access:   block 0 vector0 (lane 0) in SF of logical block 0, page 0 pops tile 0");
  EXPECT_HAS(r, "conflict: tile 0 was pushed by block 0 cube in QK of logical block 0, page 1");
}

TEST(SimMutation, PopNoSplitIsCaughtAsAPopWithoutBothHalves) {
  const std::string r = check_report(mutation_case(), turns("pop-no-split"));
  EXPECT_HAS(r, "sim check: V2C pop completes without both halves");
  EXPECT_HAS(r, "pipe pij (V2C, depth 2) of block 0, slot 0, tile 2");
  EXPECT_HAS(r, "access:   block 0 cube in load of logical block 0, page 2 pops tile 2 (rows [0, 16))");
  EXPECT_HAS(r, "conflict: the push of tile 2 by lane 1 has not completed; the slot holds tile 0, pushed by block 0 "
                "vector1 (lane 1) in SF of logical block 0, page 0");
}

void expect_lane1_push_stalls(bool single_thread) {
  Options o = turns("pop-no-split");
  o.sim.check = false;
  o.sim.single_thread = single_thread;
  o.sim.watchdog_seconds = 1.0;  // the minimum (issue 15)
  try {
    run_case(mutation_case(), "sim", o);
    ADD_FAILURE() << "no hang reported";
  } catch (const SimCheckError& e) {
    ADD_FAILURE() << e.what();
  } catch (const Error& e) {
    // The unsplit free hands back lane 0's half only: lane 1's third push never gets a slot.
    const std::string msg = e.what();
    EXPECT_HAS(msg, "deadlock");
    EXPECT_HAS(msg, "block 0 vector1 (logical block 0, page 2, in SF) waits to push pij slot 0 (tile 2)");
  }
}
TEST(SimMutation, PopNoSplitHangsOnLane1sThirdPushTurns) { expect_lane1_push_stalls(true); }
TEST(SimMutation, PopNoSplitHangsOnLane1sThirdPushWatchdog) { expect_lane1_push_stalls(false); }

TEST(SimMutation, SlotStrideRunsIntoTheNextBuffer) {
  const std::string r = check_report(mutation_case(), turns("slot-stride"));
  EXPECT_HAS(r, "sim check: local slot outside its buffer");
  EXPECT_HAS(r, "pipe sij (C2V, depth 2) of block 0, slot 1, tile 1");
  EXPECT_HAS(r, "block 0 vector0 (lane 0) in SF of logical block 0, page 1 pops tile 1 into local slot 1 at local "
                "bytes [1024, 1536) of the sij ring");
  EXPECT_HAS(r, "conflict: the ring's budget is bytes [0, 1024) (2 local slots of 512 bytes): the tile runs into the oi "
                "local ring");
}

TEST(SimMutation, EveryInjectionIsCaughtThreadedToo) {
  // Threaded, the interleaving is the OS's; these bugs are caught whatever it is: by the
  // checker or, for the unsplit pop, by it or the watchdog.
  // (skip-wait and push-unfreed are races the OS may or may not let happen: see SimSchedule.)
  const Case c = mutation_case();
  for (const char* inject : {"lane-half0", "free-before-copy", "swap-order", "pop-no-split", "slot-stride"}) {
    Options o = sim_options(std::string(inject) == "free-before-copy" ? 1 : 2, false, 2);
    o.sim.inject = inject;
    o.sim.watchdog_seconds = 1.0;  // the minimum (issue 15)
    EXPECT_THROW(run_case(c, "sim", o), Error) << inject;
  }
}

TEST(SimMutation, UnknownInjectionIsRejected) {
  Options o;
  o.sim.inject = "off-by-one";
  try {
    run_case(mutation_case(), "sim", o);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_HAS(std::string(e.what()), "--inject off-by-one is not a known bug; expected one of {lane-half0,");
  }
}

// A test program whose lanes each take a quarter of every sij tile: half the rows go nowhere.
TEST(SimMutation, RowsConsumedByNoLane) {
  sim::RuntimeConfig rc;
  rc.block_num = 1;
  rc.sij_slot_bytes = rc.oi_slot_bytes = rc.pij_slot_bytes = 16 * 4;
  rc.tile_rows = 16;
  rc.check = true;
  rc.single_thread = true;
  sim::MixRuntime rt(rc);
  try {
    rt.run([](sim::Worker& w) {
      float t[16] = {};
      w.stage(sim::Stage::kQK, 0, 0);
      if (w.ctx().role == CoreRole::kCube) w.tpush(*w.pipes().sij, t, sizeof t);
      else w.tpop(*w.pipes().sij, t, sizeof t / 4, w.ctx().sub_block_id);
    });
    ADD_FAILURE() << "no report";
  } catch (const SimCheckError& e) {
    const std::string r = e.what();
    EXPECT_HAS(r, "sim check: rows [8, 16) consumed by no lane");
    EXPECT_HAS(r, "block 0 vector0 (lane 0) in QK of logical block 0, page 0 popped rows [0, 4); block 0 vector1 (lane 1) "
                  "in QK of logical block 0, page 0 popped rows [4, 8)");
  }
}

// ---- Random schedules -------------------------------------------------------------------

Options random_schedule(std::uint64_t seed, int depth, bool explicit_free, int blocks) {
  Options o = sim_options(depth, explicit_free, blocks);
  o.sim.check = false;
  o.sim.random_schedule = true;
  o.sim.schedule_seed = seed;
  return o;
}

TEST(SimSchedule, CorrectProgramsGiveIdenticalBitsOverSeeds) {
  const Case c = generate_case(testing::small_spec("seeds", 5, 20, 1, 64, 16, {0, 1, 33, 90, 40}), 3);
  const auto ref = run_case(c, "reference");
  for (std::uint64_t seed = 0; seed < 6; ++seed) {
    Options o = random_schedule(seed, 1 + static_cast<int>(seed % 3), seed % 2 == 1, 3);
    o.sim.check = true;
    EXPECT_EQ(run_case(c, "sim", o), ref) << "seed " << seed;
  }
}

// Seeds 0..K-1: the first whose output differs from the reference, or -1.
int first_differing_seed(const Case& c, const char* inject, int depth, bool explicit_free, int blocks, int k) {
  const auto ref = run_case(c, "reference");
  for (int seed = 0; seed < k; ++seed) {
    Options o = random_schedule(static_cast<std::uint64_t>(seed), depth, explicit_free, blocks);
    o.sim.inject = inject;
    if (run_case(c, "sim", o) != ref) return seed;
  }
  return -1;
}

TEST(SimSchedule, FreeBeforeCopyRaceChangesTheOutputForSomeSeed) {
  // Threaded or in turns the vectors copy sij out before the cube runs again; random turns
  // preempt between the early free and the copy, and the cube's next push overwrites the slot.
  const Case c = mutation_case();
  const int seed = first_differing_seed(c, "free-before-copy", 1, true, 2, 8);
  ASSERT_GE(seed, 0) << "no seed of 8 exposed the race";
  // The same seed reproduces it, and --check then says the slot was overwritten.
  Options o = random_schedule(static_cast<std::uint64_t>(seed), 1, true, 2);
  o.sim.inject = "free-before-copy";
  EXPECT_NE(run_case(c, "sim", o), run_case(c, "reference"));
}

TEST(SimSchedule, FreeBeforeCopyCheckNamesTheOverwritingPush) {
  const Case c = mutation_case();
  bool overwritten = false;
  for (std::uint64_t seed = 0; seed < 64 && !overwritten; ++seed) {  // seed 15 does it today
    Options o = random_schedule(seed, 1, true, 2);
    o.sim.inject = "free-before-copy";
    const std::string r = check_report(c, o);
    EXPECT_HAS(r, "use of a popped tile after its TFREE");
    overwritten = r.find("the slot has since been overwritten with tile") != std::string::npos;
    if (overwritten) EXPECT_HAS(r, "pushed by block");
  }
  EXPECT_TRUE(overwritten) << "no seed of 64 let the producer overwrite the freed slot before the read";
}

TEST(SimSchedule, PopNoSplitRaceOnShortRequestsIsFoundBySomeSeed) {
  // Requests of at most two pages and one logical block per hardware block: lane 1 never
  // pushes a third time, so nothing hangs, and round-robin turns happen to let lane 1 finish
  // before the cube pops. Only some interleavings read a half lane 1 has not written.
  const Case c = generate_case(testing::small_spec("short", 4, 16, 1, 64, 16, {32, 17, 30, 20}), 9);
  Options rr = turns("pop-no-split");
  rr.hw_blocks = 4;
  EXPECT_EQ(run_case(c, "sim", rr), run_case(c, "reference")) << "round-robin turns hide the race";
  int found = -1;
  for (int seed = 0; seed < 16 && found < 0; ++seed) {
    Options o = random_schedule(static_cast<std::uint64_t>(seed), 2, false, 4);
    o.sim.inject = "pop-no-split";
    o.sim.check = true;
    try {
      run_case(c, "sim", o);
    } catch (const SimCheckError& e) {
      EXPECT_HAS(std::string(e.what()), "V2C pop completes without both halves");
      found = seed;
    }
  }
  EXPECT_GE(found, 0) << "no seed of 16 exposed the race";
}

TEST(SimSchedule, SkipWaitAndPushUnfreedAreExposedBySomeSeed) {
  const Case c = mutation_case();
  for (const char* inject : {"skip-wait", "push-unfreed"}) {
    int found = 0;
    for (std::uint64_t seed = 0; seed < 4; ++seed) {
      Options o = random_schedule(seed, 1, false, 2);
      o.sim.inject = inject;
      o.sim.check = true;
      try {
        run_case(c, "sim", o);
      } catch (const SimCheckError&) {
        ++found;
      }
    }
    EXPECT_GT(found, 0) << inject;
  }
}

TEST(SimSchedule, ASeedIsOneInterleaving) {
  // The same seed twice: the same report, word for word.
  const Case c = mutation_case();
  Options o = random_schedule(3, 1, true, 2);
  o.sim.inject = "free-before-copy";
  EXPECT_EQ(check_report(c, o), check_report(c, o));
}

}  // namespace
}  // namespace mixpa
