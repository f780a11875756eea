// The calibration's per-machine record (src/cpu/calibration_cache.h): the file's text as pure
// functions (round trip, other keys, other classes kept, malformed lines refused), its reading
// and writing (whole files, directories made, failures reported and not thrown), where it lives.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <unistd.h>
#include <vector>

#include "cpu/calibration_cache.h"
#include "mixpa/version.h"

namespace mixpa {
namespace {

using cpu::FlavourRate;
using cpu::Isa;
using cpu::TileClass;

const std::vector<Isa> kSimd = {Isa::kAvx512Bf16, Isa::kAvx512, Isa::kAvx2};
const std::string kKey = "Test CPU | family 25 model 17 stepping 1 | avx512bf16 avx512 avx2 | mixpa 0";

std::vector<FlavourRate> rates(double a, double b, double c) {
  return {{Isa::kAvx512Bf16, a}, {Isa::kAvx512, b}, {Isa::kAvx2, c}};
}

void expect_rates(const std::optional<std::vector<FlavourRate>>& got, const std::vector<FlavourRate>& want) {
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ((*got)[i].isa, want[i].isa);
    EXPECT_NEAR((*got)[i].gflops, want[i].gflops, 0.05);
  }
}

TEST(CalibrationCache, RoundTripsEachClassAndKeepsTheOthers) {
  std::string text = cpu::with_rates("", kKey, TileClass::kWide, rates(90.1, 84.2, 79));
  expect_rates(cpu::find_rates(text, kKey, TileClass::kWide, kSimd), rates(90.1, 84.2, 79));
  EXPECT_FALSE(cpu::find_rates(text, kKey, TileClass::kNarrow, kSimd).has_value());
  text = cpu::with_rates(text, kKey, TileClass::kNarrow, rates(29, 34, 28));
  text = cpu::with_rates(text, kKey, TileClass::kWide, rates(70, 75, 60));  // replaces its line only
  expect_rates(cpu::find_rates(text, kKey, TileClass::kWide, kSimd), rates(70, 75, 60));
  expect_rates(cpu::find_rates(text, kKey, TileClass::kNarrow, kSimd), rates(29, 34, 28));
  EXPECT_EQ(text.find("90.1"), std::string::npos) << text;
  EXPECT_EQ(text.rfind("# mixpa cpu calibration", 0), 0u) << text;
  // The flavours of a line may come in any order.
  const std::vector<Isa> reordered = {Isa::kAvx2, Isa::kAvx512Bf16, Isa::kAvx512};
  EXPECT_TRUE(cpu::find_rates(text, kKey, TileClass::kWide, reordered).has_value());
}

TEST(CalibrationCache, AnotherMachineOrBuildIsIgnoredAndReplaced) {
  const std::string old = cpu::with_rates("", "Other CPU | ...", TileClass::kWide, rates(1, 2, 3));
  EXPECT_FALSE(cpu::find_rates(old, kKey, TileClass::kWide, kSimd).has_value());
  const std::string text = cpu::with_rates(old, kKey, TileClass::kNarrow, rates(29, 34, 28));
  EXPECT_EQ(text.find("Other CPU"), std::string::npos) << text;
  EXPECT_FALSE(cpu::find_rates(text, kKey, TileClass::kWide, kSimd).has_value());
  expect_rates(cpu::find_rates(text, kKey, TileClass::kNarrow, kSimd), rates(29, 34, 28));
  // The same file read by a machine that runs other flavours (a VM hiding AVX512_BF16).
  EXPECT_FALSE(cpu::find_rates(text, kKey, TileClass::kNarrow, std::vector<Isa>{Isa::kAvx512, Isa::kAvx2}).has_value());
}

TEST(CalibrationCache, MalformedLinesAreRefused) {
  const std::string head = "key " + kKey + "\n";
  for (const char* line : {"16-row avx512bf16 90 avx512 84",                     // a flavour missing
                           "16-row avx512bf16 90 avx512 84 avx2 79 avx2 79",     // repeated
                           "16-row avx512bf16 90 avx512 84 avx9000 79",          // unknown
                           "16-row avx512bf16 90 avx512 -84 avx2 79",            // not positive
                           "16-row avx512bf16 90 avx512 nan avx2 79",            // not finite
                           "16-row avx512bf16 90 avx512 84 avx2",                // no rate
                           "16-row avx512bf16 ninety avx512 84 avx2 79",         // not a number
                           "16-row", ""}) {
    EXPECT_FALSE(cpu::find_rates(head + line + "\n", kKey, TileClass::kWide, kSimd).has_value()) << line;
  }
  EXPECT_FALSE(cpu::find_rates("16-row avx512bf16 90 avx512 84 avx2 79\n", kKey, TileClass::kWide, kSimd).has_value())
      << "no key line";
  EXPECT_TRUE(cpu::find_rates(head + "16-row avx512bf16 90 avx512 84 avx2 79", kKey, TileClass::kWide, kSimd).has_value())
      << "no final newline";
}

TEST(CalibrationCache, WritesWholeFilesAndReportsFailure) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("mixpa_calibration_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const std::string path = (dir / "nested" / "calibration.txt").string();
  EXPECT_EQ(cpu::read_cache(path), "");
  const std::string text = cpu::with_rates("", kKey, TileClass::kTall, rates(131, 89, 74));
  ASSERT_TRUE(cpu::write_cache(path, text));
  EXPECT_EQ(cpu::read_cache(path), text);
  ASSERT_TRUE(cpu::write_cache(path, "x\n"));  // replaced whole
  EXPECT_EQ(cpu::read_cache(path), "x\n");
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir / "nested")) ++files;
  EXPECT_EQ(files, 1u) << "no temporary file left behind";
  // A directory where the file should be, or a parent that is a file: false, nothing thrown.
  EXPECT_FALSE(cpu::write_cache((dir / "nested").string(), text));
  EXPECT_FALSE(cpu::write_cache(path + "/below_a_file.txt", text));
  fs::remove_all(dir);
}

