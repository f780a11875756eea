// Run-time choice of the kernel flavour: cpuid (and the OS, for AMX) decides what this CPU can
// run; among those, `auto` takes the one that measured fastest here (calibrate(), once per
// process per tile class); MIXPA_CPU_ISA forces one (benchmarks, debugging).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <string>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#include "core/cases.h"
#include "cpu/calibration_cache.h"
#include "core/validate.h"
#include "cpu/chunk_kernel.h"
#include "cpu/cpu_executor.h"
#include "cpu/dispatch.h"
#include "mixpa/error.h"

namespace mixpa::cpu {
namespace {

#if defined(MIXPA_CPU_HAS_AMX)
// AMX needs cpuid AMX-TILE + AMX-BF16 and, on Linux, a one-time permission for the tile data
// state (arch_prctl ARCH_REQ_XCOMP_PERM); without it the first tile instruction faults.
bool amx_permitted() {
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = (d >> 24) & 1u, bf16 = (d >> 22) & 1u;
    if (!tile || !bf16) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}
#endif

}  // namespace

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx512Bf16: return "avx512bf16";
    case Isa::kAmx: return "amx";
  }
  return "?";
}

Isa parse_isa(std::string_view name) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16, Isa::kAmx})
    if (isa_name(isa) == name) return isa;
  throw Error("MIXPA_CPU_ISA: unknown instruction set '" + std::string(name) + "', expected scalar, avx2, avx512, avx512bf16 or amx");
}

bool isa_supported(Isa isa) {
  if (isa == Isa::kScalar) return true;
#if defined(__x86_64__)
  __builtin_cpu_init();
#if defined(MIXPA_CPU_HAS_AVX2)
  if (isa == Isa::kAvx2)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
#if defined(MIXPA_CPU_HAS_AVX512)
  if (isa == Isa::kAvx512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
#if defined(MIXPA_CPU_HAS_AVX512BF16)
  if (isa == Isa::kAvx512Bf16)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#endif
#if defined(MIXPA_CPU_HAS_AMX)
  if (isa == Isa::kAmx) return isa_supported(Isa::kAvx512Bf16) && amx_permitted();
#endif
#endif
  return false;  // not built for this flavour, or not an x86-64 CPU
}

Isa default_isa() { return auto_choice(TileClass::kWide).isa; }

const char* tile_class_name(TileClass c) {
  switch (c) {
    case TileClass::kNarrow: return "4-row";
    case TileClass::kWide: return "16-row";
    case TileClass::kTall: return "64-row";
  }
  return "?";
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kAmx, Isa::kAvx512Bf16, Isa::kAvx512, Isa::kAvx2, Isa::kScalar})
    if (isa_supported(isa)) isas.push_back(isa);
  return isas;
}

namespace {

std::string rate_string(double gflops) {
  char buf[32];
  std::snprintf(buf, sizeof buf, gflops >= 10 ? "%.0f" : "%.2g", gflops);
  return buf;
}

}  // namespace

FlavourChoice choose_flavour(std::span<const FlavourRate> rates, TileClass tile) {
  FlavourChoice choice;
  choice.rates.assign(rates.begin(), rates.end());
  const FlavourRate* best = nullptr;
  for (const FlavourRate& r : rates)
    if (std::isfinite(r.gflops) && r.gflops > 0 && (best == nullptr || r.gflops > best->gflops)) best = &r;
  if (best == nullptr) {
    choice.isa = Isa::kScalar;
    choice.reason = "scalar: no flavour measured a rate";
    return choice;
  }
  choice.isa = best->isa;
  choice.reason = std::string(isa_name(best->isa)) + ": " + rate_string(best->gflops) + " GFLOP/s on " +
                  tile_class_name(tile) + " tiles";
  std::string others;
  for (const FlavourRate& r : rates) {
    if (&r == best || !(std::isfinite(r.gflops) && r.gflops > 0)) continue;
    others += (others.empty() ? " > " : ", ") + std::string(isa_name(r.isa)) + " " + rate_string(r.gflops);
  }
  choice.reason += others + " (measured, KV read from memory)";
  return choice;
}

