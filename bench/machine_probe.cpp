// Bandwidth and peak probes. The SIMD loops are compiled for their targets with function
// attributes and chosen at run time, like the cpu executor's kernels.
#include "machine_probe.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace mixpa::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Sums 64-byte lines of [p, p + bytes) with independent accumulators (reads only).
__attribute__((target("avx512f"))) std::uint64_t read_avx512(const char* p, std::int64_t bytes) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  std::int64_t i = 0;
  for (; i + 256 <= bytes; i += 256) {
    a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(p + i));
    a1 = _mm512_xor_si512(a1, _mm512_loadu_si512(p + i + 64));
    a2 = _mm512_xor_si512(a2, _mm512_loadu_si512(p + i + 128));
    a3 = _mm512_xor_si512(a3, _mm512_loadu_si512(p + i + 192));
  }
  for (; i + 64 <= bytes; i += 64) a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(p + i));
  // Folded by xor in unsigned lanes: _mm512_reduce_add_epi64 adds signed 64-bit lanes, which
  // overflows (undefined behaviour, UBSan's finding on an AVX-512 machine) for arbitrary data.
  alignas(64) std::uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)));
  std::uint64_t r = 0;
  for (std::uint64_t x : lanes) r ^= x;
  return r;
}

std::uint64_t read_plain(const char* p, std::int64_t bytes) {
  std::uint64_t acc[8] = {};
  for (std::int64_t i = 0; i + 64 <= bytes; i += 64)
    for (int k = 0; k < 8; ++k) acc[k] ^= *reinterpret_cast<const std::uint64_t*>(p + i + 8 * k);
  std::uint64_t r = 0;
  for (auto a : acc) r ^= a;
  return r;
}

// Runs fn(item) for items [0, n) on `threads` threads (static interleave), returns seconds.
template <class Fn>
double timed_parallel(std::int64_t n, int threads, Fn&& fn) {
  std::vector<std::thread> pool;
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  Clock::time_point start;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      ++ready;
      while (!go.load()) {
      }
      for (std::int64_t i = t; i < n; i += threads) fn(i);
    });
  while (ready.load() < threads) {
  }
  start = Clock::now();
  go = true;
  for (auto& th : pool) th.join();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

double measure_kv_read_bandwidth(const Case& c, int threads, int reps) {
  const Case* one[] = {&c};
  return measure_kv_read_bandwidth(one, threads, reps);
}

std::int64_t last_level_cache_bytes() {
  std::int64_t best = 0;
  int best_level = 0;
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream level_file(dir + "level"), size_file(dir + "size"), type_file(dir + "type");
    if (!level_file || !size_file) break;
    int level = 0;
    std::string size, type;
    level_file >> level;
    size_file >> size;
    type_file >> type;
    if (type == "Instruction" || size.empty()) continue;
    std::int64_t bytes = std::strtoll(size.c_str(), nullptr, 10);
    const char unit = size.back();
    if (unit == 'K') bytes <<= 10;
    else if (unit == 'M') bytes <<= 20;
    else if (unit == 'G') bytes <<= 30;
    if (level > best_level || (level == best_level && bytes > best)) best = bytes, best_level = level;
  }
  if (best > 0) return best;
#if defined(_SC_LEVEL3_CACHE_SIZE)
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l3 > 0) return l3;
#endif
  return 0;
}

double measure_kv_read_bandwidth(std::span<const Case* const> copies, int threads, int reps) {
  const Case& c = *copies[0];
  const std::int64_t bs = c.spec.block_size, row = c.spec.num_kv_heads * c.spec.head_dim;
  const bool wide = __builtin_cpu_supports("avx512f");
  // Work items are pages, not requests, so a batch-1 case (Decode32k) reads on every thread too.
  struct PageRead {
    std::int64_t page, bytes;
  };
  std::vector<PageRead> reads;
  for (std::int64_t b = 0; b < c.spec.batch; ++b) {
    const std::int64_t len = c.context_lens[b];
    for (std::int64_t j = 0; j * bs < len; ++j)
      reads.push_back({c.block_table[b * c.max_blocks_per_req + j], std::min(bs, len - j * bs) * row * 2});
  }
  std::atomic<std::uint64_t> sink{0};
  std::vector<double> gbps;
  for (int rep = 0; rep < reps; ++rep) {
    const Case& copy = *copies[static_cast<std::size_t>(rep) % copies.size()];
    const double s = timed_parallel(static_cast<std::int64_t>(reads.size()), threads, [&](std::int64_t i) {
      std::uint64_t acc = 0;
      for (const auto* cache : {copy.key_cache.data(), copy.value_cache.data()}) {
        const char* p = reinterpret_cast<const char*>(cache + reads[i].page * bs * row);
        acc ^= wide ? read_avx512(p, reads[i].bytes) : read_plain(p, reads[i].bytes);
      }
      sink ^= acc;
    });
    gbps.push_back(static_cast<double>(c.kv_bytes_read()) / s / 1e9);
  }
  return *std::max_element(gbps.begin(), gbps.end());  // the best pass: the strictest roofline
}

