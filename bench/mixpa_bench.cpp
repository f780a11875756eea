// mixpa_bench: times the cpu executor on the benchmark cases and judges each time against
// the machine measured in the same run (roofline = max(bytes / bandwidth, flops / peak)) and
// against PyTorch's CPU scaled_dot_product_attention on the same data (bench/peer_torch.py).
//
//   mixpa_bench [--cases Case1,Case2,SmallCase1,Decode32k] [--reps 7] [--threads 0]
//               [--executor cpu] [--no-peer] [--python python3]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "core/cases.h"
#include "core/parallel.h"
#include "cpu/chunk_kernel.h"
#include "machine_probe.h"
#include "mixpa/paged_attention.h"
#include "peer_dump.h"

namespace mixpa::bench {
namespace {

struct Args {
  std::vector<std::string> cases{"Case1", "Case2", "SmallCase1", "Decode32k"};
  int reps = 7;
  int threads = 0;
  std::string executor = "cpu";
  bool peer = true;
  std::string python = "python3";
  std::string script = MIXPA_BENCH_DIR "/peer_torch.py";
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
    else if (k == "--python") a.python = value();
    else throw Error("mixpa_bench: unknown option '" + k + "' (see the header of bench/mixpa_bench.cpp)");
  }
  return a;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median wall time (seconds) of run() over `reps` runs after one warm-up.
double time_mixpa(const Case& c, const Args& a, std::vector<float>& out) {
  Options o;
  o.scale = c.scale;
  o.executor = a.executor;
  o.num_threads = a.threads;
  out.assign(c.out_elements(), 0.0f);
  const OutputView view{out.data(), {c.spec.batch, c.spec.num_heads, c.spec.head_dim}};
  run(c.inputs(), o, view);
  std::vector<double> t;
  for (int r = 0; r < a.reps; ++r) {
    const auto s = std::chrono::steady_clock::now();
    run(c.inputs(), o, view);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count());
  }
  return median(t);
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

int bench_main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  const int threads = a.threads > 0 ? a.threads : hardware_threads();
  std::cout << "mixpa_bench: executor " << a.executor << ", " << threads << " threads, median of " << a.reps
            << " runs\n";
  // The roofline's compute term uses the fastest bf16 instruction the cpu executor runs here,
  // at the best rate this run has seen: the peak is measured at the start and again before and
  // after each case (a neighbour on this shared machine can hold a single measurement down by a
  // quarter, which would make the roofline lenient).
  const bool amx = (a.executor == "cpu" || a.executor == "auto") && cpu::default_isa() == cpu::Isa::kAmx;
  auto measure_peak = [&] {
    Peak best = measure_dot_peak(threads);
    if (amx) {
      const Peak tiles = measure_amx_peak(threads);
      if (tiles.gflops > best.gflops) best = tiles;
    }
    return best;
  };
  Peak peak = measure_peak();
  std::cout << "machine: peak " << peak.gflops << " GFLOP/s (" << peak.instruction << ", "
            << (peak.instruction.find("AMX") != std::string::npos ? "4 tiles" : "16 chains") << " x " << threads
            << " threads)\n";
  if (a.executor == "cpu" || a.executor == "auto") std::cout << "cpu executor kernels: " << cpu::isa_name(cpu::default_isa()) << '\n';
  std::cout << "roofline compute term uses " << peak.instruction << " at the best peak seen so far in this run\n\n";
  for (const std::string& name : a.cases) {
    const Case c = generate_case(find_case(name), 1);
    std::int64_t tokens = 0;
    for (auto l : c.context_lens) tokens += l;
    const double bytes = static_cast<double>(c.kv_bytes_read());
    const double flops = 4.0 * static_cast<double>(tokens) * c.spec.num_heads * c.spec.head_dim;
    std::vector<float> out;
    const double kv_total = 2.0 * static_cast<double>(c.key_cache.size() * sizeof(bf16));
    const double kv_huge = huge_page_bytes(c.key_cache.data(), c.key_cache.size() * sizeof(bf16)) +
                           huge_page_bytes(c.value_cache.data(), c.value_cache.size() * sizeof(bf16));
    if (kv_huge >= 0)
      std::printf("%-10s  KV cache on 2 MiB pages: %.0f%% of %.0f MiB (include/mixpa/memory.h)\n", name.c_str(),
                  100.0 * kv_huge / kv_total, kv_total / (1 << 20));
    const double bw_before = measure_kv_read_bandwidth(c, threads, 5);
    const Peak peak_before = measure_peak();
    const double t = time_mixpa(c, a, out);
    const Peak peak_after = measure_peak();
    const double bw_after = measure_kv_read_bandwidth(c, threads, 5);
    const double bw = std::max(bw_before, bw_after);  // the better of the two: the stricter roofline
    for (const Peak& p : {peak_before, peak_after})
      if (p.gflops > peak.gflops) peak = p;
    const double roof = std::max(bytes / (bw * 1e9), flops / (peak.gflops * 1e9));
    std::printf("%-10s  %8.2f ms  KV %6.1f GB/s  %7.1f GFLOP/s | read bw %5.1f/%5.1f GB/s  peak %4.0f/%4.0f GFLOP/s"
                "  roofline %7.2f ms (%s)  time/roofline %.2fx\n",
                name.c_str(), t * 1e3, bytes / t / 1e9, flops / t / 1e9, bw_before, bw_after, peak_before.gflops,
                peak_after.gflops, roof * 1e3,
                bytes / (bw * 1e9) >= flops / (peak.gflops * 1e9) ? "memory" : "compute", t / roof);
    std::fflush(stdout);
    if (!a.peer) continue;
    const double peer = time_peer(c, out, a, threads);
    if (peer > 0)
      std::printf("%-10s  torch SDPA %8.2f ms   mixpa/torch %.3f  (torch/mixpa %.1fx)\n\n", name.c_str(), peer * 1e3,
                  t / peer, peer / t);
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
