// Element types mixpa reads and writes, and the bf16 scalar with its rounding rule.
// The public headers compile as C++17 (the library itself is built as C++20).
#pragma once

#if __cplusplus >= 202002L
#include <bit>
#endif
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace mixpa {

namespace detail {
// std::bit_cast where the standard library has it; GCC's and Clang's builtin (the same
// operation, also constexpr) for C++17 consumers.
template <class To, class From>
constexpr To bit_cast(const From& from) noexcept {
  static_assert(sizeof(To) == sizeof(From));
#if defined(__cpp_lib_bit_cast)
  return std::bit_cast<To>(from);
#else
  return __builtin_bit_cast(To, from);
#endif
}
}  // namespace detail

// kF8E4M3 is OCP e4m3fn (bias 7, max 448, no inf, 0x7f/0xff NaN); kF8E5M2 is IEEE-like e5m2
// (bias 15, inf and NaN). Safetensors names: F8_E4M3, F8_E5M2.
enum class DType : std::uint8_t { kBF16, kF16, kF32, kF64, kI32, kI64, kF8E4M3, kF8E5M2 };

constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF8E4M3:
    case DType::kF8E5M2: return 1;
    case DType::kBF16:
    case DType::kF16: return 2;
    case DType::kF32:
    case DType::kI32: return 4;
    case DType::kF64:
    case DType::kI64: return 8;
  }
  return 0;
}

// Names as safetensors spells them ("BF16", "F32", ...).
constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kBF16: return "BF16";
    case DType::kF16: return "F16";
    case DType::kF32: return "F32";
    case DType::kF64: return "F64";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
    case DType::kF8E4M3: return "F8_E4M3";
    case DType::kF8E5M2: return "F8_E5M2";
  }
  return "?";
}

// bfloat16 as raw bits. Conversion from float rounds to nearest, ties to even;
// NaN stays NaN (quiet bit forced so rounding can never turn it into Inf).
struct bf16 {
  std::uint16_t bits = 0;

  static constexpr bf16 from_bits(std::uint16_t b) { bf16 r; r.bits = b; return r; }

  static constexpr bf16 from_float(float f) {
    const std::uint32_t u = detail::bit_cast<std::uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return from_bits(static_cast<std::uint16_t>((u >> 16) | 0x40u));
    const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return from_bits(static_cast<std::uint16_t>((u + rounding) >> 16));
  }

  constexpr float to_float() const { return detail::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16); }
  constexpr explicit operator float() const { return to_float(); }
};
static_assert(sizeof(bf16) == 2);

// Round a float to the nearest bf16 and back (the kernel's "P rounded to bf16").
constexpr float round_to_bf16(float f) { return bf16::from_float(f).to_float(); }

// IEEE binary16 as raw bits. Conversion from float rounds to nearest, ties to even (overflow to
// inf, subnormals kept); NaN stays NaN.
struct f16 {
  std::uint16_t bits = 0;

  static constexpr f16 from_bits(std::uint16_t b) { f16 r; r.bits = b; return r; }

  static constexpr f16 from_float(float f) {
    const std::uint32_t u = detail::bit_cast<std::uint32_t>(f);
    const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
    const std::uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return from_bits(static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu)));
    if (a >= 0x477ff000u) return from_bits(static_cast<std::uint16_t>(sign | 0x7c00u));  // rounds past 65504
    if (a < 0x38800000u) {  // below 2^-14: a subnormal half (or zero), exact multiple of 2^-24 rounded
      if (a < 0x33000000u) return from_bits(sign);  // below 2^-25: rounds to zero
      const std::uint32_t mant = (a & 0x7fffffu) | 0x800000u;
      const int shift = 126 - static_cast<int>(a >> 23);  // 14..24 for exponents -14..-24 (+ the 1 of 2^-14)
      const std::uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
      const std::uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
      return from_bits(static_cast<std::uint16_t>(sign | r));
    }
    const std::uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);
    return from_bits(static_cast<std::uint16_t>(sign | ((rounded - 0x38000000u) >> 13)));
  }

  constexpr float to_float() const {
    const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    const std::uint32_t e = (bits >> 10) & 0x1fu, m = bits & 0x3ffu;
    if (e == 0x1f) return detail::bit_cast<float>(sign | 0x7f800000u | (m << 13));
    if (e != 0) return detail::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
    // subnormal: m * 2^-24, exact in float
    const float v = static_cast<float>(m) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  constexpr explicit operator float() const { return to_float(); }
};
static_assert(sizeof(f16) == 2);

// Round a float to the nearest fp16 and back (P before P·V when the cache is F16).
constexpr float round_to_f16(float f) { return f16::from_float(f).to_float(); }

