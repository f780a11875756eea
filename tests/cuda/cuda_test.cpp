// Executor "cuda" on a GPU: agreement with exact attention on the coverage shapes, the
// origin's cases and odd shapes, NaN in masked rows, a bad page id found on the device,
// bitwise run-to-run determinism, the device-resident API and CUDA-graph replay.
// Every test skips when this build has no cuda executor or the machine has no usable GPU,
// and fails instead when MIXPA_REQUIRE_GPU=1 (scripts/device_check.sh sets it, so a GPU
// machine can never report a green run made of skips). Each accuracy test prints its max
// error against exact float64.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>

#include "common/check.h"
#include "cuda/serving_specs.h"
#include "mixpa/cuda.h"

#ifdef MIXPA_HAVE_CUDA
#include "cuda/cuda_executor.h"
#include "cuda/kernel_launch.h"
#endif

namespace mixpa {
namespace {
using testing::coverage_specs;
using testing::exact;
using testing::small_spec;

#ifdef MIXPA_HAVE_CUDA
bool have_gpu() { return cuda::device_available(); }
#else
bool have_gpu() { return false; }
#endif

bool gpu_required() {
  const char* v = std::getenv("MIXPA_REQUIRE_GPU");
  return v && std::string(v) == "1";
}

// Every GPU test derives from this: without a usable device it skips in SetUp, or fails when
// MIXPA_REQUIRE_GPU=1.
template <class Base = ::testing::Test>
class GpuTest : public Base {
 protected:
  void SetUp() override {
    if (have_gpu()) return;
    if (gpu_required()) FAIL() << "MIXPA_REQUIRE_GPU=1 but there is no CUDA device (or this build has no cuda executor)";
    GTEST_SKIP() << "no CUDA device (or this build has no cuda executor)";
  }
};

void print_error(const std::string& what, double err) {
  std::printf("cuda accuracy %-28s max abs error vs exact f64 %.3e\n", what.c_str(), err);
  std::fflush(stdout);
}

// MIXPA_REQUIRE_GPU=1 turns the skips into failures: on a machine without a GPU this binary,
// run on a GPU test with the variable set, must exit non-zero, and without it, zero.
TEST(RequireGpu, TurnsSkipsIntoFailures) {
  if (have_gpu()) {
    std::printf("a GPU is present: the skip-to-failure path is not reachable here\n");
    return;
  }
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();  // this binary
  const std::string filter = " --gtest_filter=CudaExecutor.IsTheAutoDefaultWhenAGpuIsPresent >/dev/null 2>&1";
  EXPECT_NE(std::system(("MIXPA_REQUIRE_GPU=1 " + self + filter).c_str()), 0);
  EXPECT_EQ(std::system(("env -u MIXPA_REQUIRE_GPU " + self + filter).c_str()), 0);
}
using CudaExecutor = GpuTest<>;
using CudaDeviceApi = GpuTest<>;

// The coverage list plus shapes that stress the GPU tiling: GQA groups 1..128, every
// head_dim with both q_tiles, block_size 16..128, splits of long contexts, a single token.
std::vector<CaseSpec> cuda_specs() {
  std::vector<CaseSpec> specs = coverage_specs();
  specs.push_back(small_spec("gqa1_mha", 2, 8, 8, 128, 16, {37, 5}));
  specs.push_back(small_spec("gqa8_hd256", 2, 16, 2, 256, 64, {129, 3}));
  specs.push_back(small_spec("gqa48", 1, 96, 2, 128, 16, {77}));
  specs.push_back(small_spec("gqa64_bs128", 1, 64, 1, 128, 128, {300}));
  specs.push_back(small_spec("q64_hd256", 2, 64, 1, 256, 32, {200, 7}));
  specs.push_back(small_spec("gqa128", 1, 128, 1, 64, 32, {90}));
  specs.push_back(small_spec("gqa3_odd", 2, 9, 3, 64, 16, {31, 18}));
  specs.push_back(small_spec("heads20_lens01", 6, 20, 1, 128, 16, {0, 1, 2, 63, 64, 65}));
  specs.push_back(small_spec("gqa32_4_mixed", 4, 32, 4, 128, 16, {0, 1, 1000, 4097}));
  specs.push_back(small_spec("split_long", 1, 16, 1, 128, 32, {9000}));
  specs.push_back(small_spec("split_gqa", 2, 32, 8, 128, 64, {5000, 4097}));
  specs.push_back(small_spec("split_hd64_bs16", 1, 20, 4, 64, 16, {6001}));
  specs.push_back(small_spec("split_hd256_q64", 1, 64, 1, 256, 64, {3000}));
  specs.push_back(small_spec("single_token", 1, 16, 1, 128, 128, {1}));
  return specs;
}

class CudaCoverage : public GpuTest<::testing::TestWithParam<CaseSpec>> {};

TEST_P(CudaCoverage, AgreesWithExact) {
  const Case c = generate_case(GetParam(), 11);
  const double err = testing::expect_close_to_exact(c, testing::run_case(c, "cuda"), exact(c));
  print_error(GetParam().name, err);
  EXPECT_LT(err, 2e-3);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaCoverage, ::testing::ValuesIn(cuda_specs()),
                         [](const auto& info) { return info.param.name; });

// SPEC §6 dtypes and shapes (the list the CPU emulation test runs too): out and lse against
// exact float64 through mixpa::run.
class CudaServing : public GpuTest<::testing::TestWithParam<CaseSpec>> {};

TEST_P(CudaServing, AgreesWithExact) {
  const Case c = generate_case(GetParam(), 13);
  std::vector<float> lse;
  const auto out = testing::run_case(c, "cuda", {}, &lse);
  std::vector<double> ref_lse;
  const auto ref = exact(c, {}, &ref_lse);
  const double err = testing::expect_close_to_exact(c, out, ref);
  const double lse_err = testing::expect_lse_close_to_exact(c, lse, ref_lse);
  print_error(GetParam().name, err);
  print_error(GetParam().name + " lse", lse_err);
  EXPECT_LT(err, 2e-3);
}

INSTANTIATE_TEST_SUITE_P(Serving, CudaServing, ::testing::ValuesIn(testing::cuda_serving_specs()),
                         [](const auto& info) { return info.param.name; });

// What the kernels leave out is reported by the executor table, not computed wrong: a named
// cuda run of a bf16 query on f16 caches is a clear error; auto picks another executor.
TEST(CudaServingProps, MixedSixteenBitDtypesAreReportedUnsupported) {
  const Case c = generate_case(testing::serving(small_spec("mixed16", 1, 8, 1, 64, 16, {20}), DType::kBF16, DType::kF16), 1);
  if (have_gpu()) {
    try {
      testing::run_case(c, "cuda");
      ADD_FAILURE() << "a bf16 query on f16 caches ran on cuda";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("query BF16 with F16 caches"), std::string::npos) << e.what();
    }
  }
  testing::expect_close_to_exact(c, testing::run_case(c, "auto"), exact(c));
}

// The origin's cases and the long decode: big (Case1 holds 1 GiB of KV), hence "Slow".
class CudaOriginSlow : public GpuTest<::testing::TestWithParam<std::string>> {};

TEST_P(CudaOriginSlow, AgreesWithExact) {
  const Case c = generate_case(find_case(GetParam()), 1);
  const double err = testing::expect_close_to_exact(c, testing::run_case(c, "cuda"), exact(c));
  print_error(GetParam(), err);
  EXPECT_LT(err, 5e-4);
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaOriginSlow, ::testing::Values("SmallCase1", "Decode32k", "Case2", "Case1"),
                         [](const auto& info) { return info.param; });

TEST(CudaPublicApi, IsUnavailableAndThrowsWithoutADevice) {
  if (have_gpu()) return;
  EXPECT_FALSE(mixpa::cuda::available());
  const Case c = generate_case(small_spec("no_gpu", 1, 16, 1, 128, 16, {40}), 1);
  EXPECT_THROW(mixpa::cuda::PagedAttention(c.inputs(), c.context_lens.data()), Error);
}

// SPEC §6's variants through mixpa::run on the GPU, out and lse against exact float64.
TEST_F(CudaExecutor, VariantsAgreeWithExact) {
  struct V {
    const char* name;
    double softcap;
    std::int64_t window;
    bool alibi, sinks;
  };
  for (const CaseSpec& spec : {small_spec("var_split", 2, 32, 4, 128, 32, {5000, 300}, 0.3),
                               small_spec("var_q64", 2, 64, 1, 64, 16, {700, 3}),
                               small_spec("var_hd256", 3, 16, 2, 256, 64, {1500, 0, 64})}) {
    const Case c = generate_case(spec, 7);
    std::vector<float> slopes(spec.num_heads), sinks(spec.num_heads);
    for (std::int64_t h = 0; h < spec.num_heads; ++h) {
      slopes[h] = std::exp2(-8.0f * static_cast<float>(h + 1) / static_cast<float>(spec.num_heads));
      sinks[h] = 0.5f + 0.3f * static_cast<float>(h % 4);
    }
    for (const V& v : {V{"softcap", 0.7, -1, false, false}, V{"alibi", 0, -1, true, false}, V{"window5", 0, 5, false, false},
                       V{"window1000", 0, 1000, false, false}, V{"sinks", 0, -1, false, true},
                       V{"all", 2.0, 400, true, true}}) {
      Options o;
      o.executor = "cuda";
      o.scale = c.scale;
      o.softcap = v.softcap;
      o.window_left = v.window;
      Inputs in = c.inputs();
      if (v.alibi) in.alibi_slopes = TensorView::contiguous(slopes.data(), DType::kF32, {spec.num_heads});
      if (v.sinks) in.sinks = TensorView::contiguous(sinks.data(), DType::kF32, {spec.num_heads});
      std::vector<float> out(c.out_elements()), lse(spec.batch * spec.num_heads);
      const OutputView view{out.data(), {spec.batch, spec.num_heads, spec.head_dim}, lse.data()};
      run(in, o, view);
      const Problem pr = validate(in, o, view);
      std::vector<double> ref(out.size()), ref_lse(lse.size());
      exact_attention_f64(pr, ref.data(), {}, ref_lse.data());
      const AccuracyReport r = compare_to_exact(out.data(), ref.data(), static_cast<std::int64_t>(out.size()));
      const AccuracyReport rl = compare_lse_to_exact(lse.data(), ref_lse.data(), static_cast<std::int64_t>(lse.size()));
      EXPECT_TRUE(r.pass()) << spec.name << " " << v.name << ": max abs error " << r.max_abs_error;
      EXPECT_TRUE(rl.pass()) << spec.name << " " << v.name << ": lse max abs error " << rl.max_abs_error;
      print_error(spec.name + " " + v.name, r.max_abs_error);
      print_error(spec.name + " " + v.name + " lse", rl.max_abs_error);
    }
  }
}

TEST_F(CudaExecutor, IsTheAutoDefaultWhenAGpuIsPresent) {
  EXPECT_EQ(executor_names().front(), "cuda");
}

TEST_F(CudaExecutor, RunToRunBitwiseIdentical) {
  for (const CaseSpec& spec : {small_spec("det_split", 2, 32, 8, 128, 64, {7000, 2500}),
                               small_spec("det_batch", 9, 16, 1, 64, 16, {300, 0, 17, 1, 64, 999, 5, 6, 7}),
                               small_spec("det_q64", 2, 64, 1, 128, 32, {3000, 40})}) {
    const Case c = generate_case(spec, 5);
    const auto first = testing::run_case(c, "cuda");
    for (int rep = 0; rep < 3; ++rep) EXPECT_EQ(first, testing::run_case(c, "cuda")) << spec.name << " rep " << rep;
  }
}

// Rows past a request's context hold NaN / Inf in K and V: they must not reach the output.
TEST_F(CudaExecutor, MaskedRowsHoldingNaNDoNotLeak) {
  for (const CaseSpec& spec : {small_spec("nan_rows", 3, 16, 2, 128, 32, {45, 7, 33}),
                               small_spec("nan_rows_q64", 2, 64, 1, 64, 16, {45, 7})}) {
    Case c = generate_case(spec, 3);
    const std::int64_t bs = spec.block_size, row_elems = spec.num_kv_heads * spec.head_dim;
    const auto clean = testing::run_case(c, "cuda");
    std::vector<bool> used(c.num_blocks * bs, false);
    for (std::int64_t b = 0; b < spec.batch; ++b)
      for (std::int64_t t = 0; t < c.context_lens[b]; ++t) used[c.block_table[b * c.max_blocks_per_req + t / bs] * bs + t % bs] = true;
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    int poisoned = 0;
    for (std::int64_t row = 0; row < c.num_blocks * bs; ++row) {
      if (used[row]) continue;
      ++poisoned;
      for (std::int64_t d = 0; d < row_elems; ++d) {
        c.key_cache[row * row_elems + d] = bf16::from_float(nan);
        c.value_cache[row * row_elems + d] = bf16::from_float(d % 2 ? inf : nan);
      }
    }
    ASSERT_GT(poisoned, 0);
    EXPECT_EQ(clean, testing::run_case(c, "cuda")) << spec.name;
  }
}

TEST_F(CudaExecutor, SharpSoftmaxAndNegativeScale) {
  for (double scale : {40.0, -3.0}) {
    const Case c = generate_case(small_spec("scale", 2, 16, 1, 128, 32, {100, 33}, scale), 5);
    const auto out = testing::run_case(c, "cuda");
    for (float v : out) ASSERT_TRUE(std::isfinite(v));
    testing::expect_close_to_exact(c, out, exact(c));
  }
}

TEST_F(CudaExecutor, HostValidationStillRejectsBadPageIds) {
  Case c = generate_case(small_spec("bad_page", 2, 16, 1, 128, 16, {40, 20}), 1);
  c.block_table[1] = static_cast<std::int32_t>(c.num_blocks);
  std::vector<float> out;
  EXPECT_THROW(testing::run_case(c, "cuda"), Error);
}

#ifdef MIXPA_HAVE_CUDA
// The pipe alone, before any attention test: a protocol fault shows here as mismatches or a
// watchdog trap, separate from the math.
// MIXPA_PIPE_SELFTEST_ROUNDS shortens it under compute-sanitizer;
// MIXPA_PIPE_SELFTEST_RELEASE=warp runs the warp-elected TFREE (the sanitizer step's control:
// racecheck must report hazards there and none in the kernels' per-lane form).
TEST_F(CudaDeviceApi, PipeProtocolSelfTest) {
  const char* env = std::getenv("MIXPA_PIPE_SELFTEST_ROUNDS");
  const int rounds = env ? std::max(1, std::atoi(env)) : 2000;
  const char* release = std::getenv("MIXPA_PIPE_SELFTEST_RELEASE");
  const bool warp_elected = release != nullptr && std::string_view(release) == "warp";
  for (int stages : {1, 2, 3, 5, 8}) {
    unsigned long long bad = ~0ull;
    cuda::check(cuda::run_pipe_selftest(stages, rounds, 4, &bad, warp_elected), "run_pipe_selftest");
    EXPECT_EQ(bad, 0u) << stages << " stages";
  }
}

// The device-resident API: plan once, run on device pointers, no host sync inside run().
struct DeviceCase {
  const Case* c;
  Plan plan;
  cuda::DeviceBuffer q, k, v, table, out;
  cuda::DeviceTensors tensors;
  explicit DeviceCase(const Case& cs, float scale)
      : c(&cs),
        plan(make_plan(Shape{cs.spec.batch, cs.spec.num_heads, cs.spec.num_kv_heads, cs.spec.head_dim, cs.num_blocks,
                             cs.spec.block_size, cs.max_blocks_per_req},
                       scale)),
        q(cs.query.size() * 2), k(cs.key_cache.size() * 2), v(cs.value_cache.size() * 2),
        table(cs.block_table.size() * 4), out(cs.out_elements() * 4) {
    q.upload(cs.query.data(), q.bytes());
    k.upload(cs.key_cache.data(), k.bytes());
    v.upload(cs.value_cache.data(), v.bytes());
    table.upload(cs.block_table.data(), table.bytes());
    const std::int64_t row = cs.spec.num_kv_heads * cs.spec.head_dim;
    tensors = {q.as<bf16>(), k.as<bf16>(), v.as<bf16>(), {cs.spec.block_size * row, row, cs.spec.head_dim},
               {cs.spec.block_size * row, row, cs.spec.head_dim}, table.as<std::int32_t>()};
  }
  std::vector<float> download() const {
    std::vector<float> h(c->out_elements());
    cuda::check(cudaMemcpy(h.data(), out.as<float>(), h.size() * 4, cudaMemcpyDeviceToHost), "cudaMemcpy");
    return h;
  }
};

TEST_F(CudaDeviceApi, DeviceSidePageIdCheckRaisesAnError) {
  Case c = generate_case(small_spec("dev_bad_page", 2, 16, 1, 128, 16, {40, 20}), 1);
  c.block_table[1] = static_cast<std::int32_t>(c.num_blocks) + 7;   // used by request 0
  c.block_table[c.max_blocks_per_req] = -1;                          // used by request 1
  DeviceCase d(c, static_cast<float>(c.scale));
  cuda::DevicePlan pa(d.plan, c.context_lens.data());
  pa.run(d.tensors, d.out.as<float>(), nullptr);
  EXPECT_THROW(pa.check_errors(nullptr), Error);
  // The flag is cleared: a good table runs clean afterwards.
  Case good = generate_case(small_spec("dev_bad_page", 2, 16, 1, 128, 16, {40, 20}), 1);
  d.table.upload(good.block_table.data(), d.table.bytes());
  pa.run(d.tensors, d.out.as<float>(), nullptr);
  EXPECT_NO_THROW(pa.check_errors(nullptr));
  testing::expect_close_to_exact(good, d.download(), exact(good));
}

// The public API (include/mixpa/cuda.h): device tensors as TensorViews, a stream as void*,
// lse out, CUDA-graph replay, error flags read on demand.
TEST_F(CudaDeviceApi, PublicApiRunsAndReplaysInAGraph) {
  const Case c = generate_case(small_spec("public_api", 3, 32, 4, 128, 32, {3000, 0, 700}), 6);
  DeviceCase d(c, static_cast<float>(c.scale));
  cuda::DeviceBuffer lse(c.spec.batch * c.spec.num_heads * 4);
  const std::int64_t B = c.spec.batch, H = c.spec.num_heads, D = c.spec.head_dim, KH = c.spec.num_kv_heads;
  Inputs in;
  in.query = TensorView::contiguous(d.q.as<void>(), DType::kBF16, {B, H, D});
  in.key_cache = TensorView::contiguous(d.k.as<void>(), DType::kBF16, {c.num_blocks, c.spec.block_size, KH, D});
  in.value_cache = TensorView::contiguous(d.v.as<void>(), DType::kBF16, {c.num_blocks, c.spec.block_size, KH, D});
  in.block_table = TensorView::contiguous(d.table.as<void>(), DType::kI32, {B, c.max_blocks_per_req});
  in.context_lens = TensorView::contiguous(d.table.as<void>(), DType::kI32, {B});  // shape only: never read
  Options o;
  o.scale = c.scale;
  const mixpa::cuda::PagedAttention pa(in, c.context_lens.data(), o);
  cudaStream_t stream;
  cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  pa.run(in, d.out.as<float>(), lse.as<float>(), stream);
  EXPECT_EQ(pa.read_error_flags(stream), 0);
  const auto direct = d.download();
  testing::expect_close_to_exact(c, direct, exact(c));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  cuda::check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
  pa.run(in, d.out.as<float>(), lse.as<float>(), stream);
  cuda::check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  cuda::check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  for (int i = 0; i < 3; ++i) cuda::check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
  pa.check_errors(stream);
  EXPECT_EQ(direct, d.download());
  std::vector<float> host_lse(B * H);
  cuda::check(cudaMemcpy(host_lse.data(), lse.as<float>(), host_lse.size() * 4, cudaMemcpyDeviceToHost), "cudaMemcpy");
  EXPECT_EQ(host_lse[H], -std::numeric_limits<float>::infinity());  // request 1: context 0
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// The public API with SPEC §6 device tensors: an fp8 cache with scales, q_len 4, head_dim 80,
// int64 block_table / context_lens (read on the device as int64), lse [batch, q_len, heads].
TEST_F(CudaDeviceApi, PublicApiTakesFp8QLenAndInt64Tables) {
  const Case c = generate_case(testing::serving(small_spec("public_fp8", 2, 16, 4, 80, 16, {300, 4}), DType::kBF16,
                                                DType::kF8E4M3, 4, true, 0.5, 2.0),
                               9);
  const std::int64_t B = c.spec.batch, L = c.spec.q_len, H = c.spec.num_heads, D = c.spec.head_dim, KH = c.spec.num_kv_heads;
  const std::size_t kv_bytes = static_cast<std::size_t>(c.num_blocks * c.spec.block_size * KH * D);
  cuda::DeviceBuffer q(static_cast<std::size_t>(B * L * H * D) * 2), k(kv_bytes), v(kv_bytes),
      table(c.block_table64.size() * 8), lens(c.context_lens64.size() * 8), out(c.out_elements() * 4),
      lse(c.lse_elements() * 4);
  q.upload(c.query_data(), q.bytes());
  k.upload(c.key_data(), k.bytes());
  v.upload(c.value_data(), v.bytes());
  table.upload(c.block_table64.data(), table.bytes());
  lens.upload(c.context_lens64.data(), lens.bytes());
  Inputs in;
  in.query = TensorView::contiguous(q.as<void>(), DType::kBF16, {B, L, H, D});
  in.key_cache = TensorView::contiguous(k.as<void>(), DType::kF8E4M3, {c.num_blocks, c.spec.block_size, KH, D});
  in.value_cache = TensorView::contiguous(v.as<void>(), DType::kF8E4M3, {c.num_blocks, c.spec.block_size, KH, D});
  in.block_table = TensorView::contiguous(table.as<void>(), DType::kI64, {B, c.max_blocks_per_req});
  in.context_lens = TensorView::contiguous(lens.as<void>(), DType::kI64, {B});
  Options o = testing::case_options(c, {});
  const mixpa::cuda::PagedAttention pa(in, c.context_lens64.data(), o);
  pa.run(in, out.as<float>(), lse.as<float>(), nullptr);
  pa.check_errors(nullptr);
  std::vector<float> h_out(c.out_elements()), h_lse(c.lse_elements());
  cuda::check(cudaMemcpy(h_out.data(), out.as<float>(), h_out.size() * 4, cudaMemcpyDeviceToHost), "cudaMemcpy");
  cuda::check(cudaMemcpy(h_lse.data(), lse.as<float>(), h_lse.size() * 4, cudaMemcpyDeviceToHost), "cudaMemcpy");
  std::vector<double> ref_lse;
  const auto ref = exact(c, {}, &ref_lse);
  print_error("public_fp8", testing::expect_close_to_exact(c, h_out, ref));
  testing::expect_lse_close_to_exact(c, h_lse, ref_lse);
  // The plan's dtypes are part of the plan: a bf16 cache on the same plan is refused.
  Inputs wrong = in;
  wrong.key_cache.dtype = wrong.value_cache.dtype = DType::kBF16;
  EXPECT_THROW(pa.run(wrong, out.as<float>(), lse.as<float>(), nullptr), Error);
}

TEST_F(CudaDeviceApi, GraphReplayMatchesDirectRun) {
  const Case c = generate_case(small_spec("graph", 3, 32, 4, 128, 32, {3000, 1, 700}), 4);
  DeviceCase d(c, static_cast<float>(c.scale));
  cuda::DevicePlan pa(d.plan, c.context_lens.data());
  cudaStream_t stream;
  cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  pa.run(d.tensors, d.out.as<float>(), stream);
  pa.check_errors(stream);
  const auto direct = d.download();
  testing::expect_close_to_exact(c, direct, exact(c));
  cuda::check(cudaMemset(d.out.as<float>(), 0, d.out.bytes()), "cudaMemset");
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  cuda::check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
  pa.run(d.tensors, d.out.as<float>(), stream);
  cuda::check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  cuda::check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  for (int i = 0; i < 3; ++i) cuda::check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
  pa.check_errors(stream);
  EXPECT_EQ(direct, d.download());
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}
#endif

}  // namespace
}  // namespace mixpa
