// mixpa_cuda_bench: times the cuda executor's device-resident path on the benchmark cases
// (CUDA events, median, after warm-up; direct launches and CUDA-graph replay) and judges each
// time against the GPU's read bandwidth measured in the same run, then runs the GPU peers
// (torch SDPA cuDNN / flash on the same KV gathered densely, FlashInfer paged decode if
// importable) through peer_torch_cuda.py, which prints the ratios. No launch is timed hot:
// before each timed launch a buffer of twice the L2 is written (outside the timed events),
// so the KV cache comes from HBM as it would in a serving step.
//
//   mixpa_cuda_bench [--cases Case1,Case2,SmallCase1,Decode32k] [--reps 30]
//                    [--stream-gib 4] [--no-peer] [--python python3] [--peer-dir DIR] [--verify]
//                    [--window-left N]  (also time each case with a sliding window of N + 1 tokens)
//                    [--peer-script PATH]  (default: the source tree's bench/cuda/peer_torch_cuda.py)
//                    [--sweep]   (also time other ring depths and split targets: tunes the heuristic)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "core/cases.h"
#include "core/validate.h"
#include "cuda/cuda_executor.h"
#include "peer_dump.h"
#include "reference/reference.h"
#include "stream_read.h"

namespace mixpa::bench {
namespace {

struct Args {
  std::vector<std::string> cases{"Case1", "Case2", "SmallCase1", "Decode32k"};
  int reps = 30;
  double stream_gib = 4.0;
  bool peer = true;
  bool verify = false;
  bool sweep = false;
  long long window_left = -1;
  std::string python = "python3";
  std::string peer_dir = (std::filesystem::temp_directory_path() / "mixpa_cuda_peer").string();
  std::string script = MIXPA_BENCH_DIR "/peer_torch_cuda.py";
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error("mixpa_cuda_bench: " + k + " needs a value");
      return argv[++i];
    };
    if (k == "--cases") {
      a.cases.clear();
      std::stringstream s(value());
      for (std::string c; std::getline(s, c, ',');) a.cases.push_back(c);
    } else if (k == "--reps") a.reps = std::max(5, std::stoi(value()));
    else if (k == "--stream-gib") a.stream_gib = std::stod(value());
    else if (k == "--no-peer") a.peer = false;
    else if (k == "--verify") a.verify = true;
    else if (k == "--sweep") a.sweep = true;
    else if (k == "--window-left") a.window_left = std::stoll(value());
    else if (k == "--python") a.python = value();
    else if (k == "--peer-dir") a.peer_dir = value();
    else if (k == "--peer-script") a.script = value();
    else throw Error("mixpa_cuda_bench: unknown option '" + k + "' (see the header of bench/cuda/cuda_bench.cpp)");
  }
  return a;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Times launches cold: each one follows a write of 2 x L2 bytes (not timed).
struct Timer {
  cudaEvent_t a, b;
  cuda::DeviceBuffer flush;
  Timer() {
    cuda::check(cudaEventCreate(&a), "cudaEventCreate");
    cuda::check(cudaEventCreate(&b), "cudaEventCreate");
    int dev = 0, l2 = 0;
    cuda::check(cudaGetDevice(&dev), "cudaGetDevice");
    cuda::check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev), "cudaDeviceGetAttribute(L2)");
    flush = cuda::DeviceBuffer(2 * static_cast<std::size_t>(std::max(l2, 1 << 20)));
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  template <class F>
  double median_seconds(int reps, cudaStream_t s, F&& f) {
    std::vector<double> t;
    for (int r = -3; r < reps; ++r) {
      cuda::check(cudaMemsetAsync(flush.as<void>(), r & 0xff, flush.bytes(), s), "cudaMemsetAsync(L2 flush)");
      cuda::check(cudaEventRecord(a, s), "cudaEventRecord");
      f();
      cuda::check(cudaEventRecord(b, s), "cudaEventRecord");
      cuda::check(cudaEventSynchronize(b), "cudaEventSynchronize");
      float ms = 0;
      cuda::check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
      if (r >= 0) t.push_back(ms * 1e-3);
    }
    return median(t);
  }
};

