// mixpa_bench: times the cpu executor on the benchmark cases and judges each time against
// the machine measured in the same run (roofline = max(bytes / bandwidth, flops / peak)) and
// against PyTorch's CPU scaled_dot_product_attention on the same data (bench/peer_torch.py).
//
// Every case is timed cold, as a decode step sees it (each layer reads other KV): the runs
// rotate over enough copies of the KV cache that together they exceed twice the last-level
// cache (each case says how many, or that memory did not allow it), and the bandwidth probe
// reads the same copies the same way. `auto` and every flavour this CPU runs are timed in the
// same run, interleaved, through a DecodePlan each (as a decode step calls it); the fixed cost
// of a call (context lengths all 0; and the case's wall time minus its kernel time) is printed
// for mixpa::run and DecodePlan::run.
//
// A case may carry a sliding window, `NAME:window_left=N` (SPEC §6): it runs NAME's shapes and
// data with that window and prints its time as a ratio to NAME's full-context time when NAME
// ran earlier in the same run (the default list times Decode32k both ways).
//
// --serving times SPEC §6's serving shapes instead, each pair interleaved in the same run through
// the cpu executor's reused plan (what a decode step's layers call), and prints the ratios:
// Case1 and Decode32k with an e4m3 cache next to bf16 (goal >= 1.7x faster where memory-bound);
// Decode32k with q_len 4 (GQA 32/8: 16 rows per kv head) next to 4 separate q_len-1 calls (goal
// >= 3x cheaper); head_dim 96 next to 128 and block_size 1 next to 16, per byte read (goal >=
// 0.5x).
//
//   mixpa_bench [--cases Case1,Case2,SmallCase1,Decode32k,Decode32k:window_left=4095] [--reps 7] [--threads 0]
//               [--executor cpu] [--isas auto,avx2,...] [--no-peer] [--python python3]
//               [--max-copy-mib 8192] [--serving]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/cases.h"
#include "core/parallel.h"
#include "core/validate.h"
#include "cpu/chunk_kernel.h"
#include "cpu/cpu_executor.h"
#include "cpu/dispatch.h"
#include "machine_probe.h"
#include "mixpa/decode_plan.h"
#include "mixpa/paged_attention.h"
#include "peer_dump.h"

namespace mixpa::bench {
namespace {

struct Args {
  std::vector<std::string> cases{"Case1", "Case2", "SmallCase1", "Decode32k", "Decode32k:window_left=4095"};
  int reps = 7;
  int threads = 0;
  std::string executor = "cpu";
  bool peer = true;
  bool serving = false;  // the SPEC §6 comparisons instead of the cases
  std::string python = "python3";
  std::string script = MIXPA_BENCH_DIR "/peer_torch.py";
  std::vector<std::string> isas;  // empty: auto and every flavour this CPU runs
  double max_copy_mib = 8192;     // the KV copies for cold runs stay within this
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error("mixpa_bench: " + k + " needs a value");
      return argv[++i];
    };
    if (k == "--cases") {
      a.cases.clear();
      std::stringstream s(value());
      for (std::string c; std::getline(s, c, ',');) a.cases.push_back(c);
    } else if (k == "--reps") a.reps = std::max(1, std::stoi(value()));
    else if (k == "--threads") a.threads = std::stoi(value());
    else if (k == "--executor") a.executor = value();
    else if (k == "--no-peer") a.peer = false;
    else if (k == "--serving") a.serving = true;
    else if (k == "--isas") {
      std::stringstream s(value());
      for (std::string c; std::getline(s, c, ',');) a.isas.push_back(c);
    } else if (k == "--max-copy-mib") a.max_copy_mib = std::stod(value());
    else if (k == "--python") a.python = value();
    else throw Error("mixpa_bench: unknown option '" + k + "' (see the header of bench/mixpa_bench.cpp)");
  }
  return a;
}

// A bench case: a case of the table, optionally with a sliding window ("NAME:window_left=N").
struct BenchCase {
  std::string base;            // the case table's name
  std::int64_t window_left = -1;
  std::string label() const { return window_left < 0 ? base : base + "/w" + std::to_string(window_left); }
};

