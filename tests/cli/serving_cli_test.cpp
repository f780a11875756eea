// SPEC §6 dtypes and shapes through the CLI: case files with F16 / F8 caches and their scales,
// F16 queries, q_len > 1 (rank-4 queries), int64 indices, run through `mixpa run --input
// --output` on every executor and checked against exact float64; --k-scale / --v-scale (a flag
// overrides the file); `mixpa gen`'s dtype flags; each invalid §6 input -> exit 2, one line.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "cli/cli_fixture.h"
#include "common/check.h"
#include "common/poison.h"
#include "io/safetensors.h"

namespace mixpa {
namespace {

namespace fs = std::filesystem;
using testing::CliResult;

CaseSpec serving(std::string name, DType kv, DType q, std::int64_t q_len, std::int64_t head_dim, std::int64_t bs,
                 std::vector<std::int32_t> lens, std::int64_t heads, std::int64_t kv_heads, std::int64_t num_blocks = 0) {
  const auto batch = static_cast<std::int64_t>(lens.size());
  CaseSpec s = testing::small_spec(std::move(name), batch, heads, kv_heads, head_dim, bs, std::move(lens), 0.125,
                                   num_blocks);
  s.kv_dtype = kv;
  s.query_dtype = q;
  s.q_len = q_len;
  return s;
}

// Cases of the kind the hidden set holds: every §6 item mixed with the variants, with
// context 0, partial pages, pages shared between requests, and NaN/Inf in the rows no query
// row sees.
std::vector<CaseSpec> hidden_style_specs() {
  std::vector<CaseSpec> v;
  CaseSpec a = testing::with_variant(
      serving("e4m3_q4_gqa32_8", DType::kF8E4M3, DType::kBF16, 4, 64, 16, {0, 4, 37, 100}, 32, 8, 9), 30.0, 20, true,
      true);
  a.k_scale = 0.5;
  a.v_scale = 2.0;
  v.push_back(a);
  CaseSpec b = testing::with_variant(
      serving("e5m2_q3_hd80_bs1_f16q", DType::kF8E5M2, DType::kF16, 3, 80, 1, {3, 0, 29}, 8, 2), 0, 6, false, true);
  b.k_scale = 1.5;
  v.push_back(b);
  CaseSpec c = testing::with_variant(
      serving("f16_q16_hd96_bs8_int64", DType::kF16, DType::kF16, 16, 96, 8, {16, 61}, 4, 1, 7), 12.0, -1, true, false);
  c.int64_indices = true;
  v.push_back(c);
  v.push_back(testing::with_variant(
      serving("bf16_q2_hd192_bs256_window", DType::kBF16, DType::kBF16, 2, 192, 256, {300, 2, 0}, 6, 3), 0, 40, false,
      false));
  return v;
}

class ServingCli : public testing::CliFixture {
 protected:
  ServingCli() : CliFixture("mixpa_scli_") {}

