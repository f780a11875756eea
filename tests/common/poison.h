// NaN / Inf in every cache row no query row of a case sees (past the contexts, before every
// row's window, pages no request uses): an executor that reads them, or multiplies them by a
// zero probability, turns its output into NaN.
#pragma once

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/check.h"

namespace mixpa::testing {

// Poisons the unseen rows of a generated (NHD, contiguous) case in place; returns how many
// cache rows (of all kv heads) it poisoned.
inline std::int64_t poison_unused_cache_rows(Case& c) {
  const CaseSpec& spec = c.spec;
  std::vector<float> dummy(static_cast<std::size_t>(c.out_elements()));
  const Problem pr = validate(c.inputs(), case_options(c, {}), c.output_view(dummy.data()));
  std::vector<bool> used(static_cast<std::size_t>(c.num_blocks * spec.block_size), false);
  for (std::int64_t b = 0; b < spec.batch; ++b)
    for (std::int64_t p = 0; p < spec.q_len; ++p) {
      const TokenRange seen = pr.row_visible(b, p);
      for (std::int64_t t = seen.begin; t < seen.end; ++t)
        used[static_cast<std::size_t>(pr.page(b, t / spec.block_size) * spec.block_size + t % spec.block_size)] = true;
    }
  const std::int64_t row_elems = spec.num_kv_heads * spec.head_dim;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::int64_t poisoned = 0;
  for (std::size_t r = 0; r < used.size(); ++r) {
    if (used[r]) continue;
    ++poisoned;
    for (std::int64_t e = 0; e < row_elems; ++e) {
      const std::size_t i = r * static_cast<std::size_t>(row_elems) + static_cast<std::size_t>(e);
      const float kv = e % 2 ? inf : -nan;
      switch (spec.kv_dtype) {
        case DType::kBF16:
          c.key_cache[i] = bf16::from_float(nan);
          c.value_cache[i] = bf16::from_float(kv);
          break;
        case DType::kF16: {
          const f16 k = f16::from_float(nan), v = f16::from_float(kv);
          std::memcpy(&c.key_bytes[2 * i], &k, 2);
          std::memcpy(&c.value_bytes[2 * i], &v, 2);
          break;
        }
        case DType::kF8E4M3:  // no inf: 0x7f / 0xff are NaN
          c.key_bytes[i] = 0x7f;
          c.value_bytes[i] = e % 2 ? 0xff : 0x7f;
          break;
        default:  // e5m2: 0x7c inf, 0x7e NaN
          c.key_bytes[i] = 0x7e;
          c.value_bytes[i] = e % 2 ? 0x7c : 0xfe;
          break;
      }
    }
  }
  return poisoned;
}

}  // namespace mixpa::testing
