// fp8 -> 16-bit conversions of the cuda kernel's dequantisation (SPEC §6: e4m3fn, e5m2), as
// host + device functions: the kernel's compute warps convert each fp8 stage with them and
// the CPU emulation test runs the same bit operations. Every conversion is exact (an fp8
// value is a bf16 value and an fp16 value), so the 16-bit tile holds float(K) and float(V).
//   e5m2 -> f16   the byte is the high byte of the f16 (e5m2 is f16 with 2 mantissa bits)
//   e4m3 -> f16   sign | exponent-and-mantissa >> 1 gives 2^-8 * value (bias 15 vs 7), times
//                 2^8 in f16 (fp16 subnormals are kept: e4m3 subnormals land on normal f16);
//                 sm_89+ has cvt.rn.f16x2.e4m3x2 for the same values (and NaN for 0x7f/0xff)
//   -> bf16       through the f16 value (f16 -> f32 -> bf16, exact for these values)
#pragma once

#include <cstdint>

#include "cuda/tile_layout.h"

// The conversions are device functions under nvcc and host functions under the host compiler
// (the CPU emulation test): each has one body per side, the device one using the PTX.
#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define MIXPA_DEQUANT_FN __device__
#else
#include "mixpa/dtype.h"
#define MIXPA_DEQUANT_FN
#endif

namespace mixpa::cuda {

// Bytes 0, 1 (lo) and 2, 3 (hi) of w, each in the high byte of a 16-bit half.
MIXPA_DEQUANT_FN inline std::uint32_t spread_lo(std::uint32_t w) {
#if defined(__CUDACC__)
  return __byte_perm(w, 0u, 0x1404);
#else
  return ((w & 0xffu) << 8) | ((w & 0xff00u) << 16);
#endif
}
MIXPA_DEQUANT_FN inline std::uint32_t spread_hi(std::uint32_t w) {
#if defined(__CUDACC__)
  return __byte_perm(w, 0u, 0x3424);
#else
  return ((w & 0xff0000u) >> 8) | (w & 0xff000000u);
#endif
}

// Two e4m3 codes (the low 16 bits of `pair`, low byte first) as an f16x2.
MIXPA_DEQUANT_FN inline std::uint32_t e4m3x2_to_f16x2(std::uint32_t pair) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  std::uint32_t r;
  asm("{\n .reg .b16 a;\n cvt.u16.u32 a, %1;\n cvt.rn.f16x2.e4m3x2 %0, a;\n}" : "=r"(r) : "r"(pair));
  return r;
#else
  const std::uint32_t s = spread_lo(pair);
  const std::uint32_t h = (s & 0x80008000u) | ((s >> 1) & 0x3f803f80u);  // 2^-8 * value
#if defined(__CUDACC__)
  std::uint32_t r;
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(h), "r"(0x5c005c00u), "r"(0x80008000u));  // * 2^8 + (-0)
  return r;
#else
  const float lo = f16::from_bits(static_cast<std::uint16_t>(h & 0xffffu)).to_float() * 256.0f;
  const float hi = f16::from_bits(static_cast<std::uint16_t>(h >> 16)).to_float() * 256.0f;
  return std::uint32_t{f16::from_float(lo).bits} | (std::uint32_t{f16::from_float(hi).bits} << 16);
#endif
#endif
}

// An f16x2 as a bf16x2 (round to nearest; exact for the fp8 values that reach it).
MIXPA_DEQUANT_FN inline std::uint32_t f16x2_to_bf16x2(std::uint32_t h) {
#if defined(__CUDACC__)
  const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&h));
  const __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);
  return *reinterpret_cast<const std::uint32_t*>(&b);
#else
  const float lo = f16::from_bits(static_cast<std::uint16_t>(h & 0xffffu)).to_float();
  const float hi = f16::from_bits(static_cast<std::uint16_t>(h >> 16)).to_float();
  return std::uint32_t{bf16::from_float(lo).bits} | (std::uint32_t{bf16::from_float(hi).bits} << 16);
#endif
}

// Four fp8 codes (w, low byte first) as two 16-bit pairs: out[0] = codes 0, 1; out[1] = 2, 3.
// kToBf16: bf16 pairs, else f16 pairs; e5m2: the format (uniform per launch).
template <bool kToBf16>
MIXPA_DEQUANT_FN inline void fp8x4_to_16(std::uint32_t w, bool e5m2, std::uint32_t (&out)[2]) {
  std::uint32_t h0, h1;
  if (e5m2) {
    h0 = spread_lo(w), h1 = spread_hi(w);
  } else {
    h0 = e4m3x2_to_f16x2(w & 0xffffu), h1 = e4m3x2_to_f16x2(w >> 16);
  }
  if (kToBf16) h0 = f16x2_to_bf16x2(h0), h1 = f16x2_to_bf16x2(h1);
  out[0] = h0, out[1] = h1;
}

// One 16-byte fp8 piece (16 codes, in[0] low) as 32 bytes of 16-bit values (out[0..3]: codes
// 0..7, out[4..7]: codes 8..15), in order.
template <bool kToBf16>
MIXPA_DEQUANT_FN inline void fp8_piece_to_16(const std::uint32_t (&in)[4], bool e5m2, std::uint32_t (&out)[8]) {
  for (int i = 0; i < 4; ++i) {
    std::uint32_t pair[2];
    fp8x4_to_16<kToBf16>(in[i], e5m2, pair);
    out[2 * i] = pair[0], out[2 * i + 1] = pair[1];
  }
}

// The dequantisation pass of one compute warp over rows [row0, row0 + 16) of a stage: unit u
// (0 .. 16 * fp8 pieces per row - 1) is fp8 piece u % pieces of row row0 + u / pieces; lane L
// converts units L, L + 32, ... Its source (in the fp8 tile) and its two destinations (16-bit
// pieces 2c and 2c + 1 of the same row in the math tile) are at these byte offsets.
struct DequantUnit {
  int src;
  int dst_lo;
  int dst_hi;
};
MIXPA_HOST_DEVICE constexpr DequantUnit dequant_unit(TileGeometry g, int row0, int u) {
  const int pieces = g.chunks_per_row();
  const int row = row0 + u / pieces, c = u % pieces;
  return {swizzled_offset(g, row, c), swizzled_offset(g.math(), row, 2 * c), swizzled_offset(g.math(), row, 2 * c + 1)};
}
MIXPA_HOST_DEVICE constexpr int dequant_units_per_lane(TileGeometry g) { return 16 * g.chunks_per_row() / 32; }

}  // namespace mixpa::cuda
