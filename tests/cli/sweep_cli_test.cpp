// Random SPEC §6 problems (common/sweep.h: any dtype, shape, layout, index width and variant, with
// NaN / Inf in every cache row no query row sees) as case files through `mixpa run --input
// --output --verify` on every executor, as the hidden cases arrive: exit 0, out and lse of
// the query's shape within SPEC §6's bounds of exact float64, the sim bit for bit the reference,
// and the cpu executor's file bit for bit the library's own output for the same problem.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cli/cli_fixture.h"
#include "common/check.h"
#include "common/sweep.h"
#include "io/safetensors.h"

namespace mixpa {
namespace {

using testing::floats;

class SweepCli : public testing::CliFixture, public ::testing::WithParamInterface<int> {
 protected:
  SweepCli() : CliFixture("mixpa_sweep_cli_") {}
};

TEST_P(SweepCli, RandomSpec6CaseFilePassesOnEveryExecutor) {
  const auto seed = static_cast<std::uint64_t>(500 + GetParam());
  const testing::Drawn d = testing::draw(seed);
  SCOPED_TRACE(d.text);
  const Case c = testing::sweep_case(d, seed);
  save_case(path("c.safetensors"), c);
  std::vector<double> exact_lse;
  const std::vector<double> exact = testing::exact(c, {}, &exact_lse);
  std::vector<float> ref_out, ref_lse;
  for (const char* executor : {"reference", "sim", "cpu"}) {
    SCOPED_TRACE(executor);
    const testing::CliResult r = mixpa("run --input " + path("c.safetensors") + " --output " + path("o.safetensors") +
                                       " --verify --executor " + executor);
    ASSERT_EQ(r.code, 0) << r.out << r.err;
    EXPECT_EQ(r.out.find("FAIL"), std::string::npos) << r.out;
    const SafetensorsFile o = read_safetensors(path("o.safetensors"));
    ASSERT_NE(o.find("out"), nullptr);
    ASSERT_NE(o.find("lse"), nullptr);
    std::vector<std::int64_t> want{d.spec.batch, d.spec.num_heads, d.spec.head_dim};
    if (d.spec.q_len > 1) want.insert(want.begin() + 1, d.spec.q_len);
    EXPECT_EQ(o.find("out")->shape, want);
    want.pop_back();
    EXPECT_EQ(o.find("lse")->shape, want);
    const std::vector<float> out = floats(*o.find("out")), lse = floats(*o.find("lse"));
    testing::expect_close_to_exact(c, out, exact);
    testing::expect_lse_close_to_exact(c, lse, exact_lse);
    const std::string name(executor);
    if (name == "reference") {
      ref_out = out;
      ref_lse = lse;
    }
    if (name == "sim") EXPECT_TRUE(out == ref_out && lse == ref_lse) << "sim differs from the reference";
    if (name == "cpu") {
      std::vector<float> api_lse;
      const std::vector<float> api = testing::run_case(c, "cpu", {}, &api_lse);
      EXPECT_EQ(0, std::memcmp(api.data(), out.data(), out.size() * 4)) << "the file's out is not the library's";
      EXPECT_EQ(0, std::memcmp(api_lse.data(), lse.data(), lse.size() * 4)) << "the file's lse is not the library's";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Seeds, SweepCli, ::testing::Range(0, 12));

}  // namespace
}  // namespace mixpa
