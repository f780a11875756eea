// The fixture every CLI suite shares: a private directory per test, the built binary run with
// its stdout / stderr captured, and the checks of a clean rejection (SPEC: exit 2, one line).
// MIXPA_CLI=path runs the suites against another build of the binary.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "io/safetensors.h"

namespace mixpa::testing {

struct CliResult {
  int code = -1;   // exit status, -1 when killed by a signal
  int signal = 0;  // the signal that killed it, 0 if none
  std::string out, err;
};

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void spit(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A stored F32 tensor's values (out, lse of a run's output file).
inline std::vector<float> floats(const StoredTensor& t) {
  std::vector<float> v(t.bytes.size() / 4);
  std::memcpy(v.data(), t.bytes.data(), v.size() * 4);
  return v;
}

inline std::string cli_path() {
  const char* env = std::getenv("MIXPA_CLI");
  return env && *env ? env : MIXPA_CLI_PATH;
}

class CliFixture : public ::testing::Test {
 protected:
  // `dir_prefix` names the suite's directories (e.g. "mixpa_cli_"): suites never share one.
  explicit CliFixture(std::string dir_prefix = "mixpa_cli_") : dir_prefix_(std::move(dir_prefix)) {}

  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           (dir_prefix_ + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs `mixpa ARGS` through /bin/sh. `prefix` runs before the binary in the same shell (e.g.
  // "ulimit -v N;"). The binary keeps the child's pid (sh -c "exec ..."); `before_exec(pid)`
  // runs in the parent after the fork and before the child may exec.
  CliResult mixpa(const std::string& args, const std::string& prefix = "",
                  const std::function<void(int)>& before_exec = {}) {
    const std::string cmd = prefix + " exec " + cli_path() + " " + args;
    const std::string out_path = (dir_ / "stdout").string(), err_path = (dir_ / "stderr").string();
    int gate[2];
    if (::pipe(gate) != 0) throw std::runtime_error("pipe");
    const pid_t pid = ::fork();
    if (pid == 0) {  // only async-signal-safe calls until exec
      ::close(gate[1]);
      char c;
      while (::read(gate[0], &c, 1) < 0) {
      }
      const int o = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int e = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (o < 0 || e < 0 || ::dup2(o, 1) < 0 || ::dup2(e, 2) < 0) ::_exit(126);
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(gate[0]);
    if (before_exec) before_exec(static_cast<int>(pid));
    if (::write(gate[1], "x", 1) != 1) throw std::runtime_error("write");
    ::close(gate[1]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    CliResult r;
    if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
    r.out = slurp(dir_ / "stdout");
    r.err = slurp(dir_ / "stderr");
    return r;
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Exit 2 and one stderr line holding `fragment`.
  static void expect_exit2_one_line(const CliResult& r, const std::string& fragment) {
    EXPECT_EQ(r.code, 2) << r.out << r.err;
    EXPECT_NE(r.err.find(fragment), std::string::npos) << "expected \"" << fragment << "\" in stderr: " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
  }

  // The same, with no progress line (\r) and nothing computed.
  static void expect_clean_rejection(const CliResult& r, const std::string& fragment) {
    expect_exit2_one_line(r, fragment);
    EXPECT_EQ(r.err.find('\r'), std::string::npos) << "no progress line: " << r.err;
    EXPECT_EQ(r.out.find("executor "), std::string::npos) << "nothing computed: " << r.out;
  }

  std::string dir_prefix_;
  std::filesystem::path dir_;
};

}  // namespace mixpa::testing
