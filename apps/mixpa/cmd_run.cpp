// `mixpa run`: run a case file or a generated origin case on an executor, time it,
// optionally verify against exact float64 attention and write the output file.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <vector>

#include "commands.h"
#include "core/cases.h"
#include "api/executors.h"
#include "core/validate.h"
#include "cpu/chunk_kernel.h"
#include "cpu/dispatch.h"
#include "io/safetensors.h"
#include "progress.h"
#include "reference/reference.h"

namespace mixpa::cli {

constexpr int kExitSimCheck = 4;  // the sim found a synchronisation error

std::string executors_help() {
  std::ostringstream s;
  s << "Executors (--executor NAME; auto = the first available):\n";
  for (const ExecutorEntry& e : executor_table())
    s << "  " << e.name << std::string(12 - std::min<std::size_t>(e.name.size(), 11), ' ') << e.summary
      << (e.is_available() ? "" : " [not available on this machine]") << "\n";
  return s.str();
}

std::string cases_help() {
  std::ostringstream s;
  s << "Cases (--case NAME, docs/spec.md §4; values U(-0.5,0.5) q/k, U(-1,1) v, bf16):\n";
  for (const CaseSpec& c : case_table())
    s << "  " << c.name << std::string(12 - std::min<std::size_t>(c.name.size(), 11), ' ') << "batch " << c.batch
      << ", heads " << c.num_heads << "/" << c.num_kv_heads << " kv, head_dim " << c.head_dim << ", block_size "
      << c.block_size << ", context " << c.context_lens.front() << ", scale " << c.scale << "\n";
  return s.str();
}

void add_run_command(CLI::App& app, RunArgs& a) {
  CLI::App* run = app.add_subcommand("run", "Run paged attention on a case file (--input) or an origin case (--case)");
  run->footer("\nExamples:\n  mixpa run --case SmallCase1\n  mixpa run --case Case1 --executor sim --trace t.json"
              " --swimlane t.svg\n  mixpa run --input case.safetensors --output out.safetensors\n"
              "  mixpa run --case SmallCase1 --executor sim --check --inject lane-half0\n"
              "  mixpa run --case SmallCase1 --executor sim --schedule-seeds 8 --explicit-free --pipe-depth 1\n"
              "\nExit codes of run: 0 ok, 1 verification failed, 2 invalid input or usage, 3 internal error,\n"
              "4 the sim found a synchronisation error (--check report, or --schedule-seeds outputs that differ).\n");
  auto* in = run->add_option("--input,-i", a.input,
                             "Case file (safetensors: query BF16|F16 [batch, (q_len,) heads, head_dim], key_cache / "
                             "value_cache BF16|F16|F8_E4M3|F8_E5M2, block_table / context_lens I32|I64; metadata "
                             "'scale', 'softcap', 'window_left', 'k_scale', 'v_scale', 'kv_layout')");
  auto* cs = run->add_option("--case,-c", a.case_name, "Generate an origin case in memory (Case1, Case2, SmallCase1, ...)");
  in->excludes(cs);
  run->add_option("--output,-o", a.output,
                  "Write the output (safetensors, F32 'out' of the query's shape [batch, (q_len,) heads, head_dim] "
                  "and 'lse' [batch, (q_len,) heads])");
  run->add_option("--executor,--backend,-e", a.executor, "Executor: auto, cpu, sim, reference, cuda (see mixpa --help)");
  run->add_option("--seed", a.seed, "Seed of --case generation (default 0)");
  run->add_option("--scale", a.scale, "Softmax scale (default: the file's metadata 'scale', else 1/sqrt(head_dim))");
  run->add_option("--softcap", a.softcap,
                  "Logit soft-cap c > 0: x = c*tanh(x/c) after the scale; 0 = none (default: the file's 'softcap')");
  run->add_option("--window-left", a.window_left,
                  "Sliding window: each query sees itself and N tokens before; -1 = all (default: the file's "
                  "'window_left')");
  run->add_option("--k-scale", a.k_scale,
                  "fp8 caches: K = X * float(key_cache), positive (default: the file's 'k_scale', else 1)");
  run->add_option("--v-scale", a.v_scale,
                  "fp8 caches: V = X * float(value_cache), positive (default: the file's 'v_scale', else 1)");
  run->add_option("--kv-layout", a.kv_layout,
                  "KV cache layout of --input: NHD [blocks, block_size, kv_heads, head_dim] or HND [blocks, kv_heads, "
                  "block_size, head_dim] (default: the file's 'kv_layout', else NHD)");
  run->add_flag("--no-verify", a.no_verify, "With --case: skip the check against exact float64 attention");
  run->add_flag("--verify", a.verify, "With --input: check against exact float64 attention");
  run->add_option("--repeat", a.repeat, "Run N times and report the median time (default 1)");
  run->add_option("--threads", a.options.num_threads, "OS threads for cpu/sim (default 0 = all cores)");
  run->add_option("--blocks", a.options.hw_blocks, "Hardware blocks of the SPMD launch (default 24, the origin's)");
  run->add_option("--pipe-depth", a.options.pipe_depth, "Slots per tile pipe (default 2, the origin's)");
  run->add_option("--trace", a.options.sim.trace_path, "sim: write Chrome/Perfetto trace events (JSON)");
  run->add_option("--swimlane", a.options.sim.swimlane_path, "sim: write an SVG swimlane of the pipeline");
  run->add_option("--swimlane-blocks", a.options.sim.swimlane_blocks, "sim: hardware blocks in the swimlane (default 3)");
  run->add_option("--swimlane-window", a.swimlane_window,
                  "sim: swimlane window FROM_US TO_US on the simulated clock (default: block 0's first 8 pages)")
      ->expected(2);
  run->add_option("--watchdog", a.options.sim.watchdog_seconds,
                  "sim: seconds without progress before a deadlock report (default 10)");
  run->add_flag("--single-thread", a.options.sim.single_thread, "sim: deterministic single-OS-thread scheduling");
  run->add_flag("--check", a.options.sim.check,
                "sim: shadow-check every pipe access (races, lane mix-ups, use after free, FIFO order); "
                "a finding prints a report and exits 4");
  run->add_flag("--explicit-free", a.options.sim.explicit_free,
                "sim: pipes free on TFREE (the next generation) instead of at pop");
  run->add_option("--schedule", a.schedule,
                  "sim: threads (default), turns (= --single-thread) or random (seeded random turns)")
      ->check(CLI::IsMember({"threads", "turns", "random"}));
  run->add_option("--schedule-seed", a.options.sim.schedule_seed, "sim: seed of --schedule random (default 0)");
  run->add_option("--schedule-seeds", a.schedule_seeds,
                  "sim: run K random schedules (seeds --schedule-seed .. +K-1), compare their bits; "
                  "a difference prints the first differing element and its seed, exits 4")
      ->check(CLI::PositiveNumber);
  run->add_option("--inject", a.options.sim.inject,
                  "sim, test hook: run with one injected bug: lane-half0, free-before-copy, skip-wait, push-unfreed, "
                  "swap-order, pop-no-split, slot-stride (docs/sim.md)");
}

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

Case obtain_case(const RunArgs& a, std::uint64_t seed) {
  if (!a.input.empty()) return load_case(a.input);
  const CaseSpec& spec = find_case(a.case_name);
  Progress progress("generating " + spec.name);
  return generate_case(spec, seed, [&](double f) { progress.update(f); });
}

// Everything that does not depend on the case, checked before it is loaded or generated
// (which can take seconds): options, the executor, the output files.
std::uint64_t check_arguments(const RunArgs& a, const Options& options) {
  if (a.input.empty() && a.case_name.empty()) throw Error("run: give --input FILE or --case NAME");
  if (!a.case_name.empty()) find_case(a.case_name);
  const std::uint64_t seed = parse_seed(a.seed);
  if (a.repeat < 1) throw Error("--repeat: " + std::to_string(a.repeat) + " must be >= 1");
  if (!a.swimlane_window.empty()) {
    const double from = a.swimlane_window[0], to = a.swimlane_window[1];
    std::ostringstream s;
    s << "--swimlane-window: " << from << " " << to;
    if (!std::isfinite(from) || !std::isfinite(to)) throw Error(s.str() + ": both times must be finite");
    if (from < 0) throw Error(s.str() + ": FROM_US must be >= 0");
    if (!(to > from)) throw Error(s.str() + ": TO_US must be after FROM_US");
  }
  validate_options(options);
  if (options.scale) resolve_scale(options, 1);  // finite, within float32; head_dim is not needed for that
  find_executor(options.executor);
  check_outputs({{"--output", a.output}, {"--trace", options.sim.trace_path}, {"--swimlane", options.sim.swimlane_path}},
                a.input);
  return seed;
}

void print_shape(const Case& c, const Problem& p) {
  std::printf("case %s: batch %lld, heads %lld (kv %lld), head_dim %lld, block_size %lld, pages %lld, scale %g",
              c.spec.name.c_str(), static_cast<long long>(c.spec.batch), static_cast<long long>(c.spec.num_heads),
              static_cast<long long>(c.spec.num_kv_heads), static_cast<long long>(c.spec.head_dim),
              static_cast<long long>(c.spec.block_size), static_cast<long long>(c.num_blocks), p.variant.scale);
  // SPEC §6 beyond the origin's shapes, only when present (the origin's line stays as it was).
  if (p.shape.q_len != 1) std::printf(", q_len %lld", static_cast<long long>(p.shape.q_len));
  if (p.query_dtype != DType::kBF16) std::printf(", query %s", std::string(dtype_name(p.query_dtype)).c_str());
  if (p.kv_dtype != DType::kBF16) std::printf(", cache %s", std::string(dtype_name(p.kv_dtype)).c_str());
  if (p.kv_is_fp8()) std::printf(" (k_scale %g, v_scale %g)", p.k_scale, p.v_scale);
  std::printf("\n");
}

}  // namespace