BenchCase parse_case(const std::string& token) {
  const std::size_t colon = token.find(':');
  BenchCase b{token.substr(0, colon)};
  if (colon == std::string::npos) return b;
  const std::string key = "window_left=", rest = token.substr(colon + 1);
  std::size_t used = 0;
  try {
    if (rest.rfind(key, 0) == 0) b.window_left = std::stoll(rest.substr(key.size()), &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || key.size() + used != rest.size() || b.window_left < 0)
    throw Error("mixpa_bench: case '" + token + "': the only case option is window_left=N with N >= 0");
  return b;
}

// The tokens the case's requests see (a window cuts each to its last window_left + 1), and the
// K and V bytes of those tokens: what a kernel must read.
std::int64_t visible_token_count(const Case& c) {
  std::int64_t tokens = 0;
  mixpa::Variant v;
  v.window_left = c.window_left;
  for (std::int32_t len : c.context_lens) tokens += visible_tokens(v, len).size();
  return tokens;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Sets MIXPA_CPU_ISA while a plan is made (the plan keeps its flavour), "auto" = unset.
DecodePlan make_plan_for(const Case& c, const Options& o, const std::string& isa) {
  const char* old = std::getenv("MIXPA_CPU_ISA");
  const std::string saved = old ? old : "";
  if (isa == "auto") unsetenv("MIXPA_CPU_ISA");
  else setenv("MIXPA_CPU_ISA", isa.c_str(), 1);
  DecodePlan plan(c.inputs(), o);
  if (old) setenv("MIXPA_CPU_ISA", saved.c_str(), 1);
  else unsetenv("MIXPA_CPU_ISA");
  return plan;
}

LayerInputs layer_of(const Case& c) {
  const Inputs in = c.inputs();
  return {in.query, in.key_cache, in.value_cache};
}

// Copies of the case's KV cache for cold runs: enough that together they exceed twice the
// last-level cache, within max_bytes. Copy 0 is the case itself.
std::vector<std::unique_ptr<Case>> kv_copies(const Case& c, std::int64_t llc, double max_bytes, std::string& note) {
  const double one = 2.0 * static_cast<double>(c.key_cache.size() * sizeof(bf16));
  const double want = 2.0 * static_cast<double>(llc);
  std::int64_t n = llc > 0 ? static_cast<std::int64_t>(want / one) + 1 : 1;
  const std::int64_t fit = std::max<std::int64_t>(1, static_cast<std::int64_t>(max_bytes / one));
  const bool cold = llc > 0 && n <= fit;
  n = std::min(n, fit);
  std::vector<std::unique_ptr<Case>> copies;
  for (std::int64_t i = 1; i < n; ++i) {
    auto copy = std::make_unique<Case>();
    copy->spec = c.spec;
    copy->query = c.query;
    copy->key_cache = c.key_cache;
    copy->value_cache = c.value_cache;
    copy->block_table = c.block_table;
    copy->context_lens = c.context_lens;
    copy->num_blocks = c.num_blocks;
    copy->max_blocks_per_req = c.max_blocks_per_req;
    copy->scale = c.scale;
    copy->has_scale = c.has_scale;
    copies.push_back(std::move(copy));
  }
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s: %lld cop%s x %.0f MiB = %.0f MiB %s 2 x last-level cache (%.0f MiB)",
                cold ? "cold" : "NOT cold", static_cast<long long>(n), n == 1 ? "y" : "ies", one / (1 << 20),
                n * one / (1 << 20), n * one > want ? ">" : "<=", static_cast<double>(llc) / (1 << 20));
  note = buf;
  if (llc <= 0) note = "NOT known to be cold: the last-level cache size is unknown (1 copy)";
  return copies;
}

struct Variant {
  std::string name;  // "auto" or a flavour
  std::string isa;   // the flavour it runs
  std::optional<DecodePlan> plan;
  std::vector<double> seconds;
};

// Median of `reps` calls of fn (after one warm-up).
template <class Fn>
double median_call_seconds(int reps, Fn&& fn) {
  fn();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    fn();
    t.push_back(seconds_since(t0));
  }
  return median(t);
}

