// The bench's dot-product probes compute every FLOP they count: with a = b = 1 each of the 16
// chains must end at exactly its start plus iters steps, summed over every lane.
#include "machine_probe.h"

#include <gtest/gtest.h>

namespace mixpa::bench {
namespace {

TEST(MachineProbe, EveryDotProbeComputesAllSixteenChains) {
  constexpr std::int64_t kIters = 1000;
  const std::vector<ProbeCheck> probes = run_dot_probes_once(kIters);
  if (probes.empty()) GTEST_SKIP() << "no SIMD dot-product instruction on this CPU";
  for (const ProbeCheck& p : probes) {
    // flop_per_instr = lanes * 2 * products per lane; vdpbf16ps does 2 products per lane.
    const bool bf16 = p.instruction.rfind("vdpbf16ps", 0) == 0;
    const double products = bf16 ? 2 : 1;
    const double lanes = p.flop_per_instr / (2 * products);
    const double step = products;  // each product is 1 * 1
    EXPECT_EQ(p.sum, lanes * (120 + 16 * kIters * step)) << p.instruction;
  }
}

}  // namespace
}  // namespace mixpa::bench
