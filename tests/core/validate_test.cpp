// One test per input rule of SPEC §1 (and per option rule): each must throw mixpa::Error
// whose message names the input and the rule, and must leave `out` untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>

#include "common/check.h"

namespace mixpa {
namespace {

struct Fixture {
  Case c = generate_case(testing::small_spec("v", 3, 8, 2, 64, 16, {40, 0, 17}, 0.125, 12), 11);
  std::vector<float> out = std::vector<float>(c.out_elements(), 7.0f);
  Inputs in = c.inputs();
  Options opt;
  OutputView view{out.data(), {3, 8, 64}};
};

// Expects run() to fail with a message containing every fragment, and `out` untouched.
void expect_rejected(const std::function<void(Fixture&)>& mutate, std::initializer_list<const char*> fragments) {
  Fixture f;
  f.opt.executor = "reference";
  mutate(f);
  try {
    run(f.in, f.opt, f.view);
    ADD_FAILURE() << "accepted invalid input; expected an error containing " << *fragments.begin();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* frag : fragments) EXPECT_NE(msg.find(frag), std::string::npos) << "message: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  }
  for (float v : f.out) ASSERT_EQ(v, 7.0f) << "out was written before validation finished";
}

TEST(Validate, AcceptsTheFixture) {
  Fixture f;
  f.opt.executor = "reference";
  EXPECT_NO_THROW(run(f.in, f.opt, f.view));
}

TEST(Validate, PageIdOutsideRange) {
  expect_rejected([](Fixture& f) { f.c.block_table[0 * f.c.max_blocks_per_req + 2] = 12; f.in = f.c.inputs(); },
                  {"block_table[0][2] = 12 is outside [0, 12)"});
}

TEST(Validate, NegativePageId) {
  expect_rejected([](Fixture& f) { f.c.block_table[2 * f.c.max_blocks_per_req + 1] = -1; f.in = f.c.inputs(); },
                  {"block_table[2][1] = -1 is outside [0, 12)"});
}

TEST(Validate, UnusedPagesAreNotChecked) {
  Fixture f;
  f.opt.executor = "reference";
  f.c.block_table[1 * f.c.max_blocks_per_req + 0] = 999999;  // request 1 has context 0
  f.c.block_table[0 * f.c.max_blocks_per_req + 3] = -5;     // past request 0's 3 pages
  f.in = f.c.inputs();
  EXPECT_NO_THROW(run(f.in, f.opt, f.view));
}

TEST(Validate, NegativeContextLength) {
  expect_rejected([](Fixture& f) { f.c.context_lens[1] = -3; f.in = f.c.inputs(); },
                  {"context_lens[1] = -3", "negative"});
}

TEST(Validate, ContextLongerThanTable) {
  expect_rejected([](Fixture& f) {
    f.c.context_lens[2] = static_cast<std::int32_t>(f.c.max_blocks_per_req * 16 + 1);
    f.in = f.c.inputs();
  }, {"context_lens[2]", "exceeds max_blocks_per_req * block_size"});
}

TEST(Validate, HeadsNotMultipleOfKvHeads) {
  expect_rejected([](Fixture& f) {
    f.c.spec.num_heads = 7;
    f.c.query.resize(3 * 7 * 64);
    f.out.resize(3 * 7 * 64, 7.0f);
    f.in = f.c.inputs();
    f.view = OutputView{f.out.data(), {3, 7, 64}};
  }, {"num_heads", "num_kv_heads", "not a multiple"});
}

TEST(Validate, HeadDimMismatch) {
  expect_rejected([](Fixture& f) { f.in.key_cache.shape[3] = 32; f.in.value_cache.shape[3] = 32; },
                  {"key_cache: head_dim is 32 but query head_dim is 64"});
}

TEST(Validate, BatchMismatchBlockTable) {
  expect_rejected([](Fixture& f) { f.in.block_table.shape[0] = 2; }, {"block_table: batch is 2"});
}

TEST(Validate, BatchMismatchContextLens) {
  expect_rejected([](Fixture& f) { f.in.context_lens.shape[0] = 4; }, {"context_lens: batch is 4"});
}

TEST(Validate, KvShapeMismatch) {
  expect_rejected([](Fixture& f) { f.in.value_cache.shape[0] = 11; }, {"value_cache: shape", "differs from key_cache"});
}

TEST(Validate, WrongDtypes) {
  expect_rejected([](Fixture& f) { f.in.query.dtype = DType::kF32; }, {"query: dtype is F32, expected BF16 or F16"});
  expect_rejected([](Fixture& f) { f.in.key_cache.dtype = DType::kF32; },
                  {"key_cache: dtype is F32, expected BF16 or F16 or F8_E4M3 or F8_E5M2"});
  expect_rejected([](Fixture& f) { f.in.value_cache.dtype = DType::kF32; }, {"value_cache: dtype is F32"});
  // Each dtype of SPEC §6 is valid alone, but the caches (and the index tensors) must agree.
  expect_rejected([](Fixture& f) { f.in.key_cache.dtype = DType::kF16; },
                  {"value_cache: dtype is BF16 but key_cache is F16"});
  expect_rejected([](Fixture& f) { f.in.block_table.dtype = DType::kF64; },
                  {"block_table: dtype is F64, expected I32 or I64"});
  expect_rejected([](Fixture& f) { f.in.context_lens.dtype = DType::kBF16; }, {"context_lens: dtype is BF16"});
  expect_rejected([](Fixture& f) { f.in.context_lens.dtype = DType::kI64; },
                  {"context_lens: dtype is I64 but block_table is I32"});
}

TEST(Validate, WrongRank) {
  expect_rejected([](Fixture& f) { f.in.query.rank = 2; }, {"query: rank is 2", "expected 3"});
}

TEST(Validate, MissingTensors) {
  expect_rejected([](Fixture& f) { f.in.query = {}; }, {"query: missing"});
  expect_rejected([](Fixture& f) { f.in.key_cache = {}; }, {"key_cache: missing"});
  expect_rejected([](Fixture& f) { f.in.value_cache = {}; }, {"value_cache: missing"});
  expect_rejected([](Fixture& f) { f.in.block_table = {}; }, {"block_table: missing"});
  expect_rejected([](Fixture& f) { f.in.context_lens = {}; }, {"context_lens: missing"});
}

TEST(Validate, NonFiniteScale) {
  expect_rejected([](Fixture& f) { f.opt.scale = std::numeric_limits<double>::infinity(); }, {"scale", "not finite"});
  expect_rejected([](Fixture& f) { f.opt.scale = std::nan(""); }, {"scale", "not finite"});
  expect_rejected([](Fixture& f) { f.opt.scale = 1e300; }, {"scale", "overflows float32"});
}

TEST(Validate, UnsupportedHeadDim) {
  expect_rejected([](Fixture& f) {
    f.in.query.shape[2] = 40; f.in.key_cache.shape[3] = 40; f.in.value_cache.shape[3] = 40;
    f.in.query = TensorView::contiguous(f.c.query.data(), DType::kBF16, {3, 8, 40});
    f.view.shape[2] = 40;
  }, {"head_dim 40 is not supported", "a multiple of 16 in 16..256"});
}

TEST(Validate, UnsupportedBlockSize) {
  expect_rejected([](Fixture& f) { f.in.key_cache.shape[1] = 257; f.in.value_cache.shape[1] = 257; },
                  {"block_size 257 is not supported", "1..256"});
}

TEST(Validate, NonContiguousQuery) {
  expect_rejected([](Fixture& f) { f.in.query.strides[1] = 128; }, {"query: must be contiguous"});
}

TEST(Validate, CacheHeadDimStride) {
  expect_rejected([](Fixture& f) { f.in.key_cache.strides[3] = 2; }, {"key_cache: head_dim stride is 2"});
}

TEST(Validate, OutputShape) {
  expect_rejected([](Fixture& f) { f.view.shape[1] = 4; }, {"out: shape [3, 4, 64], expected [3, 8, 64]"});
}

TEST(Validate, NullData) {
  expect_rejected([](Fixture& f) { f.in.key_cache.data = nullptr; }, {"key_cache: data pointer is null"});
}

TEST(Validate, UnknownExecutor) {
  expect_rejected([](Fixture& f) { f.opt.executor = "tpu"; }, {"executor: unknown executor 'tpu'", "reference"});
}

TEST(Validate, BadOptions) {
  expect_rejected([](Fixture& f) { f.opt.hw_blocks = 0; }, {"hw_blocks: 0 must be >= 1"});
  expect_rejected([](Fixture& f) { f.opt.pipe_depth = 0; }, {"pipe_depth: 0 must be >= 1"});
  expect_rejected([](Fixture& f) { f.opt.num_threads = -1; }, {"num_threads"});
}

TEST(Validate, StridedCachesAreAccepted) {
  // K and V interleaved in one buffer [num_blocks, 2, block_size, kv_heads, head_dim].
  Fixture f;
  const std::int64_t nb = f.c.num_blocks, page = 16 * 2 * 64;
  std::vector<bf16> kv(nb * 2 * page);
  for (std::int64_t b = 0; b < nb; ++b)
    for (std::int64_t i = 0; i < page; ++i) {
      kv[(b * 2 + 0) * page + i] = f.c.key_cache[b * page + i];
      kv[(b * 2 + 1) * page + i] = f.c.value_cache[b * page + i];
    }
  Inputs in = f.in;
  in.key_cache.data = kv.data();
  in.value_cache.data = kv.data() + page;
  in.key_cache.strides = in.value_cache.strides = {2 * page, 2 * 64, 64, 1};
  Options opt;
  opt.executor = "reference";
  std::vector<float> dense(f.out.size()), strided(f.out.size());
  run(f.in, opt, OutputView{dense.data(), {3, 8, 64}});
  run(in, opt, OutputView{strided.data(), {3, 8, 64}});
  EXPECT_EQ(dense, strided);
}

TEST(Validate, DefaultScaleIsInverseSqrtHeadDim) {
  EXPECT_FLOAT_EQ(resolve_scale(Options{}, 128), 1.0f / std::sqrt(128.0f));
  Options o;
  o.scale = 2.5;
  EXPECT_EQ(resolve_scale(o, 128), 2.5f);
}

}  // namespace
}  // namespace mixpa
