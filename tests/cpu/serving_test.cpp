// SPEC §6 dtypes and shapes on the cpu executor, on every flavour this CPU runs that computes
// them (scalar and avx2 compute all of them; the others get them through the dispatch), against
// exact float64 attention over the dequantised inputs: fp16 / fp8 caches with their scales, fp16
// queries, q_len 1..16 (GQA 32/8 included) with a causal limit and window per row, head_dim any
// multiple of 16, block_size 1..256, int64 indices; alone and mixed with the variants, context 0,
// partial pages, split-KV, NaN / Inf in rows no query sees, and thread-count determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "common/check.h"
#include "common/run_cpu.h"
#include "common/variants.h"
#include "cpu/chunk_kernel.h"
#include "cpu/cpu_executor.h"
#include "cpu/dispatch.h"

namespace mixpa {
namespace cpu {
inline void PrintTo(Isa isa, std::ostream* os) { *os << isa_name(isa); }
}  // namespace cpu
namespace {

using cpu::Isa;
using testing::small_spec;

std::vector<Isa> all_isas() { return {Isa::kAmx, Isa::kAvx512Bf16, Isa::kAvx512, Isa::kAvx2, Isa::kScalar}; }

CaseSpec serving(std::string name, DType kv, DType q, std::int64_t q_len, std::int64_t head_dim, std::int64_t bs,
                 std::vector<std::int32_t> lens, std::int64_t heads = 8, std::int64_t kv_heads = 2, double scale = 0.3) {
  const auto batch = static_cast<std::int64_t>(lens.size());
  CaseSpec s = small_spec(std::move(name), batch, heads, kv_heads, head_dim, bs, std::move(lens), scale);
  s.kv_dtype = kv;
  s.query_dtype = q;
  s.q_len = q_len;
  return s;
}

CaseSpec scaled(CaseSpec s, double k_scale, double v_scale) {
  s.k_scale = k_scale;
  s.v_scale = v_scale;
  return s;
}

constexpr DType kBF = DType::kBF16, kF16 = DType::kF16, kE4 = DType::kF8E4M3, kE5 = DType::kF8E5M2;

// Each feature alone, then mixed: context 0 and 1, partial pages, GQA 32/8 with q_len 4 (16 rows
// of one tile share each page read), q_len 16 (64 rows: sub-tiles), split-KV contexts.
std::vector<CaseSpec> cpu_serving_specs() {
  std::vector<CaseSpec> v = {
      serving("f16_cache", kF16, kBF, 1, 128, 16, {0, 1, 37, 100}),
      serving("f16_query", kBF, kF16, 1, 128, 32, {65, 3}),
      serving("f16_all", kF16, kF16, 1, 64, 32, {65, 3, 0}),
      serving("e4m3", kE4, kBF, 1, 128, 16, {70, 17, 1}),
      scaled(serving("e4m3_scales", kE4, kBF, 1, 128, 64, {200, 5}), 0.05, 3.0),
      serving("e5m2", kE5, kF16, 1, 128, 64, {129, 64}),
      scaled(serving("e5m2_scales", kE5, kBF, 1, 64, 16, {90, 33}), 4.0, 0.125),
      serving("q1_gqa32_8", kBF, kBF, 1, 128, 16, {77, 4}, 32, 8),
      serving("q2", kBF, kBF, 2, 64, 16, {2, 40, 0, 17}),
      serving("q4_gqa32_8", kBF, kBF, 4, 128, 16, {4, 57, 300}, 32, 8),
      serving("q16_gqa32_8", kBF, kBF, 16, 64, 16, {16, 100}, 32, 8),
      serving("q16_mha", kF16, kF16, 16, 64, 8, {16, 100}, 4, 4),
      serving("hd16", kBF, kBF, 1, 16, 16, {20, 5}),
      serving("hd80", kBF, kBF, 1, 80, 16, {33, 70}),
      serving("hd96", kBF, kBF, 1, 96, 32, {40, 3}),
      serving("hd192", kBF, kBF, 1, 192, 16, {50, 16}),
      serving("hd256_f16", kF16, kBF, 1, 256, 32, {31, 64}),
      serving("hd48_e5m2", kE5, kBF, 2, 48, 16, {31, 2}),
      serving("bs1", kBF, kBF, 1, 64, 1, {1, 9, 0, 70}),
      serving("bs1_q4", kBF, kBF, 4, 128, 1, {4, 60}, 32, 8),
      serving("bs8", kBF, kBF, 1, 128, 8, {3, 30, 8}),
      serving("bs8_q3", kE4, kBF, 3, 64, 8, {3, 30}),
      serving("bs256", kBF, kBF, 1, 64, 256, {300, 255, 0}),
      serving("bs256_q4_e4m3", kE4, kF16, 4, 128, 256, {600, 4}, 32, 8),
      serving("bs3_hd112", kF16, kBF, 2, 112, 3, {11, 2, 40}),
      // Tiles of 1 and 2 rows (the avx2 narrow tile's 2-row form), head_dims whose last PV pass
      // is a single 16-position chunk.
      serving("mha_hd80", kBF, kBF, 1, 80, 16, {33, 70}, 4, 4),
      serving("gqa2_hd48_e4m3", kE4, kBF, 1, 48, 16, {50, 7}, 4, 2),
      // Long contexts over few logical blocks: split-KV chunks, each row's causal limit in the last.
      serving("split_q4_e4m3", kE4, kBF, 4, 128, 64, {9000}, 32, 8),
      serving("split_bs1_hd96", kBF, kBF, 2, 96, 1, {5000}, 8, 2),
      serving("split_f16_hd80", kF16, kF16, 1, 80, 16, {6001, 4097}, 16, 4),
      // More than 8 query rows per kv head: avx512's wide tile reads these dtypes too (16, 12,
      // 20 = 16 + a 4-row tail tile, 64 rows = RV 4), each head_dim and block size it has.
      serving("wide_e4m3", kE4, kBF, 1, 128, 16, {70, 17, 1, 0}, 16, 1),
      scaled(serving("wide_e4m3_scales_tail", kE4, kBF, 1, 128, 64, {200, 5}, 20, 1), 0.05, 3.0),
      serving("wide_e5m2_f16q", kE5, kF16, 1, 64, 32, {129, 64}, 32, 2),
      scaled(serving("wide_e5m2_scales", kE5, kBF, 1, 256, 16, {90, 33}, 12, 1), 4.0, 0.125),
      serving("wide_f16_hd256", kF16, kBF, 1, 256, 32, {31, 64, 0}, 12, 1),
      serving("wide_f16_all_64rows", kF16, kF16, 1, 128, 128, {300, 1}, 64, 1),
      serving("wide_bf16_f16q", kBF, kF16, 1, 128, 16, {50, 2}, 40, 2),
      serving("wide_split_e4m3", kE4, kBF, 1, 128, 64, {9000}, 16, 1),
  };
  CaseSpec wide = serving("int64_indices", kBF, kBF, 2, 64, 16, {40, 0, 17});
  wide.int64_indices = true;
  v.push_back(wide);
  CaseSpec wide_fp8 = serving("int64_e4m3_q4", kE4, kBF, 4, 128, 32, {99, 4}, 32, 8);
  wide_fp8.int64_indices = true;
  v.push_back(wide_fp8);
  // Mixed with the variants: a window per row (smaller than q_len, crossing pages), ALiBi relative
  // to each row's position, soft-cap, sinks (one above every score).
  using testing::with_variant;
  v.push_back(with_variant(serving("q4_window0", kBF, kBF, 4, 64, 16, {4, 77}, 32, 8), 0, 0, false, false));
  v.push_back(with_variant(serving("q4_window2", kF16, kBF, 4, 64, 16, {4, 77}, 32, 8), 0, 2, false, false));
  v.push_back(with_variant(serving("q8_window37", kE4, kBF, 8, 128, 16, {8, 200}), 0, 37, false, false));
  v.push_back(with_variant(serving("q3_alibi_sinks_e5m2", kE5, kBF, 3, 80, 8, {30, 3}), 0, -1, true, true));
  v.push_back(with_variant(serving("q2_softcap_hd48_bs3", kE4, kF16, 2, 48, 3, {11, 2}), 5.0, 7, true, true));
  v.push_back(with_variant(serving("q4_all_bs1", kF16, kF16, 4, 96, 1, {4, 150}, 32, 8), 2.0, 40, true, true, true));
  v.push_back(with_variant(serving("q16_all_hd192", kBF, kBF, 16, 192, 32, {16, 99}, 16, 4), 3.0, 20, true, true));
  v.push_back(with_variant(serving("mha_q2_all_hd112_f16", kF16, kBF, 2, 112, 8, {40, 2}, 4, 4), 3.0, 11, true, true));
  v.push_back(with_variant(serving("split_all_q4_e4m3", kE4, kBF, 4, 128, 32, {5000}, 32, 8), 4.0, 2500, true, true));
  return v;
}

// Runs the cpu executor with a forced flavour; out and lse.
using testing::run_isa;

Problem problem_of(const Case& c, std::vector<float>& out) {
  out.assign(c.out_elements(), 0.0f);
  return validate(c.inputs(), testing::case_options(c, {}), c.output_view(out.data()));
}

// Skips flavours this CPU cannot run, and those that do not compute the case (they hand it on).
bool runs(Isa isa, const Case& c) {
  if (!cpu::isa_supported(isa)) return false;
  std::vector<float> out;
  return cpu::flavour_computes(isa, problem_of(c, out));
}

void expect_exact(const Case& c, const testing::RunOutput& got) {
  std::vector<double> ref_lse;
  const std::vector<double> ref = testing::exact(c, {}, &ref_lse);
  const double err = testing::expect_close_to_exact(c, got.out, ref);
  EXPECT_LT(err, 2e-3) << c.spec.name;
  testing::expect_lse_close_to_exact(c, got.lse, ref_lse);
}

class CpuServing : public ::testing::TestWithParam<std::tuple<Isa, CaseSpec>> {};

TEST_P(CpuServing, AgreesWithExact) {
  const auto& [isa, spec] = GetParam();
  const Case c = generate_case(spec, 11);
  if (!runs(isa, c)) GTEST_SKIP() << cpu::isa_name(isa) << " does not run " << spec.name << " here";
  expect_exact(c, run_isa(c, isa));
}

INSTANTIATE_TEST_SUITE_P(Spec6, CpuServing,
                         ::testing::Combine(::testing::ValuesIn(all_isas()), ::testing::ValuesIn(cpu_serving_specs())),
                         [](const auto& info) {
                           return std::string(cpu::isa_name(std::get<0>(info.param))) + "_" + std::get<1>(info.param).name;
                         });

class CpuServingIsa : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!cpu::isa_supported(GetParam())) GTEST_SKIP() << "this CPU cannot run " << cpu::isa_name(GetParam());
    if (!cpu::flavour_computes(GetParam(), general_problem()))
      GTEST_SKIP() << cpu::isa_name(GetParam()) << " computes the fast shapes only (the sweeps test it there)";
  }
  // An fp8 q_len-4 problem of a general shape (head_dim 80, block_size 8): flavours that compute
  // it compute the whole contract, which this suite's shapes cover.
  static Problem general_problem() {
    static std::vector<float> out;
    static const Case c = generate_case(serving("probe", kE4, kBF, 4, 80, 8, {20}), 1);
    return problem_of(c, out);
  }
};