namespace {

// The calibration problems, timed from memory as a decode step reads its KV (each layer reads
// other pages): the K and V lines are flushed from every cache level before each timed run, so
// the rates include how well a flavour's loads and prefetches overlap memory with its FMAs (hot
// rates rank the flavours otherwise: on a Zen 4, avx512bf16's 4-row tiles are the fastest hot
// and the slowest from memory, and the Decode32k bench agrees with the latter). One thread,
// ~17 MFLOP each: wide, 16-row tiles of 128-token pages (Case1's shape, 1 MiB of KV); narrow,
// 4-row GQA tiles of 64-token pages over 4 kv heads (Decode32k's shape, 4 MiB of KV, enough
// requests that a group kernel runs as it does there); tall, 64-row tiles of 64-token pages
// (Case2's shape, 256 KiB). Contexts of 512-1024 tokens, so the start of a chunk (the first
// page's latency) weighs as little as in a long decode.
struct CalibrationShape {
  CaseSpec spec;             // one page per request: what generate_case fills (cheap)
  std::int64_t context = 0;  // tokens per request in the timed problem
};

CalibrationShape calibration_shape(TileClass tile) {
  CalibrationShape c;
  CaseSpec& s = c.spec;
  s.name = std::string("calibration_") + tile_class_name(tile);
  if (tile == TileClass::kWide) {
    s.batch = 2, s.num_heads = 16, s.num_kv_heads = 1, s.head_dim = 128, s.block_size = 128;
    c.context = 1024;
  } else if (tile == TileClass::kTall) {
    s.batch = 1, s.num_heads = 64, s.num_kv_heads = 1, s.head_dim = 128, s.block_size = 64;
    c.context = 512;
  } else {
    s.batch = 4, s.num_heads = 16, s.num_kv_heads = 4, s.head_dim = 128, s.block_size = 64;
    c.context = 256;
  }
  s.context_lens = {static_cast<std::int32_t>(s.block_size)};
  s.max_model_len = s.block_size;
  s.scale = 0.088;
  return c;
}

// The timed problem's caches: every request's pages its own (distinct memory), filled by
// repeating the generated pages (the values do not change the time; generating 5 MiB would
// cost more than the whole calibration).
struct CalibrationCaches {
  KvVector key, value;
  std::vector<std::int32_t> block_table, context_lens;
  std::int64_t pages = 0, pages_per_request = 0;
};

CalibrationCaches calibration_caches(const Case& c, std::int64_t context) {
  CalibrationCaches k;
  const CaseSpec& s = c.spec;
  const std::int64_t page = s.block_size * s.num_kv_heads * s.head_dim;
  k.pages_per_request = context / s.block_size;
  k.pages = s.batch * k.pages_per_request;
  k.key.resize(static_cast<std::size_t>(k.pages * page));
  k.value.resize(k.key.size());
  for (std::int64_t p = 0; p < k.pages; ++p) {
    const std::int64_t from = (p % c.num_blocks) * page;
    std::copy_n(c.key_cache.begin() + from, page, k.key.begin() + p * page);
    std::copy_n(c.value_cache.begin() + from, page, k.value.begin() + p * page);
    k.block_table.push_back(static_cast<std::int32_t>(p));
  }
  k.context_lens.assign(static_cast<std::size_t>(s.batch), static_cast<std::int32_t>(context));
  return k;
}

// Evicts [p, p + bytes) from every cache level (clflush: SSE2, every x86-64).
void flush_from_caches([[maybe_unused]] const void* p, [[maybe_unused]] std::int64_t bytes) {
#if defined(__x86_64__)
  const char* c = static_cast<const char*>(p);
  for (std::int64_t o = 0; o < bytes; o += 64) _mm_clflush(c + o);
  _mm_mfence();
#endif
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::vector<FlavourRate> calibrate(std::span<const Isa> isas, TileClass tile, int rounds) {
  const CalibrationShape shape = calibration_shape(tile);
  const Case c = generate_case(shape.spec, 17);
  const CalibrationCaches kv = calibration_caches(c, shape.context);
  const CaseSpec& s = c.spec;
  Inputs in = c.tensor_inputs();
  in.key_cache = TensorView::contiguous(kv.key.data(), DType::kBF16, {kv.pages, s.block_size, s.num_kv_heads, s.head_dim});
  in.value_cache = TensorView::contiguous(kv.value.data(), DType::kBF16, {kv.pages, s.block_size, s.num_kv_heads, s.head_dim});
  in.block_table = TensorView::contiguous(kv.block_table.data(), DType::kI32, {s.batch, kv.pages_per_request});
  in.context_lens = TensorView::contiguous(kv.context_lens.data(), DType::kI32, {s.batch});
  Options options;
  options.scale = c.scale;
  options.num_threads = 1;
  std::vector<float> out(static_cast<std::size_t>(c.out_elements()));
  const Problem pr = validate(in, options, OutputView{out.data(), {s.batch, s.num_heads, s.head_dim}});
  const Plan plan = make_plan(pr.shape, pr.variant.scale);
  double flops = 0;
  for (std::int32_t len : kv.context_lens) flops += 4.0 * len * s.num_heads * s.head_dim;
  std::vector<ExecPlan> plans(isas.size());
  for (std::size_t i = 0; i < isas.size(); ++i) {
    prepare(plans[i], pr, plan, 1, isas[i]);
    execute(plans[i], pr, plan, out.data());  // warm-up: scratch, caches
  }
  const std::int64_t cache_bytes = static_cast<std::int64_t>(kv.key.size() * sizeof(bf16));
  std::vector<double> best(isas.size(), 1e30);
  // Interleaved rounds, best round per flavour: a neighbour's burst hits one round, not one flavour.
  // Each timed run follows an untimed one of the same flavour (both from memory): a decode step
  // runs one flavour back to back, so its units are awake and its clock settled. Timed right
  // after another flavour, AMX pays its tile unit's wake-up: on a Granite Rapids VM, 16-row
  // tiles measured amx 88-112 GFLOP/s cold against 146-153 warm (avx512 ~104 either way), and
  // only the warm ranking matched the cases (Case1: amx 1.39x faster than avx512).
  for (int round = 0; round < std::max(1, rounds); ++round)
    for (std::size_t i = 0; i < isas.size(); ++i) {
      flush_from_caches(kv.key.data(), cache_bytes);
      flush_from_caches(kv.value.data(), cache_bytes);
      execute(plans[i], pr, plan, out.data());
      flush_from_caches(kv.key.data(), cache_bytes);
      flush_from_caches(kv.value.data(), cache_bytes);
      const auto t0 = std::chrono::steady_clock::now();
      execute(plans[i], pr, plan, out.data());
      best[i] = std::min(best[i], seconds_since(t0));
    }
  std::vector<FlavourRate> rates;
  for (std::size_t i = 0; i < isas.size(); ++i) rates.push_back({isas[i], flops / best[i] / 1e9});
  return rates;
}

namespace {

// `reason` ends in ')': the cache file's part goes inside.
FlavourChoice noting(FlavourChoice c, const std::string& note) {
  if (!c.reason.empty() && c.reason.back() == ')') c.reason.insert(c.reason.size() - 1, "; " + note);
  return c;
}

bool all_positive(std::span<const FlavourRate> rates) {
  return std::all_of(rates.begin(), rates.end(), [](const FlavourRate& r) { return std::isfinite(r.gflops) && r.gflops > 0; });
}

// The rates of this machine's cache file when it has them (calibration_cache.h), else measured
// and recorded there. Just before writing, the file is read again: when another process recorded
// this class meanwhile, its rates are taken, so processes that start together agree.
FlavourChoice measured_or_cached(std::span<const Isa> simd, TileClass tile) {
  const std::string path = calibration_cache_path();
  const std::string key = machine_key(simd);
  if (!path.empty())
    if (const auto cached = find_rates(read_cache(path), key, tile, simd))
      return noting(choose_flavour(*cached, tile), "read from " + path);
  const std::vector<FlavourRate> rates = calibrate(simd, tile);
  if (path.empty() || !all_positive(rates)) return choose_flavour(rates, tile);
  const std::string text = read_cache(path);
  if (const auto cached = find_rates(text, key, tile, simd)) return noting(choose_flavour(*cached, tile), "read from " + path);
  if (!write_cache(path, with_rates(text, key, tile, rates))) return choose_flavour(rates, tile);
  return noting(choose_flavour(rates, tile), "saved in " + path);
}

FlavourChoice forced_or_measured(TileClass tile) {
  if (const char* env = std::getenv("MIXPA_CPU_ISA"); env != nullptr && *env != '\0') {
    const Isa isa = parse_isa(env);
    if (!isa_supported(isa)) throw Error("MIXPA_CPU_ISA: this CPU cannot run '" + std::string(env) + "'");
    return {isa, std::string(isa_name(isa)) + ": forced by MIXPA_CPU_ISA", {}};
  }
  std::vector<Isa> simd = supported_isas();
  std::erase(simd, Isa::kScalar);  // the portable fallback: run only where nothing else runs
  if (simd.empty()) return {Isa::kScalar, "scalar: this CPU runs no SIMD flavour of this build", {}};
  if (simd.size() == 1)
    return {simd[0], std::string(isa_name(simd[0])) + ": the only SIMD flavour this CPU runs", {}};
  return measured_or_cached(simd, tile);
}

}  // namespace

// MIXPA_CPU_ISA is read at each call (a getenv: tests and benchmarks set it between calls); the
// measurement is made once per process per tile class (a function-local static: thread-safe).
const FlavourChoice& auto_choice(TileClass tile) {
  thread_local FlavourChoice forced;
  if (const char* env = std::getenv("MIXPA_CPU_ISA"); env != nullptr && *env != '\0') {
    if (forced.reason.empty() || std::string_view(env) != isa_name(forced.isa)) forced = forced_or_measured(tile);
    return forced;
  }
  if (tile == TileClass::kNarrow) {
    static const FlavourChoice narrow = forced_or_measured(TileClass::kNarrow);
    return narrow;
  }
  if (tile == TileClass::kTall) {
    static const FlavourChoice tall = forced_or_measured(TileClass::kTall);
    return tall;
  }
  static const FlavourChoice wide = forced_or_measured(TileClass::kWide);
  return wide;
}

Isa auto_isa_for_rows(int rows) { return auto_choice(tile_class_of_rows(rows)).isa; }

namespace {

bool computes_everything(Isa isa) { return isa == Isa::kScalar || isa == Isa::kAvx2; }

// The head_dims and block sizes the SIMD kernels are instantiated for.
bool fast_dims(const Shape& s) {
  return (s.head_dim == 64 || s.head_dim == 128 || s.head_dim == 256) &&
         (s.block_size == 16 || s.block_size == 32 || s.block_size == 64 || s.block_size == 128);
}

bool origin_problem(const Problem& p) { return p.is_plain_bf16() && p.shape.q_len == 1 && fast_dims(p.shape); }

// avx512's kernels (wide tile, narrow kernels, group kernel) also read f16 / fp8 caches and f16
// queries, amx's fp8 caches (converted to bf16, exact); the wide tiles of avx512, avx512bf16 and
// amx compute q_len 1..16 (rows = (new token, head) pairs, per-row masks; a q_len > 1 tile never
// goes to a narrow kernel).
// The query and cache dtypes a SIMD flavour's kernels read.
bool reads_query(Isa isa, DType q) { return isa == Isa::kAvx512 || q == DType::kBF16; }
bool reads_cache(Isa isa, DType kv) {
  return isa == Isa::kAvx512 || kv == DType::kBF16 || (isa == Isa::kAmx && (kv == DType::kF8E4M3 || kv == DType::kF8E5M2));
}

bool computes(Isa isa, const Problem& p) {
  if (computes_everything(isa) || origin_problem(p)) return true;
  if (isa != Isa::kAvx512 && isa != Isa::kAvx512Bf16 && isa != Isa::kAmx) return false;
  return reads_query(isa, p.query_dtype) && reads_cache(isa, p.kv_dtype) && fast_dims(p.shape);
}

int tile_rows(const Problem& p, const Plan& plan) {
  return static_cast<int>(std::min<std::int64_t>(plan.q_tile, p.shape.rows_per_kv_head()));
}

// The flavour that runs what `isa` cannot: avx512 where this CPU runs it and it computes the
// problem, else avx2 where this CPU runs it, else scalar.
Isa fallback_isa(const Problem& p) {
  if (isa_supported(Isa::kAvx512) && computes(Isa::kAvx512, p)) return Isa::kAvx512;
  return isa_supported(Isa::kAvx2) ? Isa::kAvx2 : Isa::kScalar;
}

const char* scope_of(Isa isa) {
  if (isa == Isa::kAvx512) return "bf16 / f16 / fp8 caches, bf16 / f16 queries, q_len 1-16, head_dim 64/128/256, block_size 16-128";
  if (isa == Isa::kAmx) return "bf16 / fp8 caches, bf16 queries, q_len 1-16, head_dim 64/128/256, block_size 16-128";
  return "bf16 caches and queries, q_len 1-16, head_dim 64/128/256, block_size 16-128";
}

}  // namespace

std::string beyond_flavour(Isa isa, const Problem& p) {
  if (computes(isa, p)) return {};
  const Shape& s = p.shape;
  if (!reads_query(isa, p.query_dtype)) return "query dtype " + std::string(dtype_name(p.query_dtype));
  if (!reads_cache(isa, p.kv_dtype)) return std::string(dtype_name(p.kv_dtype)) + " caches";
  if (s.head_dim != 64 && s.head_dim != 128 && s.head_dim != 256) return "head_dim " + std::to_string(s.head_dim);
  return "block_size " + std::to_string(s.block_size);
}

bool flavour_computes(Isa isa, const Problem& p) { return computes(isa, p); }

Isa isa_for(const Problem& p, const Plan& plan) {
  const Isa isa = auto_isa_for_rows(tile_rows(p, plan));
  return flavour_computes(isa, p) ? isa : fallback_isa(p);
}

std::string kernels_reason(const Problem& p, const Plan& plan) {
  const FlavourChoice& choice = auto_choice(tile_class_of_rows(tile_rows(p, plan)));
  if (flavour_computes(choice.isa, p)) return choice.reason;
  return choice.reason + "; " + beyond_flavour(choice.isa, p) + ": " + std::string(isa_name(choice.isa)) +
         " computes only " + scope_of(choice.isa) + ", so " + std::string(isa_name(fallback_isa(p))) + " runs";
}

ChunkKernel chunk_kernel([[maybe_unused]] Isa isa) {
#if defined(MIXPA_CPU_HAS_AMX)
  if (isa == Isa::kAmx) return &attend_chunk_amx;
#endif
#if defined(MIXPA_CPU_HAS_AVX512BF16)
  if (isa == Isa::kAvx512Bf16) return &attend_chunk_avx512bf16;
#endif
#if defined(MIXPA_CPU_HAS_AVX512)
  if (isa == Isa::kAvx512) return &attend_chunk_avx512;
#endif
#if defined(MIXPA_CPU_HAS_AVX2)
  if (isa == Isa::kAvx2) return &attend_chunk_avx2;
#endif
  return &attend_chunk_scalar;
}

GroupKernel group_kernel([[maybe_unused]] Isa isa) {
#if defined(MIXPA_CPU_HAS_AVX512)
  if (isa == Isa::kAvx512) return &attend_group_avx512;
#endif
#if defined(MIXPA_CPU_HAS_AVX2)
  if (isa == Isa::kAvx2) return &attend_group_avx2;
#endif
  return nullptr;
}

}  // namespace mixpa::cpu
