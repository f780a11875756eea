// SPEC §6's variants through the CLI: case-file keys and flags (a flag overrides the file),
// out + lse in the output file, --verify, and each invalid variant input -> exit 2, one line.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "cli/cli_fixture.h"
#include "common/check.h"
#include "io/safetensors.h"

namespace mixpa {
namespace {

namespace fs = std::filesystem;
using testing::slurp;

class VariantCli : public testing::CliFixture {
 protected:
  using Result = testing::CliResult;
  VariantCli() : CliFixture("mixpa_vcli_") {}

  static Case variant_case() {
    return generate_case(testing::with_variant(testing::small_spec("vcli", 3, 16, 4, 64, 16, {40, 0, 77}, 0.5, 20),
                                               2.0, 30, true, true),
                         5);
  }
  // Runs `args` on a saved variant case that `mutate` breaks; expects a clean rejection.
  void expect_rejected(const std::function<void(SafetensorsFile&)>& mutate, const std::string& fragment,
                       const std::string& args = "") {
    save_case(path("in.safetensors"), variant_case());
    SafetensorsFile f = read_safetensors(path("in.safetensors"));
    mutate(f);
    write_safetensors(path("in.safetensors"), f);
    const Result r = mixpa("run --input " + path("in.safetensors") + " --output " + path("out.safetensors") +
                           " --executor reference " + args);
    expect_exit2_one_line(r, fragment);
    EXPECT_FALSE(fs::exists(path("out.safetensors")));
  }
};

TEST_F(VariantCli, CaseFileRoundTripsTheVariant) {
  const Case c = variant_case();
  save_case(path("in.safetensors"), c);
  const Case back = load_case(path("in.safetensors"));
  EXPECT_EQ(back.softcap, 2.0);
  EXPECT_EQ(back.window_left, 30);
  ASSERT_TRUE(back.has_alibi && back.has_sinks);
  EXPECT_EQ(back.alibi_slopes, c.alibi_slopes);
  EXPECT_EQ(back.sinks, c.sinks);
}

TEST_F(VariantCli, OutputHoldsOutAndLseMatchingExact) {
  const Case c = variant_case();
  save_case(path("in.safetensors"), c);
  std::vector<double> ref_lse;
  const auto ref = testing::exact(c, {}, &ref_lse);
  for (const char* executor : {"reference", "sim"}) {
    const Result r = mixpa("run --input " + path("in.safetensors") + " --output " + path("out.safetensors") +
                           " --verify --executor " + executor);
    ASSERT_EQ(r.code, 0) << executor << ": " << r.out << r.err;
    EXPECT_NE(r.out.find("lse max abs error"), std::string::npos) << r.out;
    const SafetensorsFile f = read_safetensors(path("out.safetensors"));
    const StoredTensor* out = f.find("out");
    const StoredTensor* lse = f.find("lse");
    ASSERT_TRUE(out && lse);
    EXPECT_EQ(lse->shape, (std::vector<std::int64_t>{3, 16}));
    std::vector<float> o(out->bytes.size() / 4), l(lse->bytes.size() / 4);
    std::memcpy(o.data(), out->bytes.data(), out->bytes.size());
    std::memcpy(l.data(), lse->bytes.data(), lse->bytes.size());
    testing::expect_close_to_exact(c, o, ref);
    testing::expect_lse_close_to_exact(c, l, ref_lse);
  }
}

TEST_F(VariantCli, FlagsOverrideTheFile) {
  const Case c = variant_case();
  save_case(path("in.safetensors"), c);
  Case plain = c;
  plain.softcap = 0;
  plain.window_left = -1;
  save_case(path("plain.safetensors"), plain);
  ASSERT_EQ(mixpa("run -i " + path("in.safetensors") + " -o " + path("a.safetensors") +
                  " -e reference --softcap 0 --window-left -1").code, 0);
  ASSERT_EQ(mixpa("run -i " + path("plain.safetensors") + " -o " + path("b.safetensors") + " -e reference").code, 0);
  ASSERT_EQ(mixpa("run -i " + path("in.safetensors") + " -o " + path("c.safetensors") + " -e reference").code, 0);
  EXPECT_EQ(slurp(path("a.safetensors")), slurp(path("b.safetensors")));
  EXPECT_NE(slurp(path("a.safetensors")), slurp(path("c.safetensors")));
  // --case takes the flags too.
  const Result r = mixpa("run --case SmallCase1 -e reference --softcap 3 --window-left 500 --threads 1");
  EXPECT_EQ(r.code, 0) << r.out << r.err;
}

TEST_F(VariantCli, InvalidVariantInputsExitTwo) {
  auto meta = [](const char* key, const char* value) {
    return [=](SafetensorsFile& f) { f.metadata[key] = value; };
  };
  expect_rejected(meta("softcap", "-1"), "softcap");
  expect_rejected(meta("softcap", "nan"), "softcap");
  expect_rejected(meta("softcap", "1e999"), "softcap");
  expect_rejected(meta("softcap", "soft"), "softcap");
  expect_rejected(meta("window_left", "-2"), "window_left");
  expect_rejected(meta("window_left", "1.5"), "window_left");
  expect_rejected(meta("k_scale", "1"), "k_scale");
  expect_rejected(meta("v_scale", "0.5"), "v_scale");
  expect_rejected(meta("kv_layout", "NDH"), "kv_layout");
  auto tensor = [](const char* name, auto edit) {
    return [=](SafetensorsFile& f) {
      for (StoredTensor& t : f.tensors)
        if (t.name == name) edit(t);
    };
  };
  expect_rejected(tensor("sinks", [](StoredTensor& t) { t.shape = {4, 4}; }), "sinks");
  expect_rejected(tensor("sinks", [](StoredTensor& t) { t.shape = {8}; t.bytes.resize(32); }), "sinks");
  expect_rejected(tensor("alibi_slopes", [](StoredTensor& t) {
                    const float inf = INFINITY;
                    std::memcpy(t.bytes.data() + 8, &inf, 4);
                  }),
                  "alibi_slopes[2]");
  expect_rejected(tensor("alibi_slopes", [](StoredTensor& t) { t.dtype = DType::kI32; }), "alibi_slopes");
  expect_rejected([](SafetensorsFile&) {}, "softcap", "--softcap -3");
  expect_rejected([](SafetensorsFile&) {}, "window_left", "--window-left -7");
}

}  // namespace
}  // namespace mixpa