void run_case(const Args& args, const std::string& name, double stream_bw) {
  const Case c = generate_case(find_case(name), 0);
  Options options;
  options.scale = static_cast<float>(c.scale);
  std::vector<float> host_out(c.out_elements());
  const Problem pr = validate(c.inputs(), options, OutputView{host_out.data(), {c.spec.batch, c.spec.num_heads, c.spec.head_dim}});
  const Plan plan = make_plan(pr.shape, pr.variant.scale);
  cuda::DevicePlan pa(plan, c.context_lens.data());

  cuda::DeviceBuffer q(c.query.size() * 2), k(c.key_cache.size() * 2), v(c.value_cache.size() * 2),
      table(c.block_table.size() * 4), out(c.out_elements() * 4);
  q.upload(c.query.data(), q.bytes());
  k.upload(c.key_cache.data(), k.bytes());
  v.upload(c.value_cache.data(), v.bytes());
  table.upload(c.block_table.data(), table.bytes());
  cuda::DeviceTensors t{q.as<bf16>(), k.as<bf16>(), v.as<bf16>(), pr.k_strides, pr.v_strides, table.as<std::int32_t>()};

  cudaStream_t s;
  cuda::check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  pa.run(t, out.as<float>(), s);
  pa.check_errors(s);
  Timer timer;
  const double direct = timer.median_seconds(args.reps, s, [&] { pa.run(t, out.as<float>(), s); });
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  cuda::check(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
  pa.run(t, out.as<float>(), s);
  cuda::check(cudaStreamEndCapture(s, &graph), "cudaStreamEndCapture");
  cuda::check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  const double graphed = timer.median_seconds(args.reps, s, [&] { cuda::check(cudaGraphLaunch(exec, s), "cudaGraphLaunch"); });
  pa.check_errors(s);
  cuda::check(cudaMemcpy(host_out.data(), out.as<float>(), out.bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::vector<std::pair<std::string, cuda::WorkPlanOptions>> variants;
  if (args.sweep) {
    for (int st : {2, 3, 4}) variants.push_back({"stages<=" + std::to_string(st), {st, -1.0, cuda::kMinChunkTokens}});
    for (double ips : {0.0, 1.0, 2.0, 4.0, 8.0})
      variants.push_back({"items/SM " + std::to_string(ips).substr(0, 3), {cuda::kMaxStages, ips, cuda::kMinChunkTokens}});
    variants.push_back({"items/SM 4, chunk>=256", {cuda::kMaxStages, 4.0, 256}});
    variants.push_back({"balance pages", {cuda::kMaxStages, -1.0, cuda::kMinChunkTokens, true}});
  }
  if (args.window_left >= 0) {
    Variant wv;
    wv.window_left = args.window_left;
    cuda::DevicePlan win(plan, c.context_lens.data(), {}, wv);
    win.run(t, out.as<float>(), s);
    win.check_errors(s);
    const double sec = timer.median_seconds(args.reps, s, [&] { win.run(t, out.as<float>(), s); });
    std::printf("%-11s   window_left %lld: items %5zu | direct %8.4f ms = %.3fx the full context's time\n", name.c_str(),
                args.window_left, win.work().items.size(), sec * 1e3, sec / direct);
  }
  for (const auto& [label, opts] : variants) {
    cuda::DevicePlan alt(plan, c.context_lens.data(), opts);
    alt.run(t, out.as<float>(), s);
    alt.check_errors(s);
    const double sec = timer.median_seconds(args.reps, s, [&] { alt.run(t, out.as<float>(), s); });
    std::printf("%-11s   sweep %-24s items %5zu stages %d | direct %8.4f ms | %5.2f TB/s\n", name.c_str(), label.c_str(),
                alt.work().items.size(), alt.work().stages, sec * 1e3, static_cast<double>(c.kv_bytes_read()) / sec / 1e12);
  }
  cudaStreamDestroy(s);

  const double best = std::min(direct, graphed);
  const double kv = static_cast<double>(c.kv_bytes_read());
  std::printf("%-11s items %5zu grid %3d stages %d | direct %8.4f ms  graph %8.4f ms | KV %7.1f MB  %5.2f TB/s  = %5.1f%% of stream read\n",
              name.c_str(), pa.work().items.size(), pa.work().grid, pa.work().stages, direct * 1e3, graphed * 1e3, kv / 1e6,
              kv / best / 1e12, 100.0 * kv / best / stream_bw);
  if (args.verify) {
    std::vector<double> ref(c.out_elements());
    exact_attention_f64(pr, ref.data());
    const AccuracyReport r = compare_to_exact(host_out.data(), ref.data(), static_cast<std::int64_t>(ref.size()));
    std::printf("%-11s verify: max abs error %.2e, %s\n", name.c_str(), r.max_abs_error, r.pass() ? "pass" : "FAIL");
  }
  std::fflush(stdout);
  if (args.peer) {
    const std::filesystem::path dir = std::filesystem::path(args.peer_dir) / name;
    write_peer_case(c, host_out, dir);
    std::ostringstream cmd;
    cmd << args.python << " " << args.script << " " << dir.string() << " --name " << name << " --reps " << args.reps
        << " --mixpa-ms " << best * 1e3 << " --stream-tbs " << stream_bw / 1e12 << " --block-size " << c.spec.block_size;
    if (std::system(cmd.str().c_str()) != 0) std::printf("%-11s peer script failed\n", name.c_str());
    std::filesystem::remove_all(dir);
  }
}

}  // namespace
}  // namespace mixpa::bench

int main(int argc, char** argv) {
  using namespace mixpa;
  try {
    const bench::Args args = bench::parse(argc, argv);
    if (!cuda::device_available()) {
      std::printf("mixpa_cuda_bench: no CUDA device with this build's kernel image; nothing to time\n");
      const char* required = std::getenv("MIXPA_REQUIRE_GPU");  // the device check: no GPU is a failure
      return required && std::string(required) == "1" ? 1 : 0;
    }
    cudaDeviceProp prop;
    cuda::check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    const double bw = bench::measure_read_bandwidth(static_cast<std::size_t>(args.stream_gib * (1u << 30)), 20);
    std::printf("device %s, %d SMs, %.0f MB L2; streaming read %.2f TB/s (%.1f GiB buffer, 4 x 16 B loads in flight per thread, median of 20)\n", prop.name,
                prop.multiProcessorCount, prop.l2CacheSize / 1e6, bw / 1e12, args.stream_gib);
    for (const std::string& name : args.cases) bench::run_case(args, name, bw);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mixpa_cuda_bench: %s\n", e.what());
    return 2;
  }
}