// Sets an environment variable for one scope and restores what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    if (value) setenv(name, value, 1);
    else unsetenv(name);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_.c_str(), old_.c_str(), 1);
    else unsetenv(name_.c_str());
  }

 private:
  std::string name_, old_;
  bool had_ = false;
};

TEST(CalibrationCache, PathFromTheEnvironment) {
  {
    ScopedEnv a("MIXPA_CALIBRATION_CACHE", "/tmp/x/cal.txt");
    EXPECT_EQ(cpu::calibration_cache_path(), "/tmp/x/cal.txt");
  }
  {
    ScopedEnv a("MIXPA_CALIBRATION_CACHE", "off");
    EXPECT_EQ(cpu::calibration_cache_path(), "");
  }
  ScopedEnv a("MIXPA_CALIBRATION_CACHE", nullptr);
  {
    ScopedEnv x("XDG_CACHE_HOME", "/xdg");
    EXPECT_EQ(cpu::calibration_cache_path(), "/xdg/mixpa/calibration.txt");
  }
  ScopedEnv x("XDG_CACHE_HOME", nullptr);
  {
    ScopedEnv h("HOME", "/home/u");
    EXPECT_EQ(cpu::calibration_cache_path(), "/home/u/.cache/mixpa/calibration.txt");
  }
  ScopedEnv h("HOME", nullptr);
  EXPECT_EQ(cpu::calibration_cache_path(), "");
}

TEST(CalibrationCache, MachineKeyNamesTheFlavoursAndTheBuild) {
  const std::string key = cpu::machine_key(kSimd);
  EXPECT_EQ(key, cpu::machine_key(kSimd));
  EXPECT_EQ(key.find('\n'), std::string::npos);
  EXPECT_NE(key.find("| avx512bf16 avx512 avx2 |"), std::string::npos) << key;
  EXPECT_NE(key.find(std::string("mixpa ") + version()), std::string::npos) << key;
  // Rates measured by another calibration method are not reused.
  EXPECT_NE(key.find(" | method " + std::to_string(cpu::kCalibrationMethod)), std::string::npos) << key;
  EXPECT_NE(key, cpu::machine_key(std::vector<Isa>{Isa::kAvx2}));
}

}  // namespace
}  // namespace mixpa
