// A downstream program: one small decode step through mixpa::run, checked against attention
// computed here in double precision, and one invalid input that must be rejected.
// Exit code 0 when both hold, 1 otherwise.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "mixpa/paged_attention.h"
#include "mixpa/version.h"

namespace {

constexpr int kBatch = 3, kHeads = 4, kKvHeads = 2, kHeadDim = 64, kBlockSize = 16;
constexpr int kNumBlocks = 8, kMaxBlocks = 4;

// Deterministic values in [-1, 1).
float next_value(std::uint32_t& state) {
  state = state * 1664525u + 1013904223u;
  return static_cast<float>(state >> 8) / static_cast<float>(1u << 23) - 1.0f;
}

std::vector<mixpa::bf16> random_bf16(std::size_t n, std::uint32_t seed) {
  std::vector<mixpa::bf16> v(n);
  for (auto& x : v) x = mixpa::bf16::from_float(next_value(seed));
  return v;
}

}  // namespace

int main() {
  std::printf("mixpa headers %s, library %s\n", MIXPA_VERSION_STRING, mixpa::version());
  if (std::strcmp(MIXPA_VERSION_STRING, mixpa::version()) != 0) {
    std::printf("FAIL: header and library versions differ\n");
    return 1;
  }

  const std::vector<mixpa::bf16> q = random_bf16(std::size_t{kBatch} * kHeads * kHeadDim, 1);
  const std::size_t cache_elems = std::size_t{kNumBlocks} * kBlockSize * kKvHeads * kHeadDim;
  const std::vector<mixpa::bf16> k = random_bf16(cache_elems, 2), v = random_bf16(cache_elems, 3);
  // Request 0 has a partial last page, request 1 no tokens, request 2 shares page 5 with request 0.
  std::vector<std::int32_t> block_table = {5, 2, 7, 0, /**/ 0, 0, 0, 0, /**/ 1, 5, 0, 0};
  const std::vector<std::int32_t> context_lens = {37, 0, 20};
  const double scale = 1.0 / std::sqrt(double{kHeadDim});

  using mixpa::DType;
  mixpa::Inputs in;
  in.query = mixpa::TensorView::contiguous(q.data(), DType::kBF16, {kBatch, kHeads, kHeadDim});
  in.key_cache = mixpa::TensorView::contiguous(k.data(), DType::kBF16, {kNumBlocks, kBlockSize, kKvHeads, kHeadDim});
  in.value_cache = mixpa::TensorView::contiguous(v.data(), DType::kBF16, {kNumBlocks, kBlockSize, kKvHeads, kHeadDim});
  in.block_table = mixpa::TensorView::contiguous(block_table.data(), DType::kI32, {kBatch, kMaxBlocks});
  in.context_lens = mixpa::TensorView::contiguous(context_lens.data(), DType::kI32, {kBatch});
  mixpa::Options opt;
  opt.scale = scale;
  std::vector<float> out(std::size_t{kBatch} * kHeads * kHeadDim, -1.0f);
  mixpa::run(in, opt, mixpa::OutputView{out.data(), {kBatch, kHeads, kHeadDim}});

  // The same attention in double precision, over the same bf16 values.
  auto at = [](const std::vector<mixpa::bf16>& cache, int page, int row, int g, int d) {
    return double{cache[((std::size_t(page) * kBlockSize + row) * kKvHeads + g) * kHeadDim + d].to_float()};
  };
  double worst = 0;
  int bad = 0;
  for (int b = 0; b < kBatch; ++b) {
    for (int h = 0; h < kHeads; ++h) {
      const int g = h / (kHeads / kKvHeads);
      const int n = context_lens[b];
      std::vector<double> s(n);
      double m = -INFINITY;
      for (int t = 0; t < n; ++t) {
        const int page = block_table[b * kMaxBlocks + t / kBlockSize], row = t % kBlockSize;
        double dot = 0;
        for (int d = 0; d < kHeadDim; ++d)
          dot += double{q[(std::size_t(b) * kHeads + h) * kHeadDim + d].to_float()} * at(k, page, row, g, d);
        s[t] = scale * dot;
        m = std::fmax(m, s[t]);
      }
      double l = 0;
      for (int t = 0; t < n; ++t) l += (s[t] = std::exp(s[t] - m));
      for (int d = 0; d < kHeadDim; ++d) {
        double ref = 0;
        for (int t = 0; t < n; ++t) ref += s[t] * at(v, block_table[b * kMaxBlocks + t / kBlockSize], t % kBlockSize, g, d);
        if (n > 0) ref /= l;
        const double got = out[(std::size_t(b) * kHeads + h) * kHeadDim + d];
        const double err = std::fabs(got - ref);
        worst = std::fmax(worst, err);
        if (!(err <= 2e-3 + 2e-3 * std::fabs(ref))) ++bad;  // the contract's tolerance (docs/spec.md §1)
      }
    }
  }
  std::printf("mixpa::run (executor auto): max |out - ref| = %.3g over %d values, %d outside tolerance\n", worst,
              kBatch * kHeads * kHeadDim, bad);
  if (bad != 0) return 1;

  // A page id outside [0, num_blocks) must be rejected before anything is written.
  block_table[1] = kNumBlocks;
  std::vector<float> untouched(out.size(), 42.0f);
  try {
    mixpa::run(in, opt, mixpa::OutputView{untouched.data(), {kBatch, kHeads, kHeadDim}});
    std::printf("FAIL: a page id out of range was accepted\n");
    return 1;
  } catch (const mixpa::Error& e) {
    std::printf("rejected as expected: %s\n", e.what());
  }
  for (float x : untouched) {
    if (x != 42.0f) {
      std::printf("FAIL: out was written for an invalid input\n");
      return 1;
    }
  }
  std::printf("cmake_consumer: ok\n");
  return 0;
}