  // Writes `c` and expects `mixpa run ... EXTRA` to be rejected: exit 2, one line holding
  // `fragment`, no output file.
  void expect_rejected_file(const Case& c, const std::function<void(SafetensorsFile&)>& mutate,
                            const std::string& fragment, const std::string& extra = "") {
    save_case(path("in.safetensors"), c);
    SafetensorsFile f = read_safetensors(path("in.safetensors"));
    mutate(f);
    write_safetensors(path("in.safetensors"), f);
    const CliResult r = mixpa("run --input " + path("in.safetensors") + " --output " + path("out.safetensors") +
                              " --executor reference " + extra);
    expect_clean_rejection(r, fragment);
    EXPECT_FALSE(fs::exists(path("out.safetensors")));
  }
};

StoredTensor& tensor(SafetensorsFile& f, const std::string& name) {
  for (auto& t : f.tensors)
    if (t.name == name) return t;
  throw std::runtime_error("no tensor " + name);
}

using testing::floats;

TEST_F(ServingCli, CaseFileRoundTripsDtypesShapesAndScales) {
  for (const CaseSpec& spec : hidden_style_specs()) {
    const Case c = generate_case(spec, 3);
    save_case(path("c.safetensors"), c);
    const SafetensorsFile f = read_safetensors(path("c.safetensors"));
    EXPECT_EQ(f.find("query")->dtype, spec.query_dtype) << spec.name;
    EXPECT_EQ(f.find("key_cache")->dtype, spec.kv_dtype) << spec.name;
    EXPECT_EQ(f.find("block_table")->dtype, spec.int64_indices ? DType::kI64 : DType::kI32) << spec.name;
    EXPECT_EQ(f.find("query")->shape.size(), spec.q_len > 1 ? 4u : 3u) << spec.name;
    EXPECT_EQ(f.metadata.count("k_scale"), spec.k_scale != 0 ? 1u : 0u) << spec.name;
    const Case back = load_case(path("c.safetensors"));
    EXPECT_EQ(back.spec.q_len, spec.q_len);
    EXPECT_EQ(back.spec.kv_dtype, spec.kv_dtype);
    EXPECT_EQ(back.spec.query_dtype, spec.query_dtype);
    EXPECT_EQ(back.spec.k_scale, spec.k_scale);
    EXPECT_EQ(back.spec.v_scale, spec.v_scale);
    EXPECT_EQ(testing::run_case(back, "reference"), testing::run_case(c, "reference")) << spec.name;
  }
}

// The hidden-style cases through `mixpa run --input --output --verify` on every executor: out of
// the query's shape and lse within SPEC §6's bounds of exact float64, the sim bit for bit the
// reference. An executor that has not grown these features yet must say so (exit 2, "not
// supported"), never compute something else.
TEST_F(ServingCli, HiddenStyleCasesPassOnEveryExecutor) {
  for (const CaseSpec& spec : hidden_style_specs()) {
    Case c = generate_case(spec, 7);
    ASSERT_GT(testing::poison_unused_cache_rows(c), 0) << spec.name;
    save_case(path("c.safetensors"), c);
    std::vector<double> exact_lse;
    const std::vector<double> exact = testing::exact(c, {}, &exact_lse);
    std::vector<float> ref_out;
    for (const char* executor : {"reference", "sim", "cpu", "auto"}) {
      const std::string where = spec.name + " on " + executor;
      const CliResult r = mixpa("run --input " + path("c.safetensors") + " --output " + path("o.safetensors") +
                                " --verify --executor " + executor);
      if (std::string(executor) == "cpu" && r.code == 2 &&
          r.err.find("not supported by this executor") != std::string::npos) {
        expect_clean_rejection(r, "executor cpu: ");
        continue;
      }
      ASSERT_EQ(r.code, 0) << where << "\n" << r.out << r.err;
      EXPECT_NE(r.out.find("verify: max abs error"), std::string::npos) << where << r.out;
      EXPECT_EQ(r.out.find("FAIL"), std::string::npos) << where << r.out;
      const SafetensorsFile o = read_safetensors(path("o.safetensors"));
      ASSERT_NE(o.find("out"), nullptr) << where;
      ASSERT_NE(o.find("lse"), nullptr) << where;
      std::vector<std::int64_t> want{spec.batch, spec.num_heads, spec.head_dim};
      if (spec.q_len > 1) want.insert(want.begin() + 1, spec.q_len);
      EXPECT_EQ(o.find("out")->shape, want) << where;
      want.pop_back();
      EXPECT_EQ(o.find("lse")->shape, want) << where;
      const std::vector<float> out = floats(*o.find("out")), lse = floats(*o.find("lse"));
      testing::expect_close_to_exact(c, out, exact);
      testing::expect_lse_close_to_exact(c, lse, exact_lse);
      for (float x : out) ASSERT_TRUE(std::isfinite(x)) << where;
      if (std::string(executor) == "reference") ref_out = out;
      if (std::string(executor) == "sim") EXPECT_EQ(out, ref_out) << where << ": sim differs from the reference";
    }
  }
}

// A flag overrides the file's k_scale / v_scale; the output equals the library's with the
// flag's values, and differs from the file's.
TEST_F(ServingCli, ScaleFlagsOverrideTheFile) {
  CaseSpec spec = serving("scales", DType::kF8E4M3, DType::kBF16, 2, 64, 16, {20, 33}, 8, 2);
  spec.k_scale = 0.5;
  spec.v_scale = 2.0;
  const Case c = generate_case(spec, 5);
  save_case(path("c.safetensors"), c);
  ASSERT_EQ(mixpa("run -i " + path("c.safetensors") + " -o " + path("a.safetensors") + " -e sim").code, 0);
  const CliResult r = mixpa("run -i " + path("c.safetensors") + " -o " + path("b.safetensors") +
                            " -e sim --k-scale 0.25 --v-scale 3 --verify");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("k_scale 0.25, v_scale 3"), std::string::npos) << r.out;
  Options o;
  o.k_scale = 0.25;
  o.v_scale = 3.0;
  const std::vector<float> want = testing::run_case(c, "reference", o);
  EXPECT_EQ(floats(*read_safetensors(path("b.safetensors")).find("out")), want);
  EXPECT_EQ(floats(*read_safetensors(path("a.safetensors")).find("out")), testing::run_case(c, "reference"));
  EXPECT_NE(floats(*read_safetensors(path("a.safetensors")).find("out")), want);
}

TEST_F(ServingCli, InvalidSpec6InputsExitTwo) {
  const Case fp8 = generate_case(serving("bad", DType::kF8E4M3, DType::kBF16, 2, 64, 16, {20, 2}, 8, 2), 1);
  const Case bf = generate_case(serving("bad16", DType::kBF16, DType::kBF16, 1, 64, 16, {20, 2}, 8, 2), 1);
  const auto none = [](SafetensorsFile&) {};
  const auto meta = [](const char* key, const char* value) {
    return [=](SafetensorsFile& f) { f.metadata[key] = value; };
  };
  // The scales: flags and metadata.
  for (const char* bad : {"0", "-1", "nan", "inf", "-inf"}) {
    expect_rejected_file(fp8, none, "k_scale", std::string("--k-scale ") + bad);
    expect_rejected_file(fp8, none, "v_scale", std::string("--v-scale ") + bad);
    expect_rejected_file(fp8, meta("k_scale", bad), "metadata 'k_scale'");
    expect_rejected_file(fp8, meta("v_scale", bad), "metadata 'v_scale'");
  }
  expect_rejected_file(fp8, meta("k_scale", "half"), "metadata 'k_scale' = 'half' is not a decimal number");
  expect_rejected_file(fp8, none, "k_scale: 1e-300 is outside float32's positive normal range", "--k-scale 1e-300");
  expect_rejected_file(bf, none, "k_scale: given for a BF16 cache", "--k-scale 2");
  expect_rejected_file(bf, meta("v_scale", "2"), "v_scale: given for a BF16 cache");
  const Case f16 = generate_case(serving("f16", DType::kF16, DType::kBF16, 1, 64, 16, {20}, 8, 2), 1);
  expect_rejected_file(f16, meta("k_scale", "2"), "k_scale: given for a F16 cache");
  // q_len and context.
  expect_rejected_file(fp8, [](SafetensorsFile& f) {
    auto& q = tensor(f, "query");  // [2, 2, 8, 64] -> [1, 4, 8, 64]: a batch of 1 with q_len 4
    q.shape = {1, 4, 8, 64};
    tensor(f, "block_table").shape[0] = 1;
    auto& bt = tensor(f, "block_table");
    bt.bytes.resize(bt.bytes.size() / 2);
    tensor(f, "context_lens").shape = {1};
    tensor(f, "context_lens").bytes.resize(4);
    std::int32_t two = 2;
    std::memcpy(tensor(f, "context_lens").bytes.data(), &two, 4);
  }, "context_lens[0] = 2 is below q_len 4");
  expect_rejected_file(fp8, [](SafetensorsFile& f) {
    auto& q = tensor(f, "query");  // [2, 2, 8, 64] -> [2, 17, ...]: q_len 17
    q.shape = {2, 17, 8, 64};
    q.bytes.resize(2 * 17 * 8 * 64 * 2);
  }, "query: q_len is 17");
  expect_rejected_file(fp8, [](SafetensorsFile& f) {
    auto& q = tensor(f, "query");  // rank 5
    q.shape = {2, 2, 8, 64, 1};
  }, "query: rank is 5, expected 3 [batch, num_heads, head_dim] or 4 [batch, q_len, num_heads, head_dim]");
  // Dtypes.
  expect_rejected_file(fp8, [](SafetensorsFile& f) { tensor(f, "value_cache").dtype = DType::kF8E5M2; },
                       "value_cache: dtype is F8_E5M2 but key_cache is F8_E4M3 (the caches must share a dtype)");
  expect_rejected_file(fp8, [](SafetensorsFile& f) {
    auto& q = tensor(f, "query");  // bf16 bytes as fp8: twice the elements
    q.dtype = DType::kF8E4M3;
    q.shape.back() *= 2;
  }, "query: dtype is F8_E4M3, expected BF16 or F16");
  expect_rejected_file(fp8, [](SafetensorsFile& f) {
    for (const char* name : {"key_cache", "value_cache"}) {
      auto& t = tensor(f, name);  // fp8 bytes as F32: a quarter of the elements
      t.dtype = DType::kF32;
      t.shape.back() /= 4;
    }
  }, "key_cache: dtype is F32, expected BF16, F16, F8_E4M3 or F8_E5M2");
  // int64 indices: mixed with int32, and values outside int32 range.
  CaseSpec wide_spec = serving("wide", DType::kBF16, DType::kBF16, 1, 64, 16, {20, 2}, 8, 2);
  wide_spec.int64_indices = true;
  const Case wide = generate_case(wide_spec, 1);
  expect_rejected_file(wide, [](SafetensorsFile& f) {
    auto& cl = tensor(f, "context_lens");
    std::vector<std::int64_t> v(cl.bytes.size() / 8);
    std::memcpy(v.data(), cl.bytes.data(), cl.bytes.size());
    std::vector<std::int32_t> n(v.begin(), v.end());
    cl.dtype = DType::kI32;
    cl.bytes.resize(n.size() * 4);
    std::memcpy(cl.bytes.data(), n.data(), cl.bytes.size());
  }, "context_lens: dtype is I32 but block_table is I64 (the index tensors must share a dtype)");
  expect_rejected_file(wide, [](SafetensorsFile& f) {
    const std::int64_t big = std::int64_t{1} << 35;
    std::memcpy(tensor(f, "block_table").bytes.data() + 8, &big, 8);
  }, "block_table[0][1] = 34359738368 is outside int32 range");
  expect_rejected_file(wide, [](SafetensorsFile& f) {
    const std::int64_t big = -(std::int64_t{1} << 40);
    std::memcpy(tensor(f, "context_lens").bytes.data(), &big, 8);
  }, "context_lens[0] = -1099511627776 is outside int32 range");
  // Shapes: head_dim not a multiple of 16, block_size above 256.
  const Case hd = generate_case(serving("hd40", DType::kBF16, DType::kBF16, 1, 40, 16, {5}, 8, 2), 1);
  expect_rejected_file(hd, none, "head_dim 40 is not supported");
  const Case bs = generate_case(serving("bs300", DType::kBF16, DType::kBF16, 1, 64, 300, {5}, 8, 2), 1);
  expect_rejected_file(bs, none, "block_size 300 is not supported");
}

// `mixpa gen` writes §6 cases: the dtypes, q_len, scales and index width asked for.
TEST_F(ServingCli, GenWritesSpec6CasesSlow) {
  const CliResult g = mixpa("gen --case SmallCase1 --seed 2 --kv-dtype F8_E5M2 --query-dtype F16 --q-len 3 "
                            "--k-scale 0.5 --v-scale 4 --int64-indices --output " + path("g.safetensors"));
  ASSERT_EQ(g.code, 0) << g.out << g.err;
  const SafetensorsFile f = read_safetensors(path("g.safetensors"));
  EXPECT_EQ(f.find("query")->dtype, DType::kF16);
  EXPECT_EQ(f.find("query")->shape, (std::vector<std::int64_t>{24, 3, 16, 128}));
  EXPECT_EQ(f.find("key_cache")->dtype, DType::kF8E5M2);
  EXPECT_EQ(f.find("value_cache")->dtype, DType::kF8E5M2);
  EXPECT_EQ(f.find("block_table")->dtype, DType::kI64);
  EXPECT_EQ(f.find("context_lens")->dtype, DType::kI64);
  EXPECT_EQ(f.metadata.at("k_scale"), "0.5");
  EXPECT_EQ(f.metadata.at("v_scale"), "4");
  // The same bytes as the library's generator for that spec.
  CaseSpec spec = find_case("SmallCase1");
  spec.kv_dtype = DType::kF8E5M2;
  spec.query_dtype = DType::kF16;
  spec.q_len = 3;
  spec.k_scale = 0.5;
  spec.v_scale = 4;
  spec.int64_indices = true;
  const Case c = generate_case(spec, 2);
  ASSERT_EQ(f.find("key_cache")->bytes.size(), c.key_bytes.size());
  EXPECT_EQ(0, std::memcmp(f.find("key_cache")->bytes.data(), c.key_bytes.data(), c.key_bytes.size()));
  for (const auto& [args, fragment] :
       std::vector<std::pair<std::string, std::string>>{{"--kv-dtype F32", "--kv-dtype: 'F32' is not one of BF16, F16"},
                                                        {"--query-dtype F8_E4M3", "--query-dtype: 'F8_E4M3'"},
                                                        {"--q-len 17", "--q-len: 17 must be in 1..16"},
                                                        {"--q-len 0", "--q-len: 0 must be in 1..16"},
                                                        {"--k-scale 2", "--k-scale: given for a BF16 cache"},
                                                        {"--kv-dtype F8_E4M3 --v-scale -1", "--v-scale: -1"}}) {
    const CliResult r = mixpa("gen --case SmallCase1 " + args + " --output " + path("x.safetensors"));
    expect_clean_rejection(r, fragment);
    EXPECT_FALSE(fs::exists(path("x.safetensors"))) << args;
  }
}

// The sim's schedule comparison names the first differing element in the output's own
// (rank-4) shape: out[b, p, h, d].
TEST_F(ServingCli, ScheduleDifferenceNamesTheRank4Index) {
  save_case(path("c.safetensors"),
            generate_case(serving("q2", DType::kBF16, DType::kBF16, 2, 64, 16, {70, 50}, 16, 1), 3));
  const CliResult r = mixpa("run --input " + path("c.safetensors") +
                            " --executor sim --blocks 2 --schedule-seeds 8 --inject free-before-copy --pipe-depth 1");
  ASSERT_EQ(r.code, 4) << r.out << r.err;
  const std::size_t at = r.err.find("first at out[");
  ASSERT_NE(at, std::string::npos) << r.err;
  const std::string index = r.err.substr(at + 13, r.err.find(']', at) - at - 13);
  EXPECT_EQ(std::count(index.begin(), index.end(), ','), 3) << index;
}

}  // namespace
}  // namespace mixpa
