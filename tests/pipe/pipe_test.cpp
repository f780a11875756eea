// Tile pipes: FIFO order, back-pressure, lane split both ways, free disciplines, misuse,
// and the deterministic scheduler's deadlock detection.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <numeric>
#include <thread>
#include <vector>

#include "mixpa/error.h"
#include "pipe/launcher.h"
#include "pipe/tile_pipe.h"

namespace mixpa {
namespace {

PipeConfig config(PipeDirection dir, LaneSplit split, int depth, std::size_t slot_bytes = 64,
                  FreeMode mode = FreeMode::kAtPop) {
  return PipeConfig{"p", dir, split, slot_bytes, depth, mode};
}

void expect_error(const std::function<void()>& f, const char* fragment) {
  try {
    f();
    ADD_FAILURE() << "no error; expected " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(TilePipe, FifoOrderAcrossThreads) {
  TilePipe pipe(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 2));
  std::thread producer([&] {
    for (int i = 0; i < 100; ++i) pipe.tpush(&i, sizeof i);
  });
  for (int i = 0; i < 100; ++i) {
    int v = -1;
    pipe.tpop(&v, sizeof v);
    EXPECT_EQ(v, i);
  }
  producer.join();
}

TEST(TilePipe, ProducerBlocksAtDepthAndResumesAfterFree) {
  TilePipe pipe(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 2, 64, FreeMode::kExplicit));
  int a = 1, b = 2, c = 3;
  pipe.tpush(&a, sizeof a);
  pipe.tpush(&b, sizeof b);
  EXPECT_EQ(pipe.occupancy(), 2);
  std::atomic<bool> pushed{false};
  std::thread producer([&] {
    pipe.tpush(&c, sizeof c);
    pushed = true;
  });
  int v = 0;
  pipe.tpop(&v, sizeof v);  // popped but not freed: the slot is still held
  EXPECT_EQ(v, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(pushed.load()) << "pushed into a slot that was never freed";
  pipe.tfree();
  producer.join();
  EXPECT_TRUE(pushed.load());
  pipe.tpop(&v, sizeof v);
  EXPECT_EQ(v, 2);
  pipe.tfree();
  pipe.tpop(&v, sizeof v);
  EXPECT_EQ(v, 3);
}

TEST(TilePipe, C2VUpDownGivesEachLaneItsHalf) {
  TilePipe pipe(config(PipeDirection::kC2V, LaneSplit::kUpDown, 2));
  std::vector<int> tile(8);  // 4 rows x 2 columns
  std::iota(tile.begin(), tile.end(), 0);
  pipe.tpush(tile.data(), tile.size() * sizeof(int));
  std::vector<int> up(4), down(4);
  pipe.tpop(down.data(), 4 * sizeof(int), 1);
  pipe.tpop(up.data(), 4 * sizeof(int), 0);
  EXPECT_EQ(up, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(down, (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(pipe.occupancy(), 0);
}

TEST(TilePipe, C2VSlotFreeOnlyWhenBothLanesPopped) {
  TilePipe pipe(config(PipeDirection::kC2V, LaneSplit::kUpDown, 1));
  int tile[2] = {1, 2}, half = 0;
  pipe.tpush(tile, sizeof tile);
  pipe.tpop(&half, sizeof half, 0);
  EXPECT_EQ(pipe.occupancy(), 1);  // lane 1 has not popped yet
  std::atomic<bool> pushed{false};
  std::thread producer([&] {
    pipe.tpush(tile, sizeof tile);
    pushed = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  EXPECT_FALSE(pushed.load());
  pipe.tpop(&half, sizeof half, 1);
  EXPECT_EQ(half, 2);
  producer.join();
  EXPECT_TRUE(pushed.load());
}

TEST(TilePipe, V2CWholePopWaitsForBothHalves) {
  TilePipe pipe(config(PipeDirection::kV2C, LaneSplit::kUpDown, 2));
  const int lane0[2] = {10, 11}, lane1[2] = {20, 21};
  pipe.tpush(lane1, sizeof lane1, 1);
  std::atomic<bool> popped{false};
  int whole[4] = {};
  std::thread cube([&] {
    pipe.tpop(whole, sizeof whole);
    popped = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  EXPECT_FALSE(popped.load()) << "whole tile popped with one half missing";
  pipe.tpush(lane0, sizeof lane0, 0);
  cube.join();
  EXPECT_EQ(std::vector<int>(whole, whole + 4), (std::vector<int>{10, 11, 20, 21}));
}

TEST(TilePipe, Misuse) {
  expect_error([] {
    TilePipe p(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 2, 8));
    char big[16] = {};
    p.tpush(big, sizeof big);
  }, "exceeds the slot of 8 bytes");
  expect_error([] {
    TilePipe p(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 2));
    p.close();
    int v;
    p.tpop(&v, sizeof v);
  }, "pop on a closed pipe");
  expect_error([] {
    TilePipe p(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 2, 64, FreeMode::kExplicit));
    p.tfree();
  }, "free without a pop");
  expect_error([] {
    TilePipe p(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 2));
    int v = 0;
    p.tpush(&v, sizeof v);
    p.tpop(&v, sizeof v);
    p.tfree();
  }, "frees at pop");
  expect_error([] {
    TilePipe p(config(PipeDirection::kC2V, LaneSplit::kUpDown, 2));
    int v[2] = {};
    p.tpush(v, sizeof v);
    p.tpop(v, sizeof(int), 2);
  }, "lane id 2");
  expect_error([] {
    TilePipe p(config(PipeDirection::kV2C, LaneSplit::kUpDown, 2));
    int v = 0;
    p.tpush(&v, sizeof v, -1);
  }, "lane id -1");
}

TEST(TilePipe, CloseWakesABlockedConsumer) {
  TilePipe pipe(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 2));
  std::atomic<bool> threw{false};
  std::thread consumer([&] {
    int v;
    try {
      pipe.tpop(&v, sizeof v);
    } catch (const Error&) {
      threw = true;
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  pipe.close();
  consumer.join();
  EXPECT_TRUE(threw.load());
}

TEST(TilePipe, SimulatedTimesFollowTheHandOff) {
  TilePipe pipe(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 1));
  int v = 0;
  EXPECT_EQ(pipe.tpush(&v, sizeof v, kWholeTile, 5.0), 0.0);
  EXPECT_EQ(pipe.tpop(&v, sizeof v, kWholeTile, 2.0), 5.0);  // consumer waits until the push at 5
  EXPECT_EQ(pipe.tpush(&v, sizeof v, kWholeTile, 3.0), 5.0);  // slot freed at max(2, 5)
}

// ---- Faults (the sim's mutation tests) and the split pop ----------------------------------

PipeConfig faulty(PipeDirection dir, int depth, PipeFault fault, FreeMode mode = FreeMode::kAtPop) {
  PipeConfig c = config(dir, LaneSplit::kUpDown, depth, 64, mode);
  c.fault = fault;
  return c;
}

TEST(TilePipeFault, PopSkipsWaitReadsWhatTheSlotHolds) {
  TilePipe pipe(faulty(PipeDirection::kC2V, 2, PipeFault::kPopSkipsWait));
  int half = -1;
  pipe.tpop(&half, sizeof half, 0);  // nothing pushed: returns at once with the slot's zeros
  EXPECT_EQ(half, 0);
}

TEST(TilePipeFault, PushSkipsWaitOverwritesAFullSlot) {
  TilePipe pipe(faulty(PipeDirection::kC2V, 1, PipeFault::kPushSkipsWait));
  int a[2] = {1, 2}, b[2] = {3, 4}, half = 0;
  pipe.tpush(a, sizeof a);
  pipe.tpush(b, sizeof b);  // depth 1, nothing popped: would block without the fault
  pipe.tpop(&half, sizeof half, 0);
  EXPECT_EQ(half, 3);
}

TEST(TilePipeFault, PopHalfZeroGivesBothLanesTheUpperHalf) {
  TilePipe pipe(faulty(PipeDirection::kC2V, 2, PipeFault::kPopHalfZero));
  int tile[2] = {7, 8}, up = 0, down = 0;
  pipe.tpush(tile, sizeof tile);
  pipe.tpop(&up, sizeof up, 0);
  pipe.tpop(&down, sizeof down, 1);
  EXPECT_EQ(up, 7);
  EXPECT_EQ(down, 7);
}

TEST(TilePipeFault, PopNoSplitWaitsForAndReleasesLane0Only) {
  TilePipe pipe(faulty(PipeDirection::kV2C, 2, PipeFault::kPopNoSplit));
  int whole[2] = {}, v = 5;
  pipe.tpush(&v, sizeof v, 0);
  pipe.tpop(whole, sizeof whole);  // completes with lane 1's half missing
  EXPECT_EQ(whole[0], 5);
  EXPECT_EQ(whole[1], 0);
  pipe.tpush(&v, sizeof v, 1);
  pipe.tpush(&v, sizeof v, 1);  // lane 1's two slots: fine
  std::atomic<bool> pushed{false};
  std::thread lane1([&] {
    try {
      pipe.tpush(&v, sizeof v, 1);  // its third push: the cube's free released lane 0's half only
      pushed = true;
    } catch (const Error&) {
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  EXPECT_FALSE(pushed.load()) << "lane 1's slot was released by an unsplit free";
  pipe.close();
  lane1.join();
}

TEST(TilePipeFault, LocalStrideIsReportedToTheObserver) {
  struct Seen final : PipeObserver {
    std::vector<PipeAccess> pops;
    void on_access(const TilePipe&, const PipeAccess& a) override {
      if (a.kind == PipeAccess::kPop) pops.push_back(a);
    }
  };
  for (PipeFault fault : {PipeFault::kNone, PipeFault::kLocalStrideFullSlot}) {
    TilePipe pipe(faulty(PipeDirection::kC2V, 2, fault));
    Seen seen;
    pipe.set_observer(&seen);
    std::vector<int> tile(16), half(8);
    for (int i = 0; i < 2; ++i) {
      pipe.tpush(tile.data(), 64);
      pipe.tpop(half.data(), 32, 0);
      pipe.tpop(half.data(), 32, 1);
    }
    ASSERT_EQ(seen.pops.size(), 4u);
    EXPECT_EQ(seen.pops[1].offset, 32u);  // lane 1's half of the slot
    EXPECT_EQ(seen.pops[2].local_slot, 1);
    EXPECT_EQ(seen.pops[2].local_offset, fault == PipeFault::kNone ? 32u : 64u);  // a lane's share, or a whole slot
  }
}

TEST(TilePipe, SplitPopCopiesWhatTheSlotHoldsAtTheCopy) {
  TilePipe pipe(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 1, 64, FreeMode::kExplicit));
  int a = 1, b = 2, v = 0;
  pipe.tpush(&a, sizeof a);
  const PopTicket t = pipe.consumer_wait(sizeof v);
  EXPECT_EQ(t.tile, 0);
  pipe.tfree();  // too early: the producer may reuse the slot before the copy
  pipe.tpush(&b, sizeof b);
  pipe.copy_out(t, &v);
  EXPECT_EQ(v, 2);
  expect_error([] {
    TilePipe p(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 1));
    p.consumer_wait(4);
  }, "needs explicit free");
}

TEST(Launcher, EveryWorkerKnowsItsPlace) {
  std::vector<int> seen(12, 0);
  std::mutex m;
  launch_mix(4, false, nullptr, [&](const CoreContext& c) {
    std::lock_guard lock(m);
    EXPECT_EQ(c.block_num, 4);
    EXPECT_EQ(c.worker, c.block_idx * 3 + static_cast<int>(c.role));
    EXPECT_EQ(c.sub_block_id, c.role == CoreRole::kVector1 ? 1 : 0);
    ++seen[c.worker];
  }, [] {});
  for (int s : seen) EXPECT_EQ(s, 1);
}

TEST(Launcher, SingleThreadRunsOneWorkerAtATimeInAFixedOrder) {
  for (int run = 0; run < 2; ++run) {
    TurnScheduler sched(6);
    TilePipe pipe(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 1), &sched);
    std::vector<int> order;
    std::atomic<int> running{0};
    launch_mix(2, true, &sched, [&](const CoreContext& c) {
      EXPECT_EQ(++running, 1);
      order.push_back(c.worker);
      --running;
      if (c.worker == 0) { int v = 1; pipe.tpush(&v, sizeof v); pipe.tpush(&v, sizeof v); }
      if (c.worker == 4) { int v; pipe.tpop(&v, sizeof v); pipe.tpop(&v, sizeof v); }
      EXPECT_EQ(++running, 1);
      order.push_back(100 + c.worker);
      --running;
    }, [] {});
    EXPECT_EQ(order.front(), 0);
    EXPECT_EQ(order.size(), 12u);
  }
}

TEST(Launcher, SingleThreadDetectsADeadlockAtOnce) {
  TurnScheduler sched(3);
  TilePipe a(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 1), &sched);
  TilePipe b(config(PipeDirection::kV2C, LaneSplit::kNoSplit, 1), &sched);
  EXPECT_THROW(launch_mix(1, true, &sched, [&](const CoreContext& c) {
    int v = 0;
    if (c.role == CoreRole::kCube) b.tpop(&v, sizeof v);       // waits for the vector...
    if (c.role == CoreRole::kVector0) a.tpop(&v, sizeof v);    // ...which waits for the cube
  }, [&] { a.close(); b.close(); }), Error);
  EXPECT_TRUE(sched.deadlocked());
}

// Random turns: which worker starts after worker 0 blocks, per seed.
std::vector<int> random_order(std::uint64_t seed) {
  TurnScheduler sched(9);
  sched.set_random(seed);
  TilePipe pipe(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 32), &sched);  // never full
  std::vector<int> order;
  launch_mix(3, true, &sched, [&](const CoreContext& c) {
    int v = c.worker;
    for (int i = 0; i < 2; ++i) {
      order.push_back(c.worker);
      pipe.tpush(&v, sizeof v);  // a pipe call: a point where the turn may move
    }
  }, [] {});
  return order;
}

TEST(Launcher, RandomTurnsAreReproducibleAndDifferBySeed) {
  EXPECT_EQ(random_order(1), random_order(1));
  bool differs = false;
  for (std::uint64_t seed = 2; seed < 10 && !differs; ++seed) differs = random_order(seed) != random_order(1);
  EXPECT_TRUE(differs);
  EXPECT_EQ(random_order(1).size(), 18u);
}

TEST(Launcher, RandomTurnsDetectADeadlockAtOnce) {
  for (std::uint64_t seed = 0; seed < 4; ++seed) {
    TurnScheduler sched(3);
    sched.set_random(seed);
    TilePipe a(config(PipeDirection::kC2V, LaneSplit::kNoSplit, 1), &sched);
    TilePipe b(config(PipeDirection::kV2C, LaneSplit::kNoSplit, 1), &sched);
    EXPECT_THROW(launch_mix(1, true, &sched, [&](const CoreContext& c) {
      int v = 0;
      if (c.role == CoreRole::kCube) b.tpop(&v, sizeof v);
      if (c.role == CoreRole::kVector0) a.tpop(&v, sizeof v);
    }, [&] { a.close(); b.close(); }), Error);
    EXPECT_TRUE(sched.deadlocked());
  }
}

}  // namespace
}  // namespace mixpa
