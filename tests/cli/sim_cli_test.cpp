// `mixpa run --executor sim` as a debugging tool: --check's report and exit code 4, and
// --schedule-seeds comparing random schedules bit for bit.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "common/check.h"
#include "io/safetensors.h"

namespace mixpa {
namespace {

namespace fs = std::filesystem;

class SimCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mixpa_simcli_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    // Two requests of more than depth pages, 2 hardware blocks.
    save_case(path("c.safetensors"), generate_case(testing::small_spec("simcli", 2, 16, 1, 64, 16, {70, 50}), 3));
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs `mixpa run` on the case with the sim; returns the exit code, stdout and stderr.
  int sim(const std::string& args, std::string* out = nullptr, std::string* err = nullptr) {
    const std::string cmd = std::string(MIXPA_CLI_PATH) + " run --input " + path("c.safetensors") +
                            " --executor sim --blocks 2 " + args + " >" + path("stdout") + " 2>" + path("stderr");
    const int status = std::system(cmd.c_str());
    if (out) *out = slurp(path("stdout"));
    if (err) *err = slurp(path("stderr"));
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static std::string slurp(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  fs::path dir_;
};

TEST_F(SimCli, CheckIsSilentOnTheCorrectPrograms) {
  std::string out, err;
  EXPECT_EQ(sim("--check --verify --explicit-free --pipe-depth 1", &out, &err), 0) << out << err;
  EXPECT_NE(out.find("PASS"), std::string::npos) << out;
}

TEST_F(SimCli, CheckFindingExitsFourWithTheReport) {
  std::string out, err;
  EXPECT_EQ(sim("--check --inject lane-half0 --schedule turns --output " + path("o.safetensors"), &out, &err), 4) << out;
  EXPECT_NE(err.find("sim check: rows [0, 8) consumed by both lanes"), std::string::npos) << err;
  EXPECT_NE(err.find("conflict: block 0 vector0 (lane 0)"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(path("o.safetensors")));
}

TEST_F(SimCli, ScheduleSeedsAgreeForTheCorrectPrograms) {
  std::string out, err;
  EXPECT_EQ(sim("--schedule-seeds 3 --schedule-seed 10", &out, &err), 0) << out << err;
  EXPECT_NE(out.find("3 random schedules (seeds 10-12) gave identical bits"), std::string::npos) << out;
}

TEST_F(SimCli, ScheduleSeedsExposeARaceAndNameTheSeed) {
  std::string out, err;
  EXPECT_EQ(sim("--schedule-seeds 8 --inject free-before-copy --pipe-depth 1", &out, &err), 4) << out << err;
  EXPECT_NE(err.find("the output depends on the schedule: seed "), std::string::npos) << err;
  EXPECT_NE(err.find("first at out["), std::string::npos) << err;
  EXPECT_NE(err.find("reproduce: --schedule random --schedule-seed "), std::string::npos) << err;
}

TEST_F(SimCli, UnknownInjectionIsAUsageError) {
  std::string err;
  EXPECT_EQ(sim("--inject nope", nullptr, &err), 2);
  EXPECT_NE(err.find("not a known bug"), std::string::npos) << err;
}

TEST_F(SimCli, SimFlagsNeedTheSimExecutor) {
  const std::string cmd = std::string(MIXPA_CLI_PATH) + " run --input " + path("c.safetensors") +
                          " --executor reference --check 2>" + path("stderr") + " >/dev/null";
  const int status = std::system(cmd.c_str());
  EXPECT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 2);
  EXPECT_NE(slurp(path("stderr")).find("apply to --executor sim only (got reference)"), std::string::npos);
}

}  // namespace
}  // namespace mixpa