// The shared variant table on the §6 dtypes and shapes: every variant kind with fp8 / fp16 caches,
// q_len 4 with GQA 32/8, a general head_dim and small pages.
TEST_P(CpuServingIsa, VariantTableOnServingShapes) {
  const std::vector<CaseSpec> shapes = {
      serving("vt_e4m3_q4", kE4, kBF, 4, 128, 16, {4, 0, 100}, 32, 8),
      serving("vt_f16_hd80_bs8", kF16, kF16, 2, 80, 8, {2, 61}),
      serving("vt_e5m2_bs1_split", kE5, kBF, 3, 64, 1, {5200}),
  };
  for (const CaseSpec& shape : shapes)
    for (const testing::VariantSpec& v : testing::variant_kinds()) {
      CaseSpec s = shape;
      s.name = shape.name + "/" + v.name;
      s.softcap = v.softcap;
      s.window_left = v.window_left;
      if (v.alibi) s.alibi_slopes = testing::alibi_slopes_for(s.num_heads);
      if (v.sinks) {
        s.sinks = testing::sinks_for(s.num_heads, v.sink_base > 10);
        for (float& x : s.sinks) x += v.sink_base > 10 ? 0.0f : v.sink_base;
      }
      const Case c = generate_case(s, 5);
      expect_exact(c, run_isa(c, GetParam()));
    }
}