namespace mixpa {
namespace {

using testing::slurp;

TEST_F(VariantCli, HndCaseFileGivesTheNhdResult) {
  const Case c = generate_case(testing::small_spec("h", 2, 8, 2, 64, 16, {30, 17}), 2);
  save_case(path("nhd.safetensors"), c);
  // Transpose the caches to HND and store with kv_layout metadata.
  SafetensorsFile f = read_safetensors(path("nhd.safetensors"));
  for (StoredTensor& t : f.tensors) {
    if (t.name != "key_cache" && t.name != "value_cache") continue;
    const std::int64_t nb = t.shape[0], bs = t.shape[1], kvh = t.shape[2], d = t.shape[3];
    std::vector<std::byte> hnd(t.bytes.size());
    for (std::int64_t p = 0; p < nb; ++p)
      for (std::int64_t r = 0; r < bs; ++r)
        for (std::int64_t k = 0; k < kvh; ++k)
          std::memcpy(&hnd[((p * kvh + k) * bs + r) * d * 2], &t.bytes[((p * bs + r) * kvh + k) * d * 2], d * 2);
    t.bytes = hnd;
    t.shape = {nb, kvh, bs, d};
  }
  f.metadata["kv_layout"] = "HND";
  write_safetensors(path("hnd.safetensors"), f);
  for (const char* e : {"reference", "sim", "cpu"}) {
    ASSERT_EQ(mixpa("run -i " + path("nhd.safetensors") + " -o " + path("a.safetensors") + " -e " + e).code, 0);
    const Result r = mixpa("run -i " + path("hnd.safetensors") + " -o " + path("b.safetensors") + " -e " + e + " --verify");
    ASSERT_EQ(r.code, 0) << r.out << r.err;
    EXPECT_EQ(slurp(path("a.safetensors")), slurp(path("b.safetensors"))) << e;
  }
  // The flag overrides the file: reading the HND bytes as NHD is rejected (block_size 2).
  const Result r = mixpa("run -i " + path("hnd.safetensors") + " -o " + path("c.safetensors") + " --kv-layout NHD");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_EQ(mixpa("run -i " + path("hnd.safetensors") + " --kv-layout XYZ").code, 2);
}

}  // namespace
}  // namespace mixpa
