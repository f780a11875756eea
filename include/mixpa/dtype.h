// Element types mixpa reads and writes, and the bf16 scalar with its rounding rule.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace mixpa {

enum class DType : std::uint8_t { kBF16, kF16, kF32, kF64, kI32 };

constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::kBF16:
    case DType::kF16: return 2;
    case DType::kF32:
    case DType::kI32: return 4;
    case DType::kF64: return 8;
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
  }
  return "?";
}

// bfloat16 as raw bits. Conversion from float rounds to nearest, ties to even;
// NaN stays NaN (quiet bit forced so rounding can never turn it into Inf).
struct bf16 {
  std::uint16_t bits = 0;

  static constexpr bf16 from_bits(std::uint16_t b) { bf16 r; r.bits = b; return r; }

  static constexpr bf16 from_float(float f) {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return from_bits(static_cast<std::uint16_t>((u >> 16) | 0x40u));
    const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return from_bits(static_cast<std::uint16_t>((u + rounding) >> 16));
  }

  constexpr float to_float() const { return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16); }
  constexpr explicit operator float() const { return to_float(); }
};
static_assert(sizeof(bf16) == 2);

// Round a float to the nearest bf16 and back (the kernel's "P rounded to bf16").
constexpr float round_to_bf16(float f) { return bf16::from_float(f).to_float(); }

}  // namespace mixpa