// Chunk boundaries come from the shapes only: 1, 2, 3 and 8 threads give the same bits.
TEST_P(CpuServingIsa, BitwiseIdenticalForAnyThreadCount) {
  for (CaseSpec spec : {serving("det_e4m3_q4", kE4, kBF, 4, 128, 64, {7000, 2500}, 32, 8),
                        serving("det_bs1_hd96", kF16, kF16, 2, 96, 1, {3000, 5, 0}),
                        testing::with_variant(serving("det_all", kE5, kBF, 3, 80, 16, {6000, 17}), 2.5, 3000, true, true)}) {
    const Case c = generate_case(spec, 5);
    const auto one = run_isa(c, GetParam(), 1);
    for (int threads : {2, 3, 8}) {
      const auto many = run_isa(c, GetParam(), threads);
      EXPECT_EQ(0, std::memcmp(one.out.data(), many.out.data(), one.out.size() * sizeof(float))) << spec.name << " threads " << threads;
      EXPECT_EQ(0, std::memcmp(one.lse.data(), many.lse.data(), one.lse.size() * sizeof(float))) << spec.name << " threads " << threads;
    }
  }
}

// The raw element bytes of a case's caches and the rows (page * block_size + row) some query
// row of a request sees (the union over its q_len rows, window applied).
std::vector<bool> seen_rows(const Case& c) {
  const std::int64_t bs = c.spec.block_size;
  std::vector<bool> seen(c.num_blocks * bs, false);
  Variant window;
  window.window_left = c.spec.window_left;
  for (std::int64_t b = 0; b < c.spec.batch; ++b) {
    const TokenRange r = visible_tokens(window, c.context_lens[b], c.spec.q_len);
    for (std::int64_t t = r.begin; t < r.end; ++t) seen[c.block_table[b * c.max_blocks_per_req + t / bs] * bs + t % bs] = true;
  }
  return seen;
}