// The fixed cost of a call on this case's shapes: every context length 0, through mixpa::run
// and through a DecodePlan; and for the case itself, wall time minus the time inside kernels
// divided by the threads (which is what the pool, the merge, validation and planning cost).
void print_fixed_cost(const Case& c, const Options& o, int threads) {
  // Zero-length requests read no page; the call still validates, plans and writes zeros.
  const std::vector<std::int32_t> zero_lens(c.context_lens.size(), 0);
  std::vector<float> out(c.out_elements());
  const OutputView view{out.data(), {c.spec.batch, c.spec.num_heads, c.spec.head_dim}};
  Inputs zin = c.inputs();
  zin.context_lens = TensorView::contiguous(zero_lens.data(), DType::kI32, {c.spec.batch});
  const double run0 = median_call_seconds(2001, [&] { run(zin, o, view); });
  // The part of that no call can avoid: writing out's zeros (a large batch's out is MiBs).
  const double zeros_s = median_call_seconds(2001, [&] {
    std::memset(out.data(), 0, out.size() * sizeof(float));
    asm volatile("" : : "r"(out.data()) : "memory");
  });
  DecodePlan plan0(zin, o);
  const LayerInputs layer = layer_of(c);
  const double plan0_s = median_call_seconds(2001, [&] { plan0.run(layer, view); });
  // Kernel time of the case: the same ExecPlan as DecodePlan's, with the kernel clock on; on
  // one thread (what the caller's thread spends outside kernels: merge, bookkeeping) and on all
  // (adds the pool's hand-out, waiting for the last item and load imbalance).
  const Problem pr = validate(c.inputs(), o, view);
  const Plan plan = make_plan(pr.shape, pr.variant.scale);
  const int rows = static_cast<int>(std::min<std::int64_t>(plan.q_tile, pr.shape.group()));
  double fixed_at[2] = {0, 0}, merge_at[2] = {0, 0};
  const int counts[2] = {1, threads};
  for (int k = 0; k < 2; ++k) {
    cpu::ExecPlan ep;
    cpu::prepare(ep, pr, plan, counts[k], cpu::auto_isa_for_rows(rows));
    std::atomic<std::int64_t> kernel_ns{0}, merge_ns{0};
    ep.kernel_ns = &kernel_ns;
    ep.merge_ns = &merge_ns;
    std::vector<double> fixed, merged;
    for (int r = 0; r < 9; ++r) {
      kernel_ns = 0;
      merge_ns = 0;
      // Wall time on both sides (the kernel clock is CLOCK_MONOTONIC): on one thread that is the
      // caller's own bookkeeping (pool hand-out, merge); on all it adds waiting for the last item.
      const auto w0 = Clock::now();
      cpu::execute(ep, pr, plan, out.data());
      const double spent = seconds_since(w0);
      fixed.push_back(spent - static_cast<double>(kernel_ns.load()) * 1e-9 / counts[k]);
      merged.push_back(static_cast<double>(merge_ns.load()) * 1e-9 / counts[k]);
    }
    fixed_at[k] = median(fixed);
    merge_at[k] = median(merged);
  }
  std::printf("%-10s  fixed cost per call: context lengths all 0: mixpa::run %.1f us, DecodePlan::run %.1f us"
              " (medians of 2001; of which a memset of out's %.2f MiB of zeros alone takes %.1f us); this case minus"
              " its kernel time: %.1f us on 1 thread (merging the split-KV partials %.1f us of it), %.1f us on %d (merge"
              " %.1f us; wall - kernel time / threads: adds load imbalance; medians of 9)\n",
              c.spec.name.c_str(), run0 * 1e6, plan0_s * 1e6, static_cast<double>(out.size() * sizeof(float)) / (1 << 20),
              zeros_s * 1e6, fixed_at[0] * 1e6, merge_at[0] * 1e6, fixed_at[1] * 1e6, threads, merge_at[1] * 1e6);
}

// Runs the torch peer on the dumped case; returns its median seconds, or a negative value.
double time_peer(const Case& c, const std::vector<float>& out, const Args& a, int threads) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("mixpa_bench_peer_" + c.spec.name);
  write_peer_case(c, out, dir);
  const std::string cmd = a.python + " " + a.script + " " + dir.string() + " --reps " + std::to_string(a.reps) +
                          " --threads " + std::to_string(threads);
  double secs = -1;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char line[512];
    while (std::fgets(line, sizeof line, p)) {
      std::string s(line);
      if (s.rfind("peer_seconds ", 0) == 0) secs = std::stod(s.substr(13));
      else std::cout << "    peer: " << s;
    }
    pclose(p);
  }
  std::filesystem::remove_all(dir);
  return secs;
}