int run_command(RunArgs& a) {
  Options options = a.options;
  options.executor = a.executor;
  if (a.scale) options.scale = a.scale;
  if (a.swimlane_window.size() == 2) {
    options.sim.swimlane_from_us = a.swimlane_window[0];
    options.sim.swimlane_to_us = a.swimlane_window[1];
  }
  std::optional<KvLayout> layout_flag;
  if (!a.kv_layout.empty()) {
    layout_flag = parse_kv_layout(a.kv_layout, "--kv-layout");
    if (!a.case_name.empty() && *layout_flag != KvLayout::kNHD)
      throw Error("--kv-layout: generated cases (--case) are NHD; give an HND case file with --input");
  }
  const std::uint64_t seed = check_arguments(a, options);
  Case c = obtain_case(a, seed);
  if (!a.scale && c.has_scale) options.scale = c.scale;
  c.apply_variant(options);  // the file's softcap, window and layout; a flag overrides them
  if (a.softcap) options.softcap = *a.softcap;
  if (a.window_left) options.window_left = *a.window_left;
  if (a.k_scale) options.k_scale = *a.k_scale;
  if (a.v_scale) options.v_scale = *a.v_scale;
  if (layout_flag) options.kv_layout = *layout_flag;
  options.report = [](std::string_view line) { std::printf("%.*s\n", static_cast<int>(line.size()), line.data()); };

  // Validate everything (and resolve the executor) before any work or output.
  const ExecutorEntry& named = find_executor(options.executor);
  const bool sim_debugging = options.sim.check || !options.sim.inject.empty() || options.sim.explicit_free ||
                             !a.schedule.empty() || a.schedule_seeds > 0;
  if (sim_debugging && named.name != "sim")
    throw Error("run: --check, --inject, --explicit-free and --schedule* apply to --executor sim only (got " +
                std::string(named.name) + ")");
  std::vector<float> out(static_cast<std::size_t>(std::max<std::int64_t>(c.out_elements(), 0)));
  std::vector<float> lse(static_cast<std::size_t>(std::max<std::int64_t>(c.lse_elements(), 0)));
  const Inputs inputs = c.inputs();
  // The output takes the query's shape ([batch, (q_len,) num_heads, head_dim]).
  const auto& qs = inputs.query.shape;
  const bool multi = inputs.query.rank == 4;
  const OutputView view{out.data(), {qs[0], qs[multi ? 2 : 1], qs[multi ? 3 : 2]}, lse.empty() ? nullptr : lse.data(),
                        multi ? qs[1] : 1};
  const Problem problem = validate(inputs, options, view);
  const ExecutorEntry& executor = executor_for(options.executor, problem);
  print_shape(c, problem);

  // The sim's debugging runs: turns, random turns, K seeds compared bit for bit.
  if (a.schedule == "turns") options.sim.single_thread = true;
  if (a.schedule == "random" || a.schedule_seeds > 0) options.sim.random_schedule = true;
  const std::uint64_t first_seed = options.sim.schedule_seed;
  const int runs = a.schedule_seeds > 0 ? a.schedule_seeds : a.repeat;
  std::vector<float> first_out;
  std::vector<double> ms;
  for (int r = 0; r < runs; ++r) {
    if (a.schedule_seeds > 0) options.sim.schedule_seed = first_seed + static_cast<std::uint64_t>(r);
    if (a.schedule_seeds > 0 && r == 1) options.report = nullptr;  // the first schedule's summary is enough
    const auto t0 = std::chrono::steady_clock::now();
    try {
      run(inputs, options, view);
    } catch (const SimCheckError& e) {
      std::fprintf(stderr, "mixpa: error: %s\n", e.what());
      if (options.sim.random_schedule)
        std::fprintf(stderr, "  reproduce: --schedule random --schedule-seed %llu\n",
                     static_cast<unsigned long long>(options.sim.schedule_seed));
      return kExitSimCheck;
    }
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    if (a.schedule_seeds == 0) continue;
    if (r == 0) {
      first_out = out;
      continue;
    }
    for (std::size_t i = 0; i < out.size(); ++i) {
      if (std::memcmp(&out[i], &first_out[i], sizeof(float)) == 0) continue;
      const std::int64_t heads = view.shape[1], dim = view.shape[2], q_len = view.q_len;
      const std::int64_t flat = static_cast<std::int64_t>(i), row = flat / dim;
      // The index in the output's own shape: [b, h, d], or [b, p, h, d] for a rank-4 query.
      std::string where = std::to_string(row / (q_len * heads)) + ", ";
      if (multi) where += std::to_string(row / heads % q_len) + ", ";
      where += std::to_string(row % heads) + ", " + std::to_string(flat % dim);
      std::fprintf(stderr,
                   "mixpa: error: the output depends on the schedule: seed %llu differs from seed %llu first at "
                   "out[%s]: %.9g vs %.9g\n  reproduce: --schedule random --schedule-seed %llu\n",
                   static_cast<unsigned long long>(options.sim.schedule_seed),
                   static_cast<unsigned long long>(first_seed), where.c_str(), out[i], first_out[i],
                   static_cast<unsigned long long>(options.sim.schedule_seed));
      return kExitSimCheck;
    }
  }
  if (a.schedule_seeds > 0)
    std::printf("schedule: %d random schedules (seeds %llu-%llu) gave identical bits\n", a.schedule_seeds,
                static_cast<unsigned long long>(first_seed),
                static_cast<unsigned long long>(first_seed + static_cast<std::uint64_t>(a.schedule_seeds) - 1));
  const double t = median(ms);
  const double gbs = static_cast<double>(c.kv_bytes_read()) / (t * 1e-3) / 1e9;
  // Which kernels ran matters for the figure: cpu picks its flavour per machine by measurement
  // (MIXPA_CPU_ISA forces one), per tile width; the pick was made by the first run() above.
  // A flavour that cannot compute the problem (e.g. avx512 on an fp8 cache) hands it to avx2 or
  // scalar; the reason line says so.
  const bool on_cpu = executor.name == "cpu";
  std::string kernels, reason;
  if (on_cpu) {
    const Plan plan = make_plan(problem.shape, problem.variant.scale);
    kernels = " (" + std::string(cpu::isa_name(cpu::isa_for(problem, plan))) + " kernels)";
    reason = cpu::kernels_reason(problem, plan);
  }
  std::printf("executor %s%s: %.3f ms (median of %d), KV read %.1f MB, effective %.1f GB/s\n",
              std::string(executor.name).c_str(), kernels.c_str(), t, runs, c.kv_bytes_read() / 1e6, gbs);
  if (on_cpu) std::printf("cpu kernels: %s\n", reason.c_str());

  int status = 0;
  const bool verify = a.input.empty() ? !a.no_verify : a.verify;
  if (verify) {
    std::vector<double> exact(out.size()), exact_lse(lse.size());
    {
      Progress progress("verifying against exact float64");
      exact_attention_f64(problem, exact.data(), [&](double f) { progress.update(f); }, exact_lse.data());
    }
    const AccuracyReport r = compare_to_exact(out.data(), exact.data(), static_cast<std::int64_t>(out.size()));
    const AccuracyReport rl = compare_lse_to_exact(lse.data(), exact_lse.data(), static_cast<std::int64_t>(lse.size()));
    std::printf("verify: max abs error %.3g vs exact float64 attention; %s (|out - ref| <= 2e-3 + 2e-3*|ref|",
                r.max_abs_error, r.pass() ? "PASS" : "FAIL");
    if (!r.pass()) std::printf(", %lld elements outside", static_cast<long long>(r.failures));
    std::printf(")\n");
    std::printf("verify: lse max abs error %.3g; %s (|lse - ref| <= 4e-3 + 2e-3*|ref|, -inf exact",
                rl.max_abs_error, rl.pass() ? "PASS" : "FAIL");
    if (!rl.pass()) std::printf(", %lld rows outside", static_cast<long long>(rl.failures));
    std::printf(")\n");
    status = r.pass() && rl.pass() ? 0 : 1;
  }
  if (!a.output.empty()) {
    save_output(a.output, out.data(), std::vector<std::int64_t>(qs.begin(), qs.begin() + inputs.query.rank), view.lse);
    std::printf("wrote %s\n", a.output.c_str());
  }
  return status;
}

}  // namespace mixpa::cli