std::uint8_t* cache_bytes(Case& c, bool key) {
  if (c.spec.kv_dtype == DType::kBF16)
    return reinterpret_cast<std::uint8_t*>(key ? c.key_cache.data() : c.value_cache.data());
  return key ? c.key_bytes.data() : c.value_bytes.data();
}

// Writes NaN / Inf (as the dtype encodes them; e4m3 has no Inf: its NaN) into every element of a
// cache row.
void poison_row(Case& c, std::int64_t row) {
  const std::int64_t elems = c.spec.num_kv_heads * c.spec.head_dim, size = static_cast<std::int64_t>(dtype_size(c.spec.kv_dtype));
  for (int key = 0; key < 2; ++key) {
    std::uint8_t* base = cache_bytes(c, key == 1) + row * elems * size;
    for (std::int64_t i = 0; i < elems; ++i) {
      const bool inf = (i % 2 == 1) && key == 0;
      switch (c.spec.kv_dtype) {
        case DType::kF8E4M3: base[i] = 0x7f; break;
        case DType::kF8E5M2: base[i] = inf ? 0x7c : 0x7f; break;
        case DType::kF16: {
          const std::uint16_t b = inf ? 0x7c00 : 0x7e00;
          std::memcpy(base + 2 * i, &b, 2);
          break;
        }
        default: {
          const std::uint16_t b = inf ? 0x7f80 : 0x7fc0;
          std::memcpy(base + 2 * i, &b, 2);
        }
      }
    }
  }
}

