// The typed elements of a Problem read as float32: the one place a dtype (bf16, f16, e4m3, e5m2)
// becomes a number for the row-at-a-time code paths (reference, exact float64, sim). The SIMD
// paths convert in their loads instead (same values: every conversion here is exact).
#pragma once

#include <cstdint>

#include "core/problem.h"
#include "mixpa/dtype.h"
#include "mixpa/error.h"

namespace mixpa {

// n elements of dtype `t` starting at element `offset` of `base`, as float32 (exact).
inline void widen(DType t, const void* base, std::int64_t offset, std::int64_t n, float* dst) {
  switch (t) {
    case DType::kBF16: {
      const bf16* s = static_cast<const bf16*>(base) + offset;
      for (std::int64_t i = 0; i < n; ++i) dst[i] = s[i].to_float();
      return;
    }
    case DType::kF16: {
      const f16* s = static_cast<const f16*>(base) + offset;
      for (std::int64_t i = 0; i < n; ++i) dst[i] = s[i].to_float();
      return;
    }
    case DType::kF8E4M3: {
      const e4m3* s = static_cast<const e4m3*>(base) + offset;
      for (std::int64_t i = 0; i < n; ++i) dst[i] = s[i].to_float();
      return;
    }
    case DType::kF8E5M2: {
      const e5m2* s = static_cast<const e5m2*>(base) + offset;
      for (std::int64_t i = 0; i < n; ++i) dst[i] = s[i].to_float();
      return;
    }
    default: throw Error("internal: widen() of a non-float dtype");
  }
}

// Query row (b, p, h): head_dim floats.
inline void query_floats(const Problem& pr, std::int64_t b, std::int64_t p, std::int64_t h, float* dst) {
  widen(pr.query_dtype, pr.query_data, ((b * pr.shape.q_len + p) * pr.shape.num_heads + h) * pr.shape.head_dim,
        pr.shape.head_dim, dst);
}
// Cache rows as stored (raw: fp8 values before k_scale / v_scale).
inline void key_floats(const Problem& pr, std::int64_t page, std::int64_t row, std::int64_t kv_head, float* dst) {
  widen(pr.kv_dtype, pr.key_data, pr.key_offset(page, row, kv_head), pr.shape.head_dim, dst);
}
inline void value_floats(const Problem& pr, std::int64_t page, std::int64_t row, std::int64_t kv_head, float* dst) {
  widen(pr.kv_dtype, pr.value_data, pr.value_offset(page, row, kv_head), pr.shape.head_dim, dst);
}

// SPEC §6: P is rounded to bf16 before P·V, to fp16 when the cache is F16.
inline float round_p(DType kv_dtype, float x) { return kv_dtype == DType::kF16 ? round_to_f16(x) : round_to_bf16(x); }

}  // namespace mixpa