// 8-bit floats as raw bits (docs/spec.md §6 caches). Decoding is exact in float32; encoding (for
// generating cases) rounds to nearest, ties to even, saturating to the largest finite value
// (e4m3fn has no inf; e5m2 saturates too, the "satfinite" convention of fp8 quantisers).
namespace fp8_detail {
constexpr float decode(std::uint8_t b, int exp_bits, int bias, bool has_inf) {
  const int man_bits = 7 - exp_bits;
  const int e = (b >> man_bits) & ((1 << exp_bits) - 1);
  const int m = b & ((1 << man_bits) - 1);
  const bool neg = (b & 0x80) != 0;
  float v = 0;
  if (has_inf && e == (1 << exp_bits) - 1) {
    v = m == 0 ? detail::bit_cast<float>(0x7f800000u) : detail::bit_cast<float>(0x7fc00000u);
  } else if (!has_inf && e == (1 << exp_bits) - 1 && m == (1 << man_bits) - 1) {
    v = detail::bit_cast<float>(0x7fc00000u);
  } else if (e == 0) {  // subnormal: m * 2^(1 - bias - man_bits)
    v = static_cast<float>(m) * detail::bit_cast<float>(static_cast<std::uint32_t>(127 + 1 - bias - man_bits) << 23);
  } else {
    v = detail::bit_cast<float>((static_cast<std::uint32_t>(e - bias + 127) << 23) |
                             (static_cast<std::uint32_t>(m) << (23 - man_bits)));
  }
  return neg ? -v : v;
}
constexpr std::uint8_t encode(float f, int exp_bits, int bias, float max_finite, std::uint8_t nan_bits) {
  const std::uint32_t u = detail::bit_cast<std::uint32_t>(f);
  const std::uint8_t sign = static_cast<std::uint8_t>((u >> 24) & 0x80u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint8_t>(sign | nan_bits);
  float a = detail::bit_cast<float>(u & 0x7fffffffu);
  if (a >= max_finite) a = max_finite;
  const int man_bits = 7 - exp_bits;
  // Smallest normal exponent is 1 - bias; below it the step is fixed at 2^(1 - bias - man_bits).
  int e = static_cast<int>((detail::bit_cast<std::uint32_t>(a) >> 23) & 0xffu) - 127;
  if (e < 1 - bias) e = 1 - bias;
  const float step = detail::bit_cast<float>(static_cast<std::uint32_t>(e - man_bits + 127) << 23);
  float q = a / step;  // exact (power-of-two step)
  const float fl = static_cast<float>(static_cast<std::uint32_t>(q));
  const float frac = q - fl;
  std::uint32_t n = static_cast<std::uint32_t>(fl);
  if (frac > 0.5f || (frac == 0.5f && (n & 1u))) ++n;
  // n * step, with n in [0, 2^(man_bits+1)]; rebuild the bits
  const float r = static_cast<float>(n) * step;
  if (r == 0) return sign;
  const int re = static_cast<int>((detail::bit_cast<std::uint32_t>(r) >> 23) & 0xffu) - 127;
  if (re < 1 - bias) return static_cast<std::uint8_t>(sign | n);  // subnormal: n < 2^man_bits
  const std::uint32_t mant = (detail::bit_cast<std::uint32_t>(r) >> (23 - man_bits)) & ((1u << man_bits) - 1u);
  return static_cast<std::uint8_t>(sign | (static_cast<std::uint32_t>(re + bias) << man_bits) | mant);
}
}  // namespace fp8_detail

struct e4m3 {
  std::uint8_t bits = 0;
  static constexpr e4m3 from_bits(std::uint8_t b) { e4m3 r; r.bits = b; return r; }
  static constexpr e4m3 from_float(float f) { return from_bits(fp8_detail::encode(f, 4, 7, 448.0f, 0x7f)); }
  constexpr float to_float() const { return fp8_detail::decode(bits, 4, 7, false); }
  constexpr explicit operator float() const { return to_float(); }
};
struct e5m2 {
  std::uint8_t bits = 0;
  static constexpr e5m2 from_bits(std::uint8_t b) { e5m2 r; r.bits = b; return r; }
  static constexpr e5m2 from_float(float f) { return from_bits(fp8_detail::encode(f, 5, 15, 57344.0f, 0x7f)); }
  constexpr float to_float() const { return fp8_detail::decode(bits, 5, 15, true); }
  constexpr explicit operator float() const { return to_float(); }
};
static_assert(sizeof(e4m3) == 1 && sizeof(e5m2) == 1);

static_assert(e4m3::from_bits(0x7e).to_float() == 448.0f && e4m3::from_float(1000.0f).bits == 0x7e);
static_assert(e4m3::from_bits(0x01).to_float() == 0.001953125f && e4m3::from_float(0.001953125f).bits == 0x01);
static_assert(e5m2::from_bits(0x7b).to_float() == 57344.0f && e5m2::from_bits(0x7c).to_float() > 1e38f);
static_assert(e4m3::from_float(1.0625f).bits == 0x38 && e4m3::from_float(1.1875f).bits == 0x3a);  // ties to even
static_assert(f16::from_float(1.0f).bits == 0x3c00 && f16::from_float(65504.0f).bits == 0x7bff &&
              f16::from_float(65520.0f).bits == 0x7c00 && f16::from_bits(0x0001).to_float() == 5.9604644775390625e-08f);
static_assert(f16::from_float(5.9604644775390625e-08f).bits == 0x0001 && f16::from_float(1.0f + 1.0f / 2048).bits == 0x3c00);

}  // namespace mixpa