// Rows no query row sees (past the context, before every row's window, spare pages) hold NaN /
// Inf: out and lse are bitwise those of the clean cache. Partial last pages included.
TEST_P(CpuServingIsa, UnseenRowsHoldingNaNDoNotLeak) {
  for (CaseSpec spec : {serving("nan_e4m3_q4", kE4, kBF, 4, 128, 32, {45, 7, 4}, 32, 8),
                        serving("nan_f16_bs1", kF16, kF16, 2, 64, 1, {30, 2}),
                        serving("nan_e5m2_hd80", kE5, kBF, 3, 80, 16, {33, 17}),
                        testing::with_variant(serving("nan_window_q4", kE4, kF16, 4, 96, 8, {150, 5, 3000}), 1.0, 45, true, false)}) {
    spec.num_blocks = 0;
    Case c = generate_case(spec, 3);
    const auto clean = run_isa(c, GetParam());
    const std::vector<bool> seen = seen_rows(c);
    int poisoned = 0;
    for (std::int64_t r = 0; r < static_cast<std::int64_t>(seen.size()); ++r)
      if (!seen[r]) {
        poison_row(c, r);
        ++poisoned;
      }
    ASSERT_GT(poisoned, 0) << spec.name;
    const auto dirty = run_isa(c, GetParam());
    EXPECT_EQ(0, std::memcmp(clean.out.data(), dirty.out.data(), clean.out.size() * sizeof(float))) << spec.name;
    EXPECT_EQ(0, std::memcmp(clean.lse.data(), dirty.lse.data(), clean.lse.size() * sizeof(float))) << spec.name;
    for (float v : dirty.out) ASSERT_TRUE(std::isfinite(v)) << spec.name;
  }
}

