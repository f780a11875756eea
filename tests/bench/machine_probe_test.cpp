// The bench's dot-product probes compute every FLOP they count: with a = b = 1 each of the
// chains must end at exactly its start plus iters steps, summed over every lane.
#include "machine_probe.h"

#include <gtest/gtest.h>

namespace mixpa::bench {
namespace {

TEST(MachineProbe, EveryDotProbeComputesAllItsChains) {
  constexpr std::int64_t kIters = 1000;
  const std::vector<ProbeCheck> probes = run_dot_probes_once(kIters);
  if (probes.empty()) GTEST_SKIP() << "no SIMD dot-product instruction on this CPU";
  for (const ProbeCheck& p : probes) {
    // flop_per_instr = lanes * 2 * products per lane; vdpbf16ps does 2 products per lane.
    const bool bf16 = p.instruction.rfind("vdpbf16ps", 0) == 0;
    const double products = bf16 ? 2 : 1;
    const double lanes = p.flop_per_instr / (2 * products);
    const double step = products;  // each product is 1 * 1
    const double c = p.chains;
    EXPECT_GE(p.chains, 8) << p.instruction;  // a 4-cycle FMA on 2 pipes needs 8 in flight
    EXPECT_EQ(p.sum, lanes * (c * (c - 1) / 2 + c * kIters * step)) << p.instruction;
  }
}

}  // namespace
}  // namespace mixpa::bench

namespace mixpa::bench {
namespace {

// The cold-run sizing needs the last-level cache: sysfs on Linux (this project's machines).
TEST(MachineProbe, LastLevelCacheIsKnownOnLinux) {
  const std::int64_t llc = last_level_cache_bytes();
  EXPECT_GE(llc, 0);
#if defined(__linux__)
  EXPECT_GE(llc, std::int64_t{1} << 20) << "no cache size in /sys/devices/system/cpu/cpu0/cache";
#endif
}

// The bandwidth probe over rotated copies reads every copy's pages (a positive, finite rate).
TEST(MachineProbe, BandwidthOverCopiesIsPositive) {
  CaseSpec spec;
  spec.name = "probe";
  spec.batch = 2;
  spec.context_lens = {300};
  spec.max_model_len = 512;
  const Case a = generate_case(spec, 1), b = generate_case(spec, 2);
  const Case* copies[] = {&a, &b};
  const double gbps = measure_kv_read_bandwidth(copies, 2, 3);
  EXPECT_TRUE(gbps > 0 && gbps < 1e6) << gbps;
}

}  // namespace
}  // namespace mixpa::bench
