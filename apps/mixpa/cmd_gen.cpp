// `mixpa gen`: write an origin case to a safetensors file (same bytes as `run --case`),
// optionally with SPEC §6 dtypes / q_len / fp8 scales on top of it.
#include <cmath>
#include <cstdio>
#include <string_view>
#include <tuple>

#include "commands.h"
#include "core/cases.h"
#include "core/validate.h"
#include "io/safetensors.h"
#include "mixpa/error.h"
#include "progress.h"

namespace mixpa::cli {

void add_gen_command(CLI::App& app, GenArgs& a) {
  CLI::App* gen = app.add_subcommand("gen", "Generate an origin case (docs/spec.md §4) and write it as a case file");
  gen->footer("\nExample:\n  mixpa gen --case SmallCase1 --output small.safetensors\n"
              "  mixpa run --input small.safetensors     (same output as: mixpa run --case SmallCase1)\n");
  gen->add_option("--case,-c", a.case_name, "Case name (Case1, Case2, SmallCase1, ...)")->required();
  gen->add_option("--output,-o", a.output, "Output case file (safetensors)")->required();
  gen->add_option("--seed", a.seed, "Generation seed (default 0)");
  gen->add_option("--kv-dtype", a.kv_dtype, "Cache dtype: BF16 (default), F16, F8_E4M3 or F8_E5M2");
  gen->add_option("--query-dtype", a.query_dtype, "Query dtype: BF16 (default) or F16");
  gen->add_option("--q-len", a.q_len, "New tokens per request, 1..16 (query [batch, q_len, heads, head_dim])");
  gen->add_option("--k-scale", a.k_scale, "fp8 caches: stored K = K / X, file metadata 'k_scale' = X");
  gen->add_option("--v-scale", a.v_scale, "fp8 caches: stored V = V / X, file metadata 'v_scale' = X");
  gen->add_flag("--int64-indices", a.int64_indices, "Write block_table / context_lens as I64");
}

namespace {

DType parse_dtype_flag(const std::string& text, const char* flag, std::initializer_list<DType> allowed) {
  std::string names;
  for (DType t : allowed) {
    if (text == dtype_name(t)) return t;
    names += (names.empty() ? "" : ", ") + std::string(dtype_name(t));
  }
  throw Error(std::string(flag) + ": '" + text + "' is not one of " + names);
}

// The named case with the §6 flags applied; each value is checked here (the rest of the
// contract, e.g. context lengths below q_len, by the validation of the written file).
CaseSpec spec_with_flags(const GenArgs& a) {
  CaseSpec spec = find_case(a.case_name);
  if (!a.kv_dtype.empty())
    spec.kv_dtype = parse_dtype_flag(a.kv_dtype, "--kv-dtype", {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2});
  if (!a.query_dtype.empty()) spec.query_dtype = parse_dtype_flag(a.query_dtype, "--query-dtype", {DType::kBF16, DType::kF16});
  if (a.q_len) {
    if (*a.q_len < kMinQLen || *a.q_len > kMaxQLen)
      throw Error("--q-len: " + std::to_string(*a.q_len) + " must be in 1..16");
    spec.q_len = *a.q_len;
  }
  const bool fp8 = spec.kv_dtype == DType::kF8E4M3 || spec.kv_dtype == DType::kF8E5M2;
  for (const auto& [value, flag, field] : {std::tuple{&a.k_scale, "--k-scale", &spec.k_scale},
                                           std::tuple{&a.v_scale, "--v-scale", &spec.v_scale}}) {
    if (!*value) continue;
    if (!fp8)
      throw Error(std::string(flag) + ": given for a " + std::string(dtype_name(spec.kv_dtype)) +
                  " cache; k/v scales apply to F8_E4M3 / F8_E5M2 caches only (--kv-dtype)");
    if (!std::isfinite(**value) || !(**value > 0))
      throw Error(std::string(flag) + ": " + std::to_string(**value) + " must be a positive finite number");
    *field = **value;
  }
  spec.int64_indices = a.int64_indices;
  for (std::int32_t len : spec.context_lens)
    if (len > 0 && len < spec.q_len)
      throw Error("--q-len: " + std::to_string(spec.q_len) + " is above context length " + std::to_string(len) +
                  " of case " + spec.name + " (the context counts the new tokens too)");
  return spec;
}

}  // namespace

int gen_command(const GenArgs& a) {
  const CaseSpec spec = spec_with_flags(a);
  const std::uint64_t seed = parse_seed(a.seed);
  check_outputs({{"--output", a.output}}, "");
  Case c;
  {
    Progress progress("generating " + spec.name);
    c = generate_case(spec, seed, [&](double f) { progress.update(f); });
  }
  save_case(a.output, c);
  const double kv_bytes = 2.0 * static_cast<double>(c.num_blocks * spec.block_size * spec.num_kv_heads * spec.head_dim) *
                         static_cast<double>(dtype_size(spec.kv_dtype));
  std::printf("wrote %s: %s (seed %llu), %.1f MB of KV cache\n", a.output.c_str(), spec.name.c_str(),
              static_cast<unsigned long long>(seed), kv_bytes / 1e6);
  return 0;
}

}  // namespace mixpa::cli