// Every fp8 code, subnormals included, decodes exactly: requests of one token (P = 1 exactly,
// so out = v_scale * V) whose V rows hold the codes, and whose K rows hold them too (lse = the
// score: checked against exact). And a NaN code in a V row a query sees makes that kv head's
// output NaN at that dim (e4m3fn's 0x7f / 0xff, e5m2's NaNs), nothing else.
TEST_P(CpuServingIsa, EveryFp8CodeDecodesExactly) {
  for (DType kv : {kE4, kE5}) {
    const bool e4 = kv == kE4;
    const auto is_nan = [e4](std::uint8_t b) { return e4 ? (b & 0x7f) == 0x7f : (b & 0x7f) > 0x7c; };
    const auto decode = [e4](std::uint8_t b) { return e4 ? e4m3::from_bits(b).to_float() : e5m2::from_bits(b).to_float(); };
    for (double v_scale : {1.0, 0.375}) {
      // 8 requests x 2 kv heads x head_dim 16 = 256 codes, one token each.
      CaseSpec spec = serving(e4 ? "codes_e4m3" : "codes_e5m2", kv, kBF, 1, 16, 16, {1, 1, 1, 1, 1, 1, 1, 1}, 2, 2, 0.01);
      spec.k_scale = 1.0;
      spec.v_scale = v_scale;
      Case c = generate_case(spec, 9);
      std::uint8_t* k = cache_bytes(c, true);
      std::uint8_t* v = cache_bytes(c, false);
      for (std::int64_t b = 0; b < 8; ++b) {
        const std::int64_t row = c.block_table[b * c.max_blocks_per_req] * 16;  // token 0 of request b
        for (std::int64_t i = 0; i < 32; ++i) {
          const auto code = static_cast<std::uint8_t>(b * 32 + i);
          const std::uint8_t finite = is_nan(code) || (!e4 && (code & 0x7f) == 0x7c) ? 0 : code;  // e5m2 inf: not in V
          v[row * 32 + i] = finite;
          k[row * 32 + i] = finite;
        }
      }
      const auto got = run_isa(c, GetParam());
      for (std::int64_t b = 0; b < 8; ++b)
        for (std::int64_t i = 0; i < 32; ++i) {
          const std::uint8_t code = v[c.block_table[b * c.max_blocks_per_req] * 16 * 32 + i];
          ASSERT_EQ(got.out[b * 32 + i], static_cast<float>(v_scale) * decode(code))
              << spec.name << " code 0x" << std::hex << int(code);
        }
      std::vector<double> ref_lse;
      testing::exact(c, {}, &ref_lse);
      testing::expect_lse_close_to_exact(c, got.lse, ref_lse);
    }
    // NaN in a visible V row: generated (finite) values elsewhere.
    CaseSpec spec = serving(e4 ? "nan_code_e4m3" : "nan_code_e5m2", kv, kBF, 1, 64, 16, {64}, 4, 2, 0.05);
    Case c = generate_case(spec, 9);
    const std::int64_t row = c.block_table[1] * 16 + 3;  // token 19; kv head 1, element 5
    cache_bytes(c, false)[row * 128 + 64 + 5] = e4 ? 0xff : 0x7d;
    const auto nan_out = run_isa(c, GetParam());
    for (std::int64_t h = 0; h < 4; ++h)
      for (std::int64_t d = 0; d < 64; ++d) {
        const float o = nan_out.out[h * 64 + d];
        if (h >= 2 && d == 5) EXPECT_TRUE(std::isnan(o)) << spec.name << " head " << h;
        else EXPECT_TRUE(std::isfinite(o)) << spec.name << " head " << h << " dim " << d;
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Flavours, CpuServingIsa, ::testing::ValuesIn(all_isas()),
                         [](const auto& info) { return std::string(cpu::isa_name(info.param)); });

// q_len > 1 is the same work as q_len separate requests: row p equals a q_len-1 request whose
// context ends at its position (the flavours agree within the bound; same cache, same query row).
TEST(CpuServing, EachNewTokenIsItsOwnRequest) {
  const CaseSpec spec = serving("q4_rows", kE4, kBF, 4, 128, 16, {300}, 32, 8);
  const Case c = generate_case(spec, 5);
  std::vector<float> out, lse;
  out = testing::run_case(c, "cpu", {}, &lse);
  const std::int64_t per_token = spec.num_heads * spec.head_dim;
  for (std::int64_t p = 0; p < 4; ++p) {
    Case one = c;
    one.spec.q_len = 1;
    one.context_lens = {static_cast<std::int32_t>(300 - 4 + p + 1)};
    one.query.assign(c.query.begin() + p * per_token, c.query.begin() + (p + 1) * per_token);
    std::vector<float> one_lse;
    const std::vector<float> single = testing::run_case(one, "cpu", {}, &one_lse);
    for (std::int64_t i = 0; i < per_token; ++i)
      ASSERT_NEAR(single[i], out[p * per_token + i], 2e-3 + 2e-3 * std::fabs(single[i])) << "token " << p << " element " << i;
    for (std::int64_t h = 0; h < spec.num_heads; ++h)
      ASSERT_NEAR(one_lse[h], lse[p * spec.num_heads + h], 4e-3) << "token " << p << " head " << h;
  }
}

// What the flavours compute, and what the dispatch does with the rest: avx512bf16 computes bf16
// on the fast shapes at q_len 1..16 (its wide tile), amx also fp8 caches (bf16 queries), avx512
// also f16 / fp8 caches, f16 queries (narrow and wide tiles), and each names the first feature
// beyond it;
// scalar and avx2 compute everything; a call runs on a flavour that computes it.
TEST(CpuServing, DispatchSendsWhatAFlavourCannotComputeToOneThatCan) {
  struct Probe {
    CaseSpec spec;
    const char* beyond;                // what avx512bf16 (and amx) report ("" = computes it)
    const char* beyond_avx512;         // what avx512 reports
    const char* beyond_amx = nullptr;  // what amx reports where it differs from avx512bf16
  };
  const std::vector<Probe> probes = {
      {serving("origin", kBF, kBF, 1, 128, 16, {20}), "", ""},
      {serving("fp8", kE4, kBF, 1, 128, 16, {20}), "F8_E4M3 caches", "", ""},
      {serving("e5m2", kE5, kBF, 1, 128, 16, {20}), "F8_E5M2 caches", "", ""},
      {serving("f16q", kBF, kF16, 1, 128, 16, {20}), "query dtype F16", ""},
      {serving("f16_mqa", kF16, kF16, 1, 64, 64, {20}, 8, 8), "query dtype F16", ""},
      {serving("fp8_hd256", kE4, kF16, 1, 256, 32, {20}, 16, 2), "query dtype F16", ""},
      {serving("fp8_hd96", kE4, kBF, 1, 96, 16, {20}), "F8_E4M3 caches", "head_dim 96", "head_dim 96"},
      {serving("fp8_wide", kE4, kBF, 1, 128, 16, {20}, 16, 1), "F8_E4M3 caches", "", ""},
      {serving("f16_wide", kF16, kF16, 1, 64, 32, {20}, 18, 2), "query dtype F16", ""},
      {serving("q4", kBF, kBF, 4, 128, 16, {20}), "", ""},
      {serving("q4_gqa32_8", kBF, kBF, 4, 64, 32, {20}, 32, 8), "", ""},
      {serving("q4_hd96", kBF, kBF, 4, 96, 16, {20}), "head_dim 96", "head_dim 96"},
      {serving("q4_fp8_wide", kE4, kBF, 4, 128, 16, {20}, 16, 1), "F8_E4M3 caches", "", ""},
      {serving("q2_gqa4_f16", kF16, kF16, 2, 64, 32, {20}, 8, 2), "query dtype F16", ""},
      {serving("q16_mha", kBF, kBF, 16, 256, 128, {40}, 4, 4), "", ""},
      {serving("q4_fp8_hd96", kE4, kBF, 4, 96, 16, {20}), "F8_E4M3 caches", "head_dim 96", "head_dim 96"},
      {serving("hd96", kBF, kBF, 1, 96, 16, {20}), "head_dim 96", "head_dim 96"},
      {serving("bs1", kBF, kBF, 1, 128, 1, {20}), "block_size 1", "block_size 1"},
      {serving("bs256", kBF, kBF, 1, 128, 256, {20}), "block_size 256", "block_size 256"},
  };
  const auto beyond_of = [](const Probe& probe, Isa isa) {
    if (isa == Isa::kAvx512) return probe.beyond_avx512;
    return isa == Isa::kAmx && probe.beyond_amx != nullptr ? probe.beyond_amx : probe.beyond;
  };
  for (const Probe& probe : probes) {
    const Case c = generate_case(probe.spec, 1);
    std::vector<float> out;
    const Problem p = problem_of(c, out);
    const Plan plan = make_plan(p.shape, p.variant.scale);
    for (Isa isa : {Isa::kAmx, Isa::kAvx512Bf16, Isa::kAvx512}) {
      EXPECT_EQ(cpu::beyond_flavour(isa, p), beyond_of(probe, isa)) << probe.spec.name << " " << cpu::isa_name(isa);
      EXPECT_EQ(cpu::flavour_computes(isa, p), std::string(beyond_of(probe, isa)).empty()) << probe.spec.name;
    }
    for (Isa isa : {Isa::kAvx2, Isa::kScalar}) EXPECT_EQ(cpu::beyond_flavour(isa, p), "") << probe.spec.name;
    const Isa ran = cpu::isa_for(p, plan);
    EXPECT_TRUE(cpu::isa_supported(ran) && cpu::flavour_computes(ran, p)) << probe.spec.name << " " << cpu::isa_name(ran);
    EXPECT_FALSE(cpu::kernels_reason(p, plan).empty());
    const Isa picked = cpu::auto_isa_for_rows(static_cast<int>(std::min<std::int64_t>(plan.q_tile, p.shape.rows_per_kv_head())));
    if (!cpu::flavour_computes(picked, p)) {
      EXPECT_NE(cpu::kernels_reason(p, plan).find(beyond_of(probe, picked)), std::string::npos) << cpu::kernels_reason(p, plan);
      EXPECT_NE(cpu::kernels_reason(p, plan).find(", so " + std::string(cpu::isa_name(ran)) + " runs"), std::string::npos)
          << cpu::kernels_reason(p, plan);
    }
    // A forced flavour that cannot compute the problem is a clear error, not a wrong answer.
    for (Isa isa : {Isa::kAmx, Isa::kAvx512Bf16, Isa::kAvx512})
      if (cpu::isa_supported(isa) && !cpu::flavour_computes(isa, p)) {
        try {
          cpu::run_with_isa(p, plan, {}, out.data(), isa);
          ADD_FAILURE() << "forced " << cpu::isa_name(isa) << " ran " << probe.spec.name;
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find(beyond_of(probe, isa)), std::string::npos) << e.what();
        }
      }
    // The registered executor computes it (its unsupported hook accepts everything).
    std::vector<float> lse;
    expect_exact(c, {testing::run_case(c, "cpu", {}, &lse), lse});
  }
}

// The avx2 flavour's P = fp16(exp(x)) for F16 caches: the fp16 rounding of a value within 2 fp32
// ulps of exp(x), so within one fp16 ulp of the correctly rounded fp16(exp(x)), and 0 below the
// range, 1 at x = 0.
TEST(CpuAvx2, ExpF16IsWithinOneUlpOfCorrectlyRounded) {
  if (!cpu::isa_supported(Isa::kAvx2)) GTEST_SKIP() << "this CPU cannot run avx2";
  std::vector<float> x, p;
  for (int i = 0; i <= 200000; ++i) x.push_back(-30.0f * static_cast<float>(i) / 200000.0f);
  x.push_back(-100.0f);
  x.push_back(-std::numeric_limits<float>::infinity());
  while (x.size() % 8) x.push_back(0.0f);
  p.resize(x.size());
  cpu::exp_f16_avx2(x.data(), p.data(), static_cast<std::int64_t>(x.size()));
  int off = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float want = round_to_f16(static_cast<float>(std::exp(static_cast<double>(x[i]))));
    ASSERT_EQ(p[i], round_to_f16(p[i])) << "not an fp16 value at x = " << x[i];
    if (p[i] != want) {
      ++off;
      const float ulp = f16::from_bits(static_cast<std::uint16_t>(f16::from_float(want).bits + 1)).to_float() - want;
      ASSERT_LE(std::fabs(p[i] - want), ulp) << "x = " << x[i];
    }
  }
  EXPECT_EQ(p[0], 1.0f);
  EXPECT_EQ(p[200001], 0.0f);  // exp(-100) is below the smallest fp16
  EXPECT_EQ(p[200002], 0.0f);  // -inf
  EXPECT_LT(off, static_cast<int>(x.size() / 100)) << "more than 1% of P off the correctly rounded fp16";
}

}  // namespace
}  // namespace mixpa
