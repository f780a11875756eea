// AVX2/FMA/F16C flavour of the chunk kernel (the design: kernel_avx2_tile.h): the bf16 cache's
// instantiations, the SIMD layer's test entry points, and the entry point that picks the
// cache dtype's kernel (each dtype is its own translation unit, compiled in parallel).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <new>
#include <span>

#include "core/element.h"
#include "cpu/chunk_kernel.h"
#include "cpu/page_run.h"
#include "cpu/scratch.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include "cpu/kernel_avx2_tile.h"

namespace mixpa::cpu {

void attend_avx2_bf16(const ChunkJob& job, const ChunkOut& out) { avx2::attend_rows<bf16>(job, out); }
void attend_group_avx2_bf16(std::span<const ChunkJob> jobs, std::span<const ChunkOut> outs) {
  avx2::attend_group_rows<bf16>(jobs, outs);
}

void tanh_avx2(const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i + avx2::kLanes <= n; i += avx2::kLanes)
    _mm256_storeu_ps(y + i, simd::tanh<avx2::D8>(_mm256_loadu_ps(x + i)));
}

void exp_bf16_avx2(const float* x, float* p, std::int64_t n) {
  for (std::int64_t i = 0; i + avx2::kLanes <= n; i += avx2::kLanes)
    _mm256_storeu_ps(p + i, simd::exp_bf16<avx2::D8>(_mm256_loadu_ps(x + i)));
}

void exp_f16_avx2(const float* x, float* p, std::int64_t n) {
  for (std::int64_t i = 0; i + avx2::kLanes <= n; i += avx2::kLanes)
    _mm256_storeu_ps(p + i, simd::exp_f16<avx2::D8>(_mm256_loadu_ps(x + i)));
}

void attend_group_avx2(std::span<const ChunkJob> jobs, std::span<const ChunkOut> outs) {
  switch (jobs[0].problem->kv_dtype) {
    case DType::kF16: return attend_group_avx2_f16(jobs, outs);
    case DType::kF8E4M3: return attend_group_avx2_e4m3(jobs, outs);
    case DType::kF8E5M2: return attend_group_avx2_e5m2(jobs, outs);
    default: return attend_group_avx2_bf16(jobs, outs);
  }
}

void attend_chunk_avx2(const ChunkJob& job, const ChunkOut& out) {
  switch (job.problem->kv_dtype) {
    case DType::kF16: return attend_avx2_f16(job, out);
    case DType::kF8E4M3: return attend_avx2_e4m3(job, out);
    case DType::kF8E5M2: return attend_avx2_e5m2(job, out);
    default: return attend_avx2_bf16(job, out);  // validate() admits these four cache dtypes only
  }
}

}  // namespace mixpa::cpu

#pragma GCC pop_options
