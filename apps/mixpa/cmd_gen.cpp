// `mixpa gen`: write an origin case to a safetensors file (same bytes as `run --case`).
#include <cstdio>

#include "commands.h"
#include "core/cases.h"
#include "io/safetensors.h"
#include "progress.h"

namespace mixpa::cli {

void add_gen_command(CLI::App& app, GenArgs& a) {
  CLI::App* gen = app.add_subcommand("gen", "Generate an origin case (docs/spec.md §4) and write it as a case file");
  gen->footer("\nExample:\n  mixpa gen --case SmallCase1 --output small.safetensors\n"
              "  mixpa run --input small.safetensors     (same output as: mixpa run --case SmallCase1)\n");
  gen->add_option("--case,-c", a.case_name, "Case name (Case1, Case2, SmallCase1, ...)")->required();
  gen->add_option("--output,-o", a.output, "Output case file (safetensors)")->required();
  gen->add_option("--seed", a.seed, "Generation seed (default 0)");
}

int gen_command(const GenArgs& a) {
  const CaseSpec& spec = find_case(a.case_name);
  const std::uint64_t seed = parse_seed(a.seed);
  check_outputs({{"--output", a.output}}, "");
  Case c;
  {
    Progress progress("generating " + spec.name);
    c = generate_case(spec, seed, [&](double f) { progress.update(f); });
  }
  save_case(a.output, c);
  std::printf("wrote %s: %s (seed %llu), %.1f MB of KV cache\n", a.output.c_str(), spec.name.c_str(),
              static_cast<unsigned long long>(seed), 2.0 * c.key_cache.size() * 2 / 1e6);
  return 0;
}

}  // namespace mixpa::cli
