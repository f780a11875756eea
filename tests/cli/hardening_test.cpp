// The CLI against an attacker and a careless user (issue 15): every bad input or option ends
// in exit 2 and one clean stderr line naming the input and the rule, before any work; no output
// file is clobbered through a planted link, replaced when it is the input, or left half written.
// MIXPA_CLI=path runs these against another build of the binary.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <fcntl.h>
#include <functional>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli_fixture.h"
#include "common/check.h"
#include "io/safetensors.h"

namespace mixpa {
namespace {

namespace fs = std::filesystem;

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif
#else
constexpr bool kAsan = false;
#endif

using Result = testing::CliResult;
using testing::cli_path;
using testing::slurp;
using testing::spit;

// A safetensors image from a header written by hand (duplicate keys, odd strings) and data.
std::string raw_file(const std::string& header, const std::string& data) {
  std::string h = header;
  h.append((8 - h.size() % 8) % 8, ' ');
  std::string r(8, '\0');
  for (int i = 0; i < 8; ++i) r[i] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
  return r + h + data;
}

class Hardening : public testing::CliFixture {
 protected:
  Hardening() : CliFixture("mixpa_harden_") {}

  // A small valid case file (3 requests, 8 heads / 2 kv heads, head_dim 64, block_size 16).
  std::string small_case(const std::string& name = "in.safetensors") {
    save_case(path(name), generate_case(testing::small_spec("cli", 3, 8, 2, 64, 16, {40, 0, 17}, 0.125, 12), 3));
    return path(name);
  }