// One timed problem of the serving comparisons: a generated case, validated and planned once (a
// cpu ExecPlan, as DecodePlan keeps), run `calls` times per timing.
struct ServingRun {
  std::string label;
  std::unique_ptr<Case> c;
  Problem problem;
  Plan plan;
  cpu::ExecPlan ep;
  std::vector<float> out, lse;
  int calls = 1;
  std::vector<double> seconds;
  double seconds_median() const { return median(seconds); }
  double bytes() const { return static_cast<double>(c->kv_bytes_read()) * calls; }
};

std::unique_ptr<ServingRun> serving_run(std::string label, const CaseSpec& spec, int threads, int calls = 1,
                                        KvLayout layout = KvLayout::kNHD) {
  auto r = std::make_unique<ServingRun>();
  r->label = std::move(label);
  r->calls = calls;
  r->c = std::make_unique<Case>(generate_case(spec, 1));
  if (layout == KvLayout::kHND) restore_hnd(*r->c);
  Options o;
  o.kv_layout = r->c->kv_layout;
  o.scale = r->c->scale;
  if (spec.k_scale != 0) o.k_scale = spec.k_scale;
  if (spec.v_scale != 0) o.v_scale = spec.v_scale;
  r->out.assign(r->c->out_elements(), 0.0f);
  r->lse.assign(r->c->lse_elements(), 0.0f);
  r->problem = validate(r->c->inputs(), o, r->c->output_view(r->out.data(), r->lse.data()));
  r->plan = make_plan(r->problem.shape, r->problem.variant.scale);
  cpu::prepare(r->ep, r->problem, r->plan, threads, cpu::isa_for(r->problem, r->plan));
  return r;
}

// Interleaved rounds (one warm-up each): a neighbour's burst hits one round, not one side.
void time_interleaved(const std::vector<ServingRun*>& runs, int reps) {
  auto once = [](ServingRun& r) {
    const auto t0 = Clock::now();
    for (int k = 0; k < r.calls; ++k) cpu::execute(r.ep, r.problem, r.plan, Results{r.out.data(), r.lse.data()});
    return seconds_since(t0);
  };
  for (ServingRun* r : runs) once(*r);
  for (int i = 0; i < reps; ++i)
    for (ServingRun* r : runs) r->seconds.push_back(once(*r));
}

void print_run(const ServingRun& r) {
  const double t = r.seconds_median();
  std::printf("  %-34s %9.2f ms  KV %7.1f MB read  %6.2f GB/s  (%s kernels, median of %zu)\n", r.label.c_str(), t * 1e3,
              r.bytes() / 1e6, r.bytes() / t / 1e9, std::string(cpu::isa_name(r.ep.isa)).c_str(), r.seconds.size());
}