double huge_page_bytes(const void* p, std::size_t bytes) {
  std::ifstream smaps("/proc/self/smaps");
  if (!smaps) return -1;
  const auto lo = reinterpret_cast<std::uintptr_t>(p), hi = lo + bytes;
  std::uintptr_t start = 0, end = 0;
  double total = 0;
  for (std::string line; std::getline(smaps, line);) {
    unsigned long a = 0, b = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &a, &b) == 2 && line.find('-') < line.find(' ')) {
      start = a;
      end = b;
    } else if (line.rfind("AnonHugePages:", 0) == 0 && start < hi && end > lo) {
      const double kib = std::strtod(line.c_str() + 14, nullptr);
      const double overlap = static_cast<double>(std::min(end, hi) - std::max(start, lo));
      total += std::min(kib * 1024, overlap);
    }
  }
  return total;
}

namespace {

constexpr std::int64_t kPeakIters = 4'000'000;

// The probes below run C independent accumulator chains, acc = acc * a + b (or acc += a . b),
// and return the sum of every lane of every chain, so the compiler can drop none of them: a
// chain whose result is unused is dead code, and a probe that kept one chain would time its
// latency while counting C chains' FLOPs (an earlier ymm probe did, and read 2x the zmm rate).
// a and b are opaque to the compiler, so it can neither fold nor shorten the chains; with a = b
// = 1 every value stays an exact small integer, which tests/bench checks. C = 16 on zmm (32
// registers); 12 on ymm, whose 16 registers must also hold a and b: 16 ymm chains spilled two
// accumulators to the stack every step, and the store-forwarding round trip held the probe to
// ~1 FMA per cycle (Zen 3: 58 GFLOP/s per core, against 101 with 12 chains; a 4-cycle FMA on
// 2 pipes needs 8 chains in flight).
constexpr int kZmmChains = 16;
constexpr int kYmmChains = 12;

__attribute__((target("avx512f,avx512bf16"))) double probe_bf16_zmm(std::int64_t iters) {
  __m512 acc[kZmmChains];
  for (int k = 0; k < kZmmChains; ++k) acc[k] = _mm512_set1_ps(static_cast<float>(k));
  __m512i a = _mm512_set1_epi32(0x3f803f80), b = a;  // bf16 pairs (1, 1): each step adds 2
  asm volatile("" : "+v"(a), "+v"(b));
  for (std::int64_t i = 0; i < iters; ++i)
#pragma GCC unroll 16
    for (int k = 0; k < kZmmChains; ++k) acc[k] = _mm512_dpbf16_ps(acc[k], (__m512bh)a, (__m512bh)b);
  double sum = 0;
  for (int k = 0; k < kZmmChains; ++k) sum += static_cast<double>(_mm512_reduce_add_ps(acc[k]));
  return sum;
}

__attribute__((target("avx2,fma"))) double probe_fma_ymm(std::int64_t iters) {
  __m256 acc[kYmmChains];
  for (int k = 0; k < kYmmChains; ++k) acc[k] = _mm256_set1_ps(static_cast<float>(k));
  __m256 a = _mm256_set1_ps(1.0f), b = a;
  asm volatile("" : "+x"(a), "+x"(b));
  for (std::int64_t i = 0; i < iters; ++i)
#pragma GCC unroll 16
    for (int k = 0; k < kYmmChains; ++k) acc[k] = _mm256_fmadd_ps(acc[k], a, b);
  double sum = 0;
  for (int k = 0; k < kYmmChains; ++k) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc[k]);
    for (float x : lanes) sum += static_cast<double>(x);
  }
  return sum;
}

