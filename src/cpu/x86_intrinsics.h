// The x86 intrinsics the SIMD kernel flavours are written in. Normally <immintrin.h>, used under
// each flavour's `#pragma GCC target`. With MIXPA_CPU_EMULATED (the test-only build
// test_cpu_emulated, tests/cpu_emulated) the same names come from SIMDe's portable
// implementations instead, compiled for baseline x86-64, so the avx512 and avx512bf16 kernels'
// exact code runs (slowly) on a CPU without AVX-512; the kernels then skip their target pragma
// (MIXPA_CPU_NATIVE is 0) and live in namespace mixpa::cpu::emulated (chunk_kernel.h).
#pragma once

#if defined(MIXPA_CPU_EMULATED)
#define MIXPA_CPU_NATIVE 0
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>

#include <cmath>
#include <cstdint>
#include <cstring>

// Mask types SIMDe names only with its prefix.
using __mmask8 = simde__mmask8;
using __mmask16 = simde__mmask16;
using __mmask32 = simde__mmask32;

#ifndef _MM_FROUND_NO_EXC
#define _MM_FROUND_NO_EXC SIMDE_MM_FROUND_NO_EXC
#endif

// SIMDe 0.7.4 has vdpbf16ps but not the two bf16 conversions: round to nearest even, NaN kept
// quiet, as the instructions do (DAZ does not matter for the kernels' finite, normal P).
namespace mixpa::cpu::emulation {
inline std::uint16_t bf16_bits_rne(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
}  // namespace mixpa::cpu::emulation

// Words 0-15 of the result hold b's 16 floats as bf16, words 16-31 a's.
inline __m512bh _mm512_cvtne2ps_pbh(__m512 a, __m512 b) {
  float fa[16], fb[16];
  std::uint16_t w[32];
  std::memcpy(fa, &a, 64);
  std::memcpy(fb, &b, 64);
  for (int i = 0; i < 16; ++i) {
    w[i] = mixpa::cpu::emulation::bf16_bits_rne(fb[i]);
    w[16 + i] = mixpa::cpu::emulation::bf16_bits_rne(fa[i]);
  }
  __m512bh r;
  std::memcpy(&r, w, 64);
  return r;
}

inline __m256bh _mm512_cvtneps_pbh(__m512 a) {
  float fa[16];
  std::uint16_t w[16];
  std::memcpy(fa, &a, 64);
  for (int i = 0; i < 16; ++i) w[i] = mixpa::cpu::emulation::bf16_bits_rne(fa[i]);
  __m256bh r;
  std::memcpy(&r, w, 32);
  return r;
}
// SIMDe 0.7.4's vrndscaleps ignores the scale bits (imm >> 4) and, with _MM_FROUND_NO_EXC set,
// the rounding mode too (roundscale(-1.2, floor | no-exc) gave -1.5, roundscale(1.3, 2^-7 steps)
// gave 1): the instruction's definition instead, 2^-M * round_mode(2^M * x), exact for finite x.
inline __m512 mixpa_emulated_roundscale_ps(__m512 a, int imm) {
  float f[16];
  std::memcpy(f, &a, 64);
  const int m = (imm >> 4) & 15, mode = (imm & 4) != 0 ? 0 : imm & 3;
  for (float& x : f) {
    if (!std::isfinite(x)) continue;
    const float y = std::ldexp(x, m);
    const float r = mode == 0 ? std::nearbyint(y) : mode == 1 ? std::floor(y) : mode == 2 ? std::ceil(y) : std::trunc(y);
    x = std::ldexp(r, -m);
  }
  __m512 r;
  std::memcpy(&r, f, 64);
  return r;
}
#undef _mm512_roundscale_ps
#define _mm512_roundscale_ps(a, imm) mixpa_emulated_roundscale_ps((a), (imm))

// SIMDe 0.7.4 has the 256-bit F16C conversions only: the 512-bit ones as two of them.
inline __m512 _mm512_cvtph_ps(__m256i h) {
  __m128i half[2];
  std::memcpy(half, &h, 32);
  const __m256 lo = _mm256_cvtph_ps(half[0]), hi = _mm256_cvtph_ps(half[1]);
  __m512 r;
  std::memcpy(&r, &lo, 32);
  std::memcpy(reinterpret_cast<char*>(&r) + 32, &hi, 32);
  return r;
}
#define _mm512_cvtps_ph(a, imm) mixpa_emulated_cvtps_ph((a), (imm))
inline __m256i mixpa_emulated_cvtps_ph(__m512 a, int) {  // round to nearest even: the kernels' only mode
  __m256 f[2];
  std::memcpy(f, &a, 64);
  const __m128i lo = _mm256_cvtps_ph(f[0], 0), hi = _mm256_cvtps_ph(f[1], 0);
  __m256i r;
  std::memcpy(&r, &lo, 16);
  std::memcpy(reinterpret_cast<char*>(&r) + 16, &hi, 16);
  return r;
}
#else
#define MIXPA_CPU_NATIVE 1
#include <immintrin.h>
#endif
