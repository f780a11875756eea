// The cube's instruments on a GPU: bf16 / f16 tensor-core MMA (m16n8k16, fp32 accumulate),
// ldmatrix fragment loads from the swizzled ring, and the producer's 16-byte cp.async.
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16), lane = 4 * g + t:
//   A 16x16: a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 8+2t..), a[3] = (g+8, 8+2t..)
//   B 16x8:  b[0] = (k 2t..2t+1, n g), b[1] = (k 8+2t.., n g)
//   C 16x8:  c[0..1] = (g, 2t..2t+1), c[2..3] = (g+8, 2t..2t+1)
// so two adjacent C tiles of S (16 tokens) are, rounded to bf16, exactly one A tile of P.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/smem_pipe.cuh"

namespace mixpa::cuda {

__device__ inline void ldmatrix_x4(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

__device__ inline void ldmatrix_x4_trans(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// d += a * b
__device__ inline void mma_bf16_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// d += a * b, f16 inputs (same fragment layout).
__device__ inline void mma_f16_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The mma of the element type: kF16 ? f16 : bf16.
template <bool kF16>
__device__ inline void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  if constexpr (kF16) mma_f16_16816(d, a, b0, b1);
  else mma_bf16_16816(d, a, b0, b1);
}

// 16 bytes global -> shared, bypassing L1. src_bytes 0 writes zeros and reads nothing
// (rows past the context, out-of-range pages); `src` must still be a valid address.
__device__ inline void cp_async_16(std::uint32_t dst, const void* src, std::uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

// 16 bytes global -> shared, or zeros when `zero` (ignore-src: nothing is read; `src` must
// still be a valid address). The predicate form: no src-size arithmetic per copy.
__device__ inline void cp_async_16_or_zero(std::uint32_t dst, const void* src, bool zero) {
  asm volatile("{\n .reg .pred z;\n setp.ne.b32 z, %2, 0;\n cp.async.cg.shared.global [%0], [%1], 16, z;\n}" ::"r"(dst),
               "l"(src), "r"(static_cast<int>(zero))
               : "memory");
}

// Waits until every cp.async this thread issued has landed.
__device__ inline void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// Two floats rounded to bf16 (round to nearest even), `lo` in the low half: the lower column.
__device__ inline std::uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&v);
}

__device__ inline float bf16_round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// The same for fp16 (P before P.V when the cache is F16).
__device__ inline std::uint32_t pack_f16(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&v);
}
__device__ inline float f16_round(float x) { return __half2float(__float2half_rn(x)); }

template <bool kF16>
__device__ inline std::uint32_t pack_16(float lo, float hi) {
  if constexpr (kF16) return pack_f16(lo, hi);
  else return pack_bf16(lo, hi);
}
template <bool kF16>
__device__ inline float round_16(float x) {
  if constexpr (kF16) return f16_round(x);
  else return bf16_round(x);
}

// Shared memory, 16 bytes at a time (the fp8 dequantisation pass).
__device__ inline void lds_128(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ inline void sts_128(std::uint32_t addr, std::uint32_t a, std::uint32_t b, std::uint32_t c, std::uint32_t d) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}

// Among the compute warps only (the producer never joins): named barrier 1.
__device__ inline void compute_warps_sync(int threads) {
  asm volatile("bar.sync 1, %0;" ::"r"(threads) : "memory");
}

}  // namespace mixpa::cuda