  // The only entries of the test directory are `names` (no temporaries left behind).
  void expect_directory_holds(std::vector<std::string> names) const {
    names.push_back("stdout");
    names.push_back("stderr");
    std::vector<std::string> got;
    for (const auto& e : fs::directory_iterator(dir_)) got.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, names);
  }
};

// --- 2: option bounds and failed thread starts -------------------------------------------

TEST_F(Hardening, HardwareBlocksAboveTheLimit) {
  const std::string in = small_case();
  expect_clean_rejection(mixpa("run --input " + in + " --executor sim --blocks 20000"),
                         "hw_blocks: 20000 is above the limit of 256");
}

TEST_F(Hardening, PipeDepthAboveTheLimit) {
  const std::string in = small_case();
  expect_clean_rejection(mixpa("run --input " + in + " --executor sim --pipe-depth 1000000"),
                         "pipe_depth: 1000000 is above the limit of 16");
}

TEST_F(Hardening, ThreadsAboveTheLimit) {
  const std::string in = small_case();
  expect_clean_rejection(mixpa("run --input " + in + " --executor cpu --threads 100000"),
                         "num_threads: 100000 is above the limit of 1024");
}

// Under an address-space limit the OS refuses most of 768 worker threads (8 MiB stacks): the
// started ones are released and joined, and the failure is an error, not std::terminate.
TEST_F(Hardening, WorkerThreadThatCannotStartIsAnError) {
  if (kAsan) GTEST_SKIP() << "ASan reserves terabytes of address space: ulimit -v cannot apply";
  const std::string in = small_case();
  const Result r = mixpa("run --input " + in + " --executor sim --blocks 256 --output " + path("out.safetensors"),
                         "ulimit -v 1000000;");
  EXPECT_EQ(r.signal, 0) << "killed by signal " << r.signal << ": " << r.err;  // not std::terminate
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("cannot start"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("thread"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_FALSE(fs::exists(path("out.safetensors")));
}

// The cpu executor's pool, asked for 1024 threads on 2200 work units, under the same limit.
TEST_F(Hardening, PoolThreadThatCannotStartIsAnError) {
  if (kAsan) GTEST_SKIP() << "ASan reserves terabytes of address space: ulimit -v cannot apply";
  save_case(path("many.safetensors"), generate_case(testing::small_spec("many", 1100, 8, 2, 64, 16, {1}), 1));
  const Result r = mixpa("run --input " + path("many.safetensors") + " --executor cpu --threads 1024 --output " +
                             path("out.safetensors"),
                         "ulimit -v 1000000;");
  EXPECT_EQ(r.signal, 0) << "killed by signal " << r.signal << ": " << r.err;
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("cpu: cannot start worker thread"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_FALSE(fs::exists(path("out.safetensors")));
}

// --- 3: temporaries are never a planted link ------------------------------------------------

// A link planted at the name the old scheme (OUTPUT.tmp.<pid>) gives the writer's temporary,
// pointing at a victim file: it must not be written through. Planted between the fork and
// the exec, so the pid is the writer's.
void plant(const fs::path& dir, const std::string& output, const fs::path& victim, int pid) {
  fs::create_symlink(victim, dir / (output + ".tmp." + std::to_string(pid)));
}

TEST_F(Hardening, OutputsNeverWriteThroughPlantedLinks) {
  const std::string in = small_case();
  const fs::path victim = dir_ / "victim";
  spit(victim, "precious");
  const Result r = mixpa("run --input " + in + " --executor sim --output " + path("out.safetensors") + " --trace " +
                             path("t.json") + " --swimlane " + path("t.svg"),
                         "", [&](int pid) {
                           for (const char* name : {"out.safetensors", "t.json", "t.svg"}) plant(dir_, name, victim, pid);
                         });
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(slurp(victim), "precious");
  ASSERT_NE(read_safetensors(path("out.safetensors")).find("out"), nullptr);
  EXPECT_NE(slurp(path("t.json")).find("traceEvents"), std::string::npos);
  EXPECT_NE(slurp(path("t.svg")).find("<svg"), std::string::npos);
  for (const auto& e : fs::directory_iterator(dir_))
    if (fs::is_symlink(e.path())) fs::remove(e.path());
  expect_directory_holds({"in.safetensors", "victim", "out.safetensors", "t.json", "t.svg"});
}

// gen writes SmallCase1 (100 MB): slow under the sanitizers.
TEST_F(Hardening, GenNeverWritesThroughPlantedLinksSlow) {
  const fs::path victim = dir_ / "victim";
  spit(victim, "precious");
  const Result g = mixpa("gen --case SmallCase1 --output " + path("gen.safetensors"), "",
                         [&](int pid) { plant(dir_, "gen.safetensors", victim, pid); });
  ASSERT_EQ(g.code, 0) << g.out << g.err;
  EXPECT_EQ(slurp(victim), "precious");
  EXPECT_EQ(load_case(path("gen.safetensors")).spec.batch, 24);
}

// An output that is itself a link is replaced by the new file, never written through.
TEST_F(Hardening, OutputThatIsALinkIsReplacedNotFollowed) {
  const std::string in = small_case();
  spit(dir_ / "victim", "precious");
  fs::create_symlink(dir_ / "victim", dir_ / "out.safetensors");
  const Result r = mixpa("run --input " + in + " --executor reference --output " + path("out.safetensors"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(slurp(dir_ / "victim"), "precious");
  EXPECT_FALSE(fs::is_symlink(dir_ / "out.safetensors"));
  EXPECT_NE(read_safetensors(path("out.safetensors")).find("out"), nullptr);
}

// --- 6, 7: the input ----------------------------------------------------------------------

TEST_F(Hardening, InputThatIsADirectory) {
  fs::create_directories(dir_ / "cases");
  const Result r = mixpa("run --input " + path("cases") + " --output " + path("out.safetensors"));
  expect_clean_rejection(r, path("cases") + ": is a directory");
  EXPECT_FALSE(fs::exists(path("out.safetensors")));
}

TEST_F(Hardening, InputThatIsNotARegularFile) {
  expect_clean_rejection(mixpa("run --input /dev/zero"), "/dev/zero: is not a regular file");
}

TEST_F(Hardening, OutputThatIsTheInputIsRefused) {
  const std::string in = small_case();
  const std::string before = slurp(in);
  fs::create_directories(dir_ / "sub");
  fs::create_symlink(in, dir_ / "link.safetensors");
  fs::create_hard_link(in, dir_ / "hard.safetensors");
  for (const std::string& out : {in, path("sub/../in.safetensors"), path("link.safetensors"),
                                 path("hard.safetensors")}) {
    const Result r = mixpa("run --input " + in + " --executor reference --output " + out);
    expect_clean_rejection(r, "is the same file as --input");
    EXPECT_EQ(slurp(in), before) << out;
  }
  // and the other way round: the input named through the link
  expect_clean_rejection(mixpa("run --input " + path("link.safetensors") + " --output " + in), "is the same file");
  EXPECT_EQ(slurp(in), before);
  expect_clean_rejection(mixpa("run --input " + in + " --executor sim --trace " + in), "is the same file as --input");
  expect_clean_rejection(mixpa("run --input " + in + " --executor sim --output " + path("o") + " --swimlane " + path("o")),
                         "is the same file as --output");
  EXPECT_EQ(slurp(in), before);
}

// --- 8: silent acceptance ---------------------------------------------------------------------

// The small case's header, as written by save_case, with `edit` applied to its JSON text.
std::string edited_case(const std::string& file, const std::function<std::string(std::string)>& edit) {
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[i]);
  const std::string header = file.substr(8, n), data = file.substr(8 + n);
  return raw_file(edit(header), data);
}

std::string replace_once(std::string s, const std::string& from, const std::string& to) {
  const auto at = s.find(from);
  if (at == std::string::npos) throw std::runtime_error("no '" + from + "' in " + s);
  return s.replace(at, from.size(), to);
}

TEST_F(Hardening, DuplicateTensorNameIsRejected) {
  const std::string in = small_case();
  // A second "context_lens" entry (all zeros) after the real one: a parser keeping the last
  // copy would run a different case than one keeping the first.
  spit(in, edited_case(slurp(in), [](std::string h) {
         const auto end = h.find_last_of('}');
         return h.substr(0, end) + ",\"context_lens\":{\"dtype\":\"I32\",\"shape\":[3],\"data_offsets\":[0,12]}}";
       }));
  expect_clean_rejection(mixpa("run --input " + in + " --executor reference --output " + path("o")),
                         "tensor 'context_lens' appears twice in the header");
  EXPECT_FALSE(fs::exists(path("o")));
}

TEST_F(Hardening, DuplicateMetadataKeyIsRejected) {
  const std::string in = small_case();
  spit(in, edited_case(slurp(in), [](std::string h) {
         return replace_once(h, "\"scale\":\"0.125\"", "\"scale\":\"0.125\",\"scale\":\"100\"");
       }));
  expect_clean_rejection(mixpa("run --input " + in + " --executor reference"), "__metadata__ key 'scale' appears twice");
}

TEST_F(Hardening, ScaleThatUnderflowsIsRejected) {
  const std::string in = small_case();
  const std::string good = slurp(in);
  spit(in, edited_case(good, [](std::string h) { return replace_once(h, "\"0.125\"", "\"1e-50\""); }));
  expect_clean_rejection(mixpa("run --input " + in + " --executor reference"),
                         "scale: 1e-50 is nonzero but below the smallest normal float32");
  spit(in, edited_case(good, [](std::string h) { return replace_once(h, "\"0.125\"", "\"1e-40\""); }));
  expect_clean_rejection(mixpa("run --input " + in + " --executor reference"), "below the smallest normal float32");
  spit(in, good);
  expect_clean_rejection(mixpa("run --input " + in + " --executor reference --scale 1e-50"),
                         "scale: 1e-50 is nonzero but below the smallest normal float32");
  // the smallest normal float32 itself, and 0, are scales
  EXPECT_EQ(mixpa("run --input " + in + " --executor reference --scale 1.1754943508222875e-38").code, 0);
  EXPECT_EQ(mixpa("run --input " + in + " --executor reference --scale 0").code, 0);
}

// --- 9: the smaller ones ------------------------------------------------------------------------

TEST_F(Hardening, SeedOutsideItsRange) {
  for (const std::string seed : {"-1", "18446744073709551616", "1e3", "0x10", ""}) {
    expect_clean_rejection(mixpa("run --case SmallCase1 --seed '" + seed + "'"), "--seed: '" + seed + "'");
    expect_clean_rejection(mixpa("gen --case SmallCase1 --output " + path("g") + " --seed '" + seed + "'"), "--seed");
  }
  EXPECT_FALSE(fs::exists(path("g")));
  const std::string in = small_case();
  EXPECT_EQ(mixpa("run --input " + in + " --executor reference --seed 18446744073709551615").code, 0);
}

TEST_F(Hardening, SwimlaneOptions) {
  const std::string in = small_case();
  const std::string base = "run --input " + in + " --executor sim --swimlane " + path("s.svg");
  expect_clean_rejection(mixpa(base + " --swimlane-window nan nan"), "--swimlane-window: nan nan: both times must be finite");
  expect_clean_rejection(mixpa(base + " --swimlane-window 0 inf"), "must be finite");
  expect_clean_rejection(mixpa(base + " --swimlane-window 50 10"), "TO_US must be after FROM_US");
  expect_clean_rejection(mixpa(base + " --swimlane-window 10 10"), "TO_US must be after FROM_US");
  expect_clean_rejection(mixpa(base + " --swimlane-window -5 10"), "FROM_US must be >= 0");
  expect_clean_rejection(mixpa(base + " --swimlane-blocks -3"), "swimlane_blocks: -3 must be >= 1");
  expect_clean_rejection(mixpa(base + " --swimlane-blocks 0"), "swimlane_blocks: 0 must be >= 1");
  EXPECT_FALSE(fs::exists(path("s.svg")));
  const Result ok = mixpa(base + " --swimlane-window 0 50 --swimlane-blocks 2");
  ASSERT_EQ(ok.code, 0) << ok.err;
  EXPECT_EQ(slurp(path("s.svg")).find("nan"), std::string::npos);
}

TEST_F(Hardening, RepeatZeroHasAShortMessage) {
  const std::string in = small_case();
  for (const std::string n : {"0", "-2"}) {
    const Result r = mixpa("run --input " + in + " --executor reference --repeat " + n);
    expect_clean_rejection(r, "--repeat: " + n + " must be >= 1");
    EXPECT_LT(r.err.size(), 80u) << r.err;
  }
}

TEST_F(Hardening, NulInADtypeIsEscapedAndTheRuleShown) {
  const std::string in = small_case();
  spit(in, edited_case(slurp(in), [](std::string h) {
         return replace_once(h, "\"dtype\":\"BF16\"", "\"dtype\":\"BF\\u0000\\n16\"");
       }));
  const Result r = mixpa("run --input " + in + " --executor reference");
  expect_clean_rejection(r, "dtype 'BF\\x00\\x0a16' is not one of BF16, F16, F32, F64, I32, I64, F8_E4M3, F8_E5M2");
}

TEST_F(Hardening, ControlCharactersInNamesStayOnOneLine) {
  expect_clean_rejection(mixpa("run --case \"$(printf 'Small\\nCase1\\r')\""), "unknown case 'Small\\x0aCase1\\x0d'");
}

// Options are checked before the case is generated (Case1: 1 GiB, seconds) and no progress
// line (\r) reaches a stderr that is not a terminal.
TEST_F(Hardening, BadOptionIsReportedBeforeGeneratingTheCase) {
  expect_clean_rejection(mixpa("run --case Case1 --threads -1"), "num_threads: -1 must be >= 0");
  expect_clean_rejection(mixpa("run --case Case1 --executor sim --watchdog 0"), "watchdog");
  expect_clean_rejection(mixpa("run --case Case1 --scale nan"), "scale: nan is not finite");
  expect_clean_rejection(mixpa("run --case Case1 --executor tpu"), "unknown executor 'tpu'");
}

TEST_F(Hardening, UnwritableOutputIsFoundBeforeComputing) {
  const std::string in = small_case();
  fs::create_directories(dir_ / "adir");
  for (const std::string& out : {path("missing/out.safetensors"), path("adir"), path("adir") + "/"}) {
    const Result r = mixpa("run --input " + in + " --executor sim --output " + out);
    expect_clean_rejection(r, "--output " + out + ": ");
  }
  expect_clean_rejection(mixpa("run --input " + in + " --executor sim --trace " + path("missing/t.json")), "--trace");
  expect_clean_rejection(mixpa("run --input " + in + " --executor sim --swimlane " + path("adir")), "--swimlane");
  expect_clean_rejection(mixpa("gen --case Case1 --output " + path("missing/c.safetensors")), "--output");
  expect_directory_holds({"in.safetensors", "adir"});
}

// Outputs are renamed over: a device or FIFO in their place is refused, never replaced.
TEST_F(Hardening, OutputThatIsADeviceOrFifoIsRefused) {
  const std::string in = small_case();
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0644), 0);
  expect_clean_rejection(mixpa("run --input " + in + " --executor reference --output " + path("fifo")),
                         "--output " + path("fifo") + ": is not a regular file");
  EXPECT_TRUE(fs::is_fifo(dir_ / "fifo"));
  expect_clean_rejection(mixpa("run --input " + in + " --executor sim --trace /dev/null"),
                         "--trace /dev/null: is not a regular file");
  EXPECT_TRUE(fs::is_character_file("/dev/null"));
}

TEST_F(Hardening, WatchdogBelowTheMinimum) {
  const std::string in = small_case();
  expect_clean_rejection(mixpa("run --input " + in + " --executor sim --watchdog 0.000001"),
                         "watchdog: 1e-06 seconds is below the minimum of 1 s");
  EXPECT_EQ(mixpa("run --input " + in + " --executor sim --watchdog 1").code, 0);
}

}  // namespace
}  // namespace mixpa
