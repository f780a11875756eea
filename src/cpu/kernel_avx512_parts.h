// Pieces of the AVX-512F (fp32 FMA) kernels, wide and narrow: widening bf16 rows to fp32 in
// "position" order and rounding P to bf16. Include only after the flavour's
// `#pragma GCC target`; everything here has internal linkage.
#pragma once

#include "cpu/x86_intrinsics.h"

#include <cstdint>

#include "cpu/simd_avx512.h"
#include "core/problem.h"
#include "mixpa/dtype.h"

namespace mixpa::cpu::avx512 {
namespace {

constexpr int kLanes = 16;

// Widening reads 32 bf16 (64 bytes) at a time as 16 words: x << 16 is the even element of each
// word, x & 0xffff0000 the odd one, both exact in fp32. Position p of a row holds, per chunk of
// 32, the even elements first (positions 0-15 = dims 0, 2, .., 30) then the odd ones.
inline std::int64_t position_dim(std::int64_t pos) {
  const std::int64_t q = pos % 32;
  return pos - q + (q < 16 ? 2 * q : 2 * (q - 16) + 1);
}

// One 32-element chunk (64 bytes of bf16) widened: positions 0-15 (its even elements) and
// 16-31 (its odd elements).
inline void widen_chunk(__m512i x, __m512& even, __m512& odd) {
  even = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
  odd = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

// dst[0, dim) = the bf16 row src in position order; dim is a multiple of 32.
inline void widen_row(const bf16* src, float* dst, std::int64_t dim) {
  for (std::int64_t c = 0; c < dim; c += 32) {
    __m512 even, odd;
    widen_chunk(_mm512_loadu_si512(src + c), even, odd);
    _mm512_store_ps(dst + c, even);
    _mm512_store_ps(dst + c + 16, odd);
  }
}

// dst[0, dim) in dim order from a row in position order whose position p is src[p * stride].
inline void store_dim_order(const float* src, std::int64_t stride, float* dst, std::int64_t dim) {
  for (std::int64_t c = 0; c < dim; c += 32)
    for (int i = 0; i < 16; ++i) {
      dst[c + 2 * i] = src[(c + i) * stride];
      dst[c + 2 * i + 1] = src[(c + 16 + i) * stride];
    }
}

// How the fp32 kernels (wide and narrow) widen each cache dtype (SPEC §6), fused into their K/V
// loads: rows of fp32 `kFactor` times smaller than float(K) (exactly), in an order of positions
// Q and O share. The same values as the avx2 tile's CacheRow (kernel_avx2_tile.h). `pair` widens
// the 32 elements from src in registers: positions [0, 16) and [16, 32) of that chunk.
template <class KV>
struct CacheRow512;

template <>
struct CacheRow512<bf16> {
  static constexpr float kFactor = 1.0f;
  static constexpr bool kF16P = false;
  static std::int64_t position_dim(std::int64_t p) { return avx512::position_dim(p); }
  static void widen(const bf16* src, float* dst, std::int64_t dim) { widen_row(src, dst, dim); }
  static void pair(const bf16* src, __m512& a, __m512& b) { widen_chunk(_mm512_loadu_si512(src), a, b); }
};

// 16 fp16 bit patterns to fp32 (exact).
inline void store_halves(__m256i h, float* dst) { _mm512_store_ps(dst, _mm512_cvtph_ps(h)); }
inline __m256i load_halves(const void* src) { return _mm256_loadu_si256(static_cast<const __m256i*>(src)); }

template <>
struct CacheRow512<f16> {
  static constexpr float kFactor = 1.0f;
  static constexpr bool kF16P = true;  // P rounded to fp16 for F16 caches
  static std::int64_t position_dim(std::int64_t p) { return p; }
  static void widen(const f16* src, float* dst, std::int64_t dim) {
    for (std::int64_t c = 0; c < dim; c += 16) store_halves(load_halves(src + c), dst + c);
  }
  static void pair(const f16* src, __m512& a, __m512& b) {
    a = _mm512_cvtph_ps(load_halves(src));
    b = _mm512_cvtph_ps(load_halves(src + 16));
  }
};

// 16 fp8 bytes as w = byte << 8 in 16-bit lanes.
inline __m256i fp8_words(const std::uint8_t* src) {
  return _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))), 8);
}

template <>
struct CacheRow512<e5m2> {
  static constexpr float kFactor = 1.0f;
  static constexpr bool kF16P = false;
  static std::int64_t position_dim(std::int64_t p) { return p; }
  static void widen(const e5m2* src, float* dst, std::int64_t dim) {  // e5m2 is the high byte of an fp16
    for (std::int64_t c = 0; c < dim; c += 16) store_halves(fp8_words(&src[c].bits), dst + c);
  }
  static void pair(const e5m2* src, __m512& a, __m512& b) {
    a = _mm512_cvtph_ps(fp8_words(&src[0].bits));
    b = _mm512_cvtph_ps(fp8_words(&src[16].bits));
  }
};

template <>
struct CacheRow512<e4m3> {
  static constexpr float kFactor = 256.0f;
  static constexpr bool kF16P = false;
  static std::int64_t position_dim(std::int64_t p) { return p; }
  // w = byte << 8 -> the fp16 of value / 256: sign, then the 7 exponent/mantissa bits shifted
  // into an fp16's (subnormals included); 0x7f / 0xff become NaN.
  static __m256i halves(const e4m3* src) {
    const __m256i w = fp8_words(&src[0].bits);
    const __m256i h = _mm256_and_si256(_mm256_srai_epi16(w, 1), _mm256_set1_epi16(static_cast<short>(0xbf80)));
    const __m256i nan = _mm256_cmpeq_epi16(_mm256_slli_epi16(w, 1), _mm256_set1_epi16(static_cast<short>(0xfe00)));
    return _mm256_or_si256(h, nan);
  }
  static void widen(const e4m3* src, float* dst, std::int64_t dim) {
    for (std::int64_t c = 0; c < dim; c += 16) store_halves(halves(src + c), dst + c);
  }
  static void pair(const e4m3* src, __m512& a, __m512& b) {
    a = _mm512_cvtph_ps(halves(src));
    b = _mm512_cvtph_ps(halves(src + 16));
  }
};

// Query row (new token t, head h) of request b (bf16 or f16) as fp32 in dim order.
inline void query_floats(const Problem& pr, std::int64_t b, std::int64_t t, std::int64_t h, float* dst) {
  const std::int64_t d = pr.shape.head_dim;
  if (pr.query_dtype == DType::kF16) {
    const f16* q = pr.query_row_as<f16>(b, t, h);
    for (std::int64_t c = 0; c < d; c += 16) store_halves(load_halves(q + c), dst + c);
  } else {
    const bf16* q = pr.query_row_as<bf16>(b, t, h);
    for (std::int64_t i = 0; i < d; ++i) dst[i] = q[i].to_float();
  }
}

// P = bf16(exp(x)) for x <= 0 (x = score - running max), kept in fp32: simd.h's one-rounding
// exp (11 instructions instead of exp512's 11 plus 5 for an integer bf16 rounding; one
// vrndscaleps is the rounding).
inline __m512 exp_bf16(__m512 x) { return simd::exp_bf16<simd::Avx512>(x); }

}  // namespace
}  // namespace mixpa::cpu::avx512