int serving_main(const Args& a, int threads) {
  std::printf("mixpa_bench --serving: SPEC §6 shapes through the cpu executor, %d threads, median of %d interleaved runs\n",
              threads, a.reps);
  for (cpu::TileClass tile : cpu::kTileClasses)
    std::printf("auto for %s tiles: %s\n", cpu::tile_class_name(tile), cpu::auto_choice(tile).reason.c_str());
  std::printf("(a shared machine is noisy: only the same-run ratios mean much)\n\n");
  // 1. An e4m3 cache next to bf16: half the bytes.
  for (const char* name : {"Case1", "Decode32k"}) {
    CaseSpec bf = find_case(name), f8 = bf;
    f8.kv_dtype = DType::kF8E4M3;
    f8.k_scale = 1.0 / 64;  // stored values span the e4m3 range; dequantised they keep the case's
    f8.v_scale = 1.0 / 128;
    auto x = serving_run(std::string(name) + " bf16 cache", bf, threads);
    auto y = serving_run(std::string(name) + " e4m3 cache", f8, threads);
    time_interleaved({x.get(), y.get()}, a.reps);
    std::printf("%s, F8_E4M3 cache next to BF16:\n", name);
    print_run(*x);
    print_run(*y);
    std::printf("  => e4m3 / bf16 time %.3f: e4m3 is %.2fx faster (goal >= 1.7x where memory-bound)\n\n",
                y->seconds_median() / x->seconds_median(), x->seconds_median() / y->seconds_median());
  }
  // 2. Multi-token decode: q_len 4 in one call (16 rows per kv head share every page read) next to
  // 4 calls of q_len 1 over the same cache.
  {
    CaseSpec one = find_case("Decode32k"), four = one;
    four.q_len = 4;
    auto x = serving_run("Decode32k q_len 1, 4 calls", one, threads, 4);
    auto y = serving_run("Decode32k q_len 4, 1 call", four, threads);
    time_interleaved({x.get(), y.get()}, a.reps);
    std::printf("Decode32k (GQA 32/8), q_len 4 in one call next to 4 separate q_len-1 calls:\n");
    print_run(*x);
    print_run(*y);
    std::printf("  => 4 x q_len 1 / q_len 4 = %.2fx (goal >= 3x cheaper)\n\n", x->seconds_median() / y->seconds_median());
  }
  // 3. The same cache stored HND (each kv head's page rows contiguous) next to NHD (a kv head's
  // rows num_kv_heads * head_dim elements apart).
  {
    const CaseSpec spec = find_case("Decode32k");
    auto x = serving_run("Decode32k NHD", spec, threads);
    auto y = serving_run("Decode32k HND", spec, threads, 1, KvLayout::kHND);
    time_interleaved({x.get(), y.get()}, a.reps);
    std::printf("Decode32k, kv_layout HND next to NHD:\n");
    print_run(*x);
    print_run(*y);
    std::printf("  => NHD / HND time %.2f\n\n", x->seconds_median() / y->seconds_median());
  }
  // 4. One query row per kv head (MHA, 8/8 heads) next to GQA 32/8 over the same KV: the
  // narrow tiles' idle rows.
  {
    const CaseSpec gqa = find_case("Decode32k");
    CaseSpec mha = gqa;
    mha.num_heads = mha.num_kv_heads;
    auto x = serving_run("Decode32k GQA 32/8", gqa, threads);
    auto y = serving_run("Decode32k MHA 8/8", mha, threads);
    time_interleaved({x.get(), y.get()}, a.reps);
    std::printf("Decode32k, 1 query row per kv head (MHA) next to 4 (GQA), the same KV:\n");
    print_run(*x);
    print_run(*y);
    std::printf("  => GQA / MHA time %.2f (the same bytes; MHA has a quarter of the FLOPs)\n\n",
                x->seconds_median() / y->seconds_median());
  }
  // 5. The general paths next to their fast neighbours, per byte read.
  struct Pair {
    const char* what;
    std::int64_t head_dim, block_size;
  };
  for (const Pair& pair : {Pair{"head_dim 96 (general path) next to 128", 96, 64}, Pair{"block_size 1 next to 16", 128, 1}}) {
    CaseSpec fast = find_case("Decode32k"), general = fast;
    if (pair.block_size == 1) fast.block_size = 16;
    general.head_dim = pair.head_dim;
    general.block_size = pair.block_size;
    general.scale = 1.0 / std::sqrt(static_cast<double>(pair.head_dim));
    auto x = serving_run("Decode32k hd " + std::to_string(fast.head_dim) + " bs " + std::to_string(fast.block_size),
                         fast, threads);
    auto y = serving_run("Decode32k hd " + std::to_string(general.head_dim) + " bs " +
                             std::to_string(general.block_size),
                         general, threads);
    time_interleaved({x.get(), y.get()}, a.reps);
    std::printf("Decode32k, %s:\n", pair.what);
    print_run(*x);
    print_run(*y);
    const double per_byte = (y->bytes() / y->seconds_median()) / (x->bytes() / x->seconds_median());
    std::printf("  => bytes/s of the general shape / the fast one = %.2f (goal >= 0.5)\n\n", per_byte);
  }
  return 0;
}