__attribute__((target("avx512f"))) double probe_fma_zmm(std::int64_t iters) {
  __m512 acc[kZmmChains];
  for (int k = 0; k < kZmmChains; ++k) acc[k] = _mm512_set1_ps(static_cast<float>(k));
  __m512 a = _mm512_set1_ps(1.0f), b = a;
  asm volatile("" : "+v"(a), "+v"(b));
  for (std::int64_t i = 0; i < iters; ++i)
#pragma GCC unroll 16
    for (int k = 0; k < kZmmChains; ++k) acc[k] = _mm512_fmadd_ps(acc[k], a, b);
  double sum = 0;
  for (int k = 0; k < kZmmChains; ++k) sum += static_cast<double>(_mm512_reduce_add_ps(acc[k]));
  return sum;
}

struct Probe {
  double (*run)(std::int64_t iters);
  double flop_per_instr;
  int chains;
  const char* name;
};

std::vector<Probe> dot_probes() {
  std::vector<Probe> probes;
  if (__builtin_cpu_supports("avx512bf16")) probes.push_back({&probe_bf16_zmm, 64, kZmmChains, "vdpbf16ps zmm"});
  if (__builtin_cpu_supports("avx512f")) probes.push_back({&probe_fma_zmm, 32, kZmmChains, "vfmadd231ps zmm"});
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) probes.push_back({&probe_fma_ymm, 16, kYmmChains, "vfmadd231ps ymm"});
  return probes;
}

struct alignas(64) AmxConfig {
  std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  std::uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

constexpr std::int64_t kAmxIters = 400'000;

// Four independent 16x16 fp32 accumulator tiles (one tdpbf16ps = 16*16*32 MACs).
__attribute__((target("amx-tile,amx-bf16"))) void peak_amx_thread() {
  const AmxConfig config;
  _tile_loadconfig(&config);
  alignas(64) std::uint16_t ones[16 * 32];
  for (auto& x : ones) x = 0x3f80;
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (std::int64_t i = 0; i < kAmxIters; ++i) {
    _tile_dpbf16ps(0, 4, 5);
    _tile_dpbf16ps(1, 4, 5);
    _tile_dpbf16ps(2, 4, 5);
    _tile_dpbf16ps(3, 4, 5);
  }
  alignas(64) float out[16 * 16];
  _tile_stored(0, out, 64);
  _tile_release();
}

}  // namespace

Peak measure_amx_peak(int threads) {
  double best = 1e30;
  for (int trial = 0; trial < 7; ++trial)
    best = std::min(best, timed_parallel(threads, threads, [&](std::int64_t) { peak_amx_thread(); }));
  return {4.0 * 16 * 16 * 32 * 2 * static_cast<double>(kAmxIters) * threads / best / 1e9, "tdpbf16ps (AMX)"};
}

Peak measure_dot_peak(int threads) {
  // The fastest dot-product instruction this CPU has: vdpbf16ps, else fp32 FMA on zmm or ymm
  // (whichever is faster: on some cores a zmm FMA issues at half the ymm rate).
  Peak best{0, "none (no SIMD dot product found)"};
  std::atomic<double> sink{0};
  for (const Probe& probe : dot_probes()) {
    // Best of several short trials: the machine is shared, and the peak is what it can do.
    double secs = 1e30;
    for (int trial = 0; trial < 7; ++trial)
      secs = std::min(secs, timed_parallel(threads, threads, [&](std::int64_t) { sink = probe.run(kPeakIters); }));
    const double gflops = probe.flop_per_instr * probe.chains * static_cast<double>(kPeakIters) * threads / secs / 1e9;
    if (gflops > best.gflops) best = {gflops, probe.name};
  }
  return best;
}

std::vector<ProbeCheck> run_dot_probes_once(std::int64_t iters) {
  std::vector<ProbeCheck> out;
  for (const Probe& probe : dot_probes()) out.push_back({probe.name, probe.flop_per_instr, probe.chains, probe.run(iters)});
  return out;
}

}  // namespace mixpa::bench
