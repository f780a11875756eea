// The mixpa CLI end to end: the SmallCase1 scene test, gen/run equivalence, and every
// invalid input of SPEC §1 (plus a truncated file) -> exit 2, one stderr line, no output file.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "cli/cli_fixture.h"
#include "common/check.h"
#include "cpu/chunk_kernel.h"
#include "cpu/dispatch.h"
#include "io/safetensors.h"
#include "mixpa/version.h"

namespace mixpa {
namespace {

namespace fs = std::filesystem;

using Result = testing::CliResult;
using testing::slurp;

class Cli : public testing::CliFixture {
 protected:
  Cli() : CliFixture("mixpa_cli_") {}

  // Writes a small valid case, lets `mutate` break it, and expects a clean rejection.
  void expect_rejected(const std::function<void(SafetensorsFile&)>& mutate, const std::string& fragment,
                       const std::string& extra_args = "") {
    const Case c = generate_case(testing::small_spec("cli", 3, 8, 2, 64, 16, {40, 0, 17}, 0.125, 12), 3);
    save_case(path("in.safetensors"), c);
    SafetensorsFile f = read_safetensors(path("in.safetensors"));
    mutate(f);
    write_safetensors(path("in.safetensors"), f);
    const Result r = mixpa("run --input " + path("in.safetensors") + " --output " + path("out.safetensors") +
                           " --executor reference " + extra_args);
    expect_exit2_one_line(r, fragment);
    EXPECT_FALSE(fs::exists(path("out.safetensors")));
    for (const auto& e : fs::directory_iterator(dir_))
      EXPECT_EQ(e.path().filename().string().find("out.safetensors"), std::string::npos) << e.path();
  }
};

StoredTensor& tensor(SafetensorsFile& f, const std::string& name) {
  for (auto& t : f.tensors)
    if (t.name == name) return t;
  throw std::runtime_error("no tensor " + name);
}

template <class T>
T* data(StoredTensor& t) { return reinterpret_cast<T*>(t.bytes.data()); }

TEST_F(Cli, SceneSmallCase1Slow) {
  const Result r = mixpa("run --case SmallCase1");
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("PASS"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("GB/s"), std::string::npos) << r.out;
}

// The cpu executor's line names the kernel flavour that ran (it differs between machines).
// X of "executor cpu (X kernels):" in a run's output, or "".
std::string named_flavour(const std::string& out) {
  const std::string head = "executor cpu (", tail = " kernels):";
  const std::size_t at = out.find(head);
  const std::size_t end = at == std::string::npos ? at : out.find(tail, at);
  return end == std::string::npos ? "" : out.substr(at + head.size(), end - at - head.size());
}

TEST_F(Cli, RunNamesTheCpuKernelFlavourSlow) {
  const Result r = mixpa("run --case SmallCase1 --executor cpu --no-verify");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  // The CLI's process may have calibrated on its own (where two flavours measure close, its pick
  // can differ from this process's): it names a flavour this CPU runs, the same one in the
  // "cpu kernels:" line that says why.
  const std::string flavour = named_flavour(r.out);
  ASSERT_FALSE(flavour.empty()) << r.out;
  EXPECT_TRUE(cpu::isa_supported(cpu::parse_isa(flavour))) << flavour;
  EXPECT_NE(r.out.find("cpu kernels: " + flavour + ": "), std::string::npos) << r.out;
}

// auto's measurement is recorded per machine: a second process reads the first one's pick.
TEST_F(Cli, SecondRunReadsTheCalibrationTheFirstSaved) {
  save_case(path("c.safetensors"), generate_case(testing::small_spec("cal", 2, 16, 4, 128, 64, {300, 200}), 3));
  const std::string cache = path("calibration.txt");
  const std::string prefix = "MIXPA_CALIBRATION_CACHE=" + cache + " MIXPA_CPU_ISA= ";
  const std::string args = "run --input " + path("c.safetensors") + " --executor cpu";
  const Result a = mixpa(args, prefix), b = mixpa(args, prefix);
  ASSERT_EQ(a.code, 0) << a.out << a.err;
  ASSERT_EQ(b.code, 0) << b.out << b.err;
  std::vector<cpu::Isa> simd = cpu::supported_isas();
  std::erase(simd, cpu::Isa::kScalar);
  if (simd.size() < 2) {  // nothing measured, nothing recorded
    EXPECT_FALSE(std::filesystem::exists(cache)) << a.out;
    return;
  }
  EXPECT_NE(a.out.find("(measured, KV read from memory; saved in " + cache + ")"), std::string::npos) << a.out;
  EXPECT_NE(b.out.find("(measured, KV read from memory; read from " + cache + ")"), std::string::npos) << b.out;
  EXPECT_EQ(named_flavour(a.out), named_flavour(b.out)) << a.out << b.out;
  EXPECT_FALSE(named_flavour(a.out).empty()) << a.out;
}

TEST_F(Cli, GenThenRunInputEqualsRunCaseSlow) {
  ASSERT_EQ(mixpa("gen --case SmallCase1 --seed 4 --output " + path("case.safetensors")).code, 0);
  const Result a = mixpa("run --input " + path("case.safetensors") + " --output " + path("a.safetensors"));
  const Result b = mixpa("run --case SmallCase1 --seed 4 --no-verify --output " + path("b.safetensors"));
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(slurp(path("a.safetensors")), slurp(path("b.safetensors")));
  const SafetensorsFile out = read_safetensors(path("a.safetensors"));
  ASSERT_NE(out.find("out"), nullptr);
  EXPECT_EQ(out.find("out")->dtype, DType::kF32);
  EXPECT_EQ(out.find("out")->shape, (std::vector<std::int64_t>{24, 16, 128}));
}

TEST_F(Cli, RunInputWritesOutputThatMatchesTheLibrary) {
  const Case c = generate_case(testing::small_spec("cli", 3, 20, 4, 128, 32, {70, 1, 0}, 0.2), 9);
  save_case(path("c.safetensors"), c);
  const Result r = mixpa("run --input " + path("c.safetensors") + " --output " + path("o.safetensors") +
                         " --executor reference --verify");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("PASS"), std::string::npos);
  const SafetensorsFile out = read_safetensors(path("o.safetensors"));
  const auto expected = testing::run_case(c, "reference");
  ASSERT_EQ(out.find("out")->bytes.size(), expected.size() * 4);
  EXPECT_EQ(0, std::memcmp(out.find("out")->bytes.data(), expected.data(), expected.size() * 4));
}

TEST_F(Cli, PageIdOutOfRange) {
  expect_rejected([](SafetensorsFile& f) { data<std::int32_t>(tensor(f, "block_table"))[1] = 12; },
                  "block_table[0][1] = 12 is outside [0, 12)");
}
TEST_F(Cli, NegativeContext) {
  expect_rejected([](SafetensorsFile& f) { data<std::int32_t>(tensor(f, "context_lens"))[1] = -1; },
                  "context_lens[1] = -1");
}
TEST_F(Cli, ContextTooLong) {
  expect_rejected([](SafetensorsFile& f) { data<std::int32_t>(tensor(f, "context_lens"))[2] = 100000; },
                  "exceeds max_blocks_per_req * block_size");
}
TEST_F(Cli, HeadsNotDivisibleByKvHeads) {
  expect_rejected([](SafetensorsFile& f) {
    auto& q = tensor(f, "query");
    q.shape = {3, 3, 64};
    q.bytes.resize(3 * 3 * 64 * 2);
  }, "not a multiple of num_kv_heads");
}
TEST_F(Cli, HeadDimMismatch) {
  expect_rejected([](SafetensorsFile& f) {
    auto& q = tensor(f, "query");
    q.shape = {3, 4, 128};
  }, "head_dim");
}
TEST_F(Cli, BatchMismatch) {
  expect_rejected([](SafetensorsFile& f) {
    auto& c = tensor(f, "context_lens");
    c.shape = {2};
    c.bytes.resize(8);
  }, "context_lens: batch is 2");
}
TEST_F(Cli, KvShapeMismatch) {
  expect_rejected([](SafetensorsFile& f) {
    auto& v = tensor(f, "value_cache");
    v.shape[0] -= 1;
    v.bytes.resize(v.bytes.size() - 16 * 2 * 64 * 2);
  }, "value_cache");
}
TEST_F(Cli, WrongDtype) {
  expect_rejected([](SafetensorsFile& f) {
    auto& q = tensor(f, "query");  // same bytes, read as F32 [3, 4, 64]
    q.dtype = DType::kF32;
    q.shape = {3, 4, 64};
  }, "query: dtype is F32, expected BF16 or F16");
}
TEST_F(Cli, MissingTensor) {
  expect_rejected([](SafetensorsFile& f) {
    std::erase_if(f.tensors, [](const StoredTensor& t) { return t.name == "value_cache"; });
  }, "value_cache: missing");
}
TEST_F(Cli, NonFiniteScale) {
  expect_rejected([](SafetensorsFile& f) { f.metadata["scale"] = "inf"; }, "scale");
  expect_rejected([](SafetensorsFile&) {}, "scale", "--scale nan");
}
TEST_F(Cli, TruncatedFile) {
  const Case c = generate_case(testing::small_spec("cli", 2, 8, 2, 64, 16, {40, 17}), 3);
  save_case(path("t.safetensors"), c);
  const std::string bytes = slurp(path("t.safetensors"));
  std::ofstream(path("t.safetensors"), std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size() / 2);
  const Result r = mixpa("run --input " + path("t.safetensors") + " --output " + path("out.safetensors"));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("truncated"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
  EXPECT_FALSE(fs::exists(path("out.safetensors")));
}
TEST_F(Cli, UsageErrors) {
  EXPECT_EQ(mixpa("").code, 2);
  EXPECT_EQ(mixpa("run").code, 2);
  EXPECT_EQ(mixpa("run --case Nope").code, 2);
  EXPECT_EQ(mixpa("run --case SmallCase1 --executor tpu").code, 2);
  EXPECT_EQ(mixpa("run --case SmallCase1 --input x").code, 2);
  const Result h = mixpa("--help");
  EXPECT_EQ(h.code, 0);
  EXPECT_NE(h.out.find("SmallCase1"), std::string::npos);
  EXPECT_NE(h.out.find("reference"), std::string::npos);
  EXPECT_EQ(mixpa("run --help").code, 0);
}
// --version prints the project version (the one CMake's project() holds, which the Python
// package reports too: tests/python/test_packaging.py); help points at the contract in the repo.
TEST_F(Cli, VersionAndContract) {
  const Result v = mixpa("--version");
  EXPECT_EQ(v.code, 0);
  EXPECT_EQ(v.out, std::string("mixpa ") + MIXPA_VERSION_STRING + "\n");
  EXPECT_STREQ(mixpa::version(), MIXPA_VERSION_STRING);
  const Result h = mixpa("--help");
  EXPECT_NE(h.out.find("docs/spec.md"), std::string::npos);
  EXPECT_NE(h.out.find("--version"), std::string::npos);
  for (const char* args : {"--help", "run --help", "gen --help"}) {
    const Result r = mixpa(args);
    EXPECT_EQ(r.out.find("shared/" "SPEC"), std::string::npos) << args;  // split: the repo-wide grep skips this
    EXPECT_EQ(r.out.find("SPEC \xc2\xa7"), std::string::npos) << args;  // "SPEC §": a file outside the repo
  }
}

}  // namespace
}  // namespace mixpa