int bench_main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  const int threads = a.threads > 0 ? a.threads : hardware_threads();
  if (a.serving) return serving_main(a, threads);
  const bool cpu_exec = a.executor == "cpu" || a.executor == "auto";
  std::vector<std::string> names = a.isas;
  if (names.empty()) {
    names.push_back("auto");
    if (cpu_exec)
      for (cpu::Isa isa : cpu::supported_isas()) names.emplace_back(cpu::isa_name(isa));
  }
  std::cout << "mixpa_bench: executor " << a.executor << ", " << threads << " threads, median of " << a.reps
            << " runs per variant, variants interleaved\n";
  // The roofline's compute term uses the fastest dot-product instruction this CPU has (AMX
  // included where the amx flavour runs), at the best rate this run has seen: the peak is
  // measured at the start and again before and after each case (a neighbour on a shared
  // machine can hold a single measurement down by a quarter, which would make it lenient).
  const bool amx = cpu_exec && cpu::isa_supported(cpu::Isa::kAmx);
  auto measure_peak = [&] {
    Peak best = measure_dot_peak(threads);
    if (amx) {
      const Peak tiles = measure_amx_peak(threads);
      if (tiles.gflops > best.gflops) best = tiles;
    }
    return best;
  };
  Peak peak = measure_peak();
  const std::int64_t llc = last_level_cache_bytes();
  std::cout << "machine: peak " << peak.gflops << " GFLOP/s (" << peak.instruction << ", "
            << (peak.instruction.find("AMX") != std::string::npos ? "4 tiles" : peak.instruction.find("ymm") != std::string::npos ? "12 chains" : "16 chains") << " x " << threads
            << " threads); last-level cache " << llc / (1 << 20) << " MiB\n";
  if (cpu_exec) {
    std::string flavours;
    for (cpu::Isa isa : cpu::supported_isas()) flavours += (flavours.empty() ? "" : ", ") + std::string(cpu::isa_name(isa));
    std::cout << "cpu flavours this CPU runs: " << flavours << "\n";
    for (cpu::TileClass tile : cpu::kTileClasses)
      std::cout << "auto for " << cpu::tile_class_name(tile) << " tiles: " << cpu::auto_choice(tile).reason << '\n';
  }
  std::cout << "roofline compute term uses " << peak.instruction << " at the best peak seen so far in this run\n\n";
  std::map<std::string, double> full_context_ms;  // auto's time of each case run without a window
  for (const std::string& token : a.cases) {
    const BenchCase bc = parse_case(token);
    CaseSpec spec = find_case(bc.base);
    spec.window_left = bc.window_left;
    const std::string name = bc.label();
    spec.name = name;
    const Case c = generate_case(spec, 1);  // the same data as the case without its window
    const std::int64_t tokens = visible_token_count(c);
    const double bytes = static_cast<double>(tokens * c.spec.num_kv_heads * c.spec.head_dim * 2 /*bytes*/ * 2 /*K, V*/);
    const double flops = 4.0 * static_cast<double>(tokens) * c.spec.num_heads * c.spec.head_dim;
    const double kv_total = 2.0 * static_cast<double>(c.key_cache.size() * sizeof(bf16));
    const double kv_huge = huge_page_bytes(c.key_cache.data(), c.key_cache.size() * sizeof(bf16)) +
                           huge_page_bytes(c.value_cache.data(), c.value_cache.size() * sizeof(bf16));
    std::string cold_note;
    const std::vector<std::unique_ptr<Case>> extra = kv_copies(c, llc, a.max_copy_mib * (1 << 20), cold_note);
    std::vector<const Case*> copies{&c};
    for (const auto& e : extra) copies.push_back(e.get());
    if (kv_huge >= 0)
      std::printf("%-10s  KV cache on 2 MiB pages: %.0f%% of %.0f MiB (include/mixpa/memory.h); %s\n", name.c_str(),
                  100.0 * kv_huge / kv_total, kv_total / (1 << 20), cold_note.c_str());
    Options o;
    c.apply_variant(o);
    o.scale = c.scale;
    o.executor = a.executor;
    o.num_threads = a.threads;
    std::vector<Variant> variants;
    for (const std::string& v : names) {
      Variant var;
      var.name = v;
      var.plan.emplace(make_plan_for(c, o, v));
      var.isa = var.plan->kernels().empty() ? std::string(var.plan->executor()) : var.plan->kernels();
      variants.push_back(std::move(var));
    }
    std::vector<float> out(c.out_elements()), auto_out;
    const OutputView view{out.data(), {c.spec.batch, c.spec.num_heads, c.spec.head_dim}};
    const double bw_before = measure_kv_read_bandwidth(copies, threads, std::max<int>(5, static_cast<int>(copies.size())));
    const Peak peak_before = measure_peak();
    // Warm-up (one call each), then interleaved rounds; each call reads the next copy.
    std::size_t next_copy = 0;
    auto one_call = [&](Variant& v) {
      const Case& kv = *copies[next_copy++ % copies.size()];
      const auto t0 = Clock::now();
      v.plan->run(layer_of(kv), view);
      return seconds_since(t0);
    };
    for (Variant& v : variants) {
      const double first = one_call(v);
      // A slow flavour (scalar) gets fewer rounds so the run stays short.
      v.seconds.reserve(a.reps);
      if (first > 1.0) v.seconds.push_back(first);
    }
    for (int r = 0; r < a.reps; ++r)
      for (Variant& v : variants) {
        if (static_cast<int>(v.seconds.size()) >= a.reps || (!v.seconds.empty() && v.seconds[0] > 1.0 && r >= 2)) continue;
        v.seconds.push_back(one_call(v));
        if (v.name == "auto" && r == 0) auto_out = out;
      }
    const Peak peak_after = measure_peak();
    const double bw_after = measure_kv_read_bandwidth(copies, threads, std::max<int>(5, static_cast<int>(copies.size())));
    const double bw = std::max(bw_before, bw_after);  // the better of the two: the stricter roofline
    for (const Peak& p : {peak_before, peak_after})
      if (p.gflops > peak.gflops) peak = p;
    const double roof = std::max(bytes / (bw * 1e9), flops / (peak.gflops * 1e9));
    std::printf("%-10s  read bw %5.1f/%5.1f GB/s (same copies)  peak %4.0f/%4.0f GFLOP/s  roofline %7.2f ms (%s)\n",
                name.c_str(), bw_before, bw_after, peak_before.gflops, peak_after.gflops, roof * 1e3,
                bytes / (bw * 1e9) >= flops / (peak.gflops * 1e9) ? "memory" : "compute");
    double best = 1e30, auto_t = -1;
    std::string best_name;
    for (const Variant& v : variants) {
      const double t = median(v.seconds);
      const std::string label = v.name == "auto" ? "auto (" + v.isa + ")" : v.name;
      std::printf("%-10s  %-18s %9.2f ms  KV %6.1f GB/s  %7.1f GFLOP/s  time/roofline %5.2fx  (median of %zu)\n",
                  name.c_str(), label.c_str(), t * 1e3, bytes / t / 1e9, flops / t / 1e9, t / roof, v.seconds.size());
      if (v.name == "auto") auto_t = t;
      else if (t < best) best = t, best_name = v.name;
    }
    if (auto_t > 0 && best < 1e30)
      std::printf("%-10s  auto / best flavour = %.3f (best: %s, auto ran %s)\n", name.c_str(), auto_t / best,
                  best_name.c_str(), variants[0].isa.c_str());
    const double mine_t = auto_t > 0 ? auto_t : best;
    if (bc.window_left < 0) {
      full_context_ms[bc.base] = mine_t * 1e3;
    } else if (const auto full = full_context_ms.find(bc.base); full != full_context_ms.end()) {
      std::printf("%-10s  window_left %lld / full context (%s, same run): %.2f / %.2f ms = %.3fx (reads %lld of %lld"
                  " tokens)\n", name.c_str(), static_cast<long long>(bc.window_left), bc.base.c_str(), mine_t * 1e3,
                  full->second, mine_t * 1e3 / full->second, static_cast<long long>(tokens),
                  static_cast<long long>(std::accumulate(c.context_lens.begin(), c.context_lens.end(), std::int64_t{0})));
    }
    if (cpu_exec) print_fixed_cost(c, o, threads);
    std::fflush(stdout);
    if (!a.peer || bc.window_left >= 0) {  // the torch peer computes full-context attention only
      if (a.peer) std::printf("%-10s  torch peer skipped (it has no sliding window)\n", name.c_str());
      std::printf("\n");
      continue;
    }
    if (auto_out.empty()) auto_out = out;
    const double peer = time_peer(c, auto_out, a, threads);
    const double mine = auto_t > 0 ? auto_t : best;
    if (peer > 0)
      std::printf("%-10s  torch SDPA %8.2f ms   mixpa/torch %.3f  (torch/mixpa %.1fx; torch on the case's own buffers)\n\n",
                  name.c_str(), peer * 1e3, mine / peer, peer / mine);
    else
      std::printf("%-10s  torch peer skipped (no torch for %s, or it failed)\n\n", name.c_str(), a.python.c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace mixpa::bench

int main(int argc, char** argv) {
  try {
    return mixpa::bench::bench_main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << e.what() << '\n';
    return 2;
  }
}
