// The SPEC §6 dtypes and shapes the cuda kernels must get right, as one list shared by the
// CPU emulation test (kernel_emulation_test.cpp) and the GPU tests (cuda_test.cpp): every
// kernel dtype (f16; e4m3 / e5m2 caches with a bf16 and an f16 query, with k/v scales),
// q_len 1 / 4 / 16 with GQA (both q_tiles), head_dims 16 / 80 / 96 / 256 (padded kernels),
// block sizes 1 / 8 / 256, int64 indices, mixed with the variants; context 0, contexts equal
// to q_len, partial pages, and shapes that split on a small device.
#pragma once

#include <string>
#include <vector>

#include "common/check.h"

namespace mixpa::testing {

inline CaseSpec serving(CaseSpec s, DType query, DType kv, std::int64_t q_len = 1, bool int64_indices = false,
                        double k_scale = 0, double v_scale = 0) {
  s.query_dtype = query;
  s.kv_dtype = kv;
  s.q_len = q_len;
  s.int64_indices = int64_indices;
  s.k_scale = k_scale;
  s.v_scale = v_scale;
  return s;
}

inline std::vector<CaseSpec> cuda_serving_specs() {
  constexpr DType B = DType::kBF16, H = DType::kF16, E4 = DType::kF8E4M3, E5 = DType::kF8E5M2;
  return {
      // dtypes (q_len 1)
      serving(small_spec("f16", 3, 32, 4, 128, 32, {70, 1, 257}), H, H),
      serving(small_spec("e4m3_bf16q", 3, 32, 4, 128, 32, {70, 1, 257}), B, E4, 1, false, 0.5, 3.0),
      serving(small_spec("e5m2_bf16q", 3, 16, 2, 64, 16, {45, 0, 130}), B, E5, 1, false, 2.0, 0.25),
      serving(small_spec("e4m3_f16q", 2, 16, 1, 128, 64, {200, 9}), H, E4),
      serving(small_spec("e5m2_f16q_split", 2, 16, 2, 128, 16, {1500, 40}), H, E5, 1, false, 0.75, 1.5),
      serving(small_spec("e4m3_hd256", 2, 8, 1, 256, 32, {300, 33}), B, E4, 1, false, 1.25, 0.5),
      serving(small_spec("e4m3_q64", 2, 64, 1, 64, 16, {130, 5}), B, E4),
      serving(small_spec("f16_q64_hd256", 1, 64, 1, 256, 32, {100}), H, H),
      // q_len (GQA 32/8: 16 rows per kv head at q_len 4, 64 at q_len 16 = the q_tile-64 kernels)
      serving(small_spec("qlen4_gqa32_8", 3, 32, 8, 128, 16, {4, 37, 300}), B, B, 4),
      serving(small_spec("qlen16_gqa32_8", 2, 32, 8, 64, 32, {16, 200}), B, B, 16),
      serving(small_spec("qlen16_mha", 3, 4, 4, 128, 16, {16, 0, 90}), B, B, 16),
      serving(small_spec("qlen4_split", 1, 16, 2, 128, 32, {2000}), B, B, 4),
      serving(small_spec("qlen3_odd_group", 2, 9, 3, 64, 16, {3, 50}), B, B, 3),
      // head_dim (64 / 128 / 256 kernels, padded) and block sizes
      serving(small_spec("hd16", 2, 8, 2, 16, 16, {40, 17}), B, B),
      serving(small_spec("hd80", 2, 8, 1, 80, 32, {100, 7}), B, B),
      serving(small_spec("hd96_split", 1, 16, 4, 96, 16, {1300}), B, B),
      serving(small_spec("hd192_q64", 1, 64, 1, 192, 16, {70}), B, B),
      serving(small_spec("bs1", 2, 8, 2, 64, 1, {37, 5}), B, B),
      serving(small_spec("bs8", 3, 16, 2, 128, 8, {0, 70, 9}), B, B),
      serving(small_spec("bs256", 2, 16, 1, 128, 256, {300, 257}), B, B),
      serving(small_spec("bs24", 2, 16, 2, 64, 24, {100, 23}), B, B),
      serving(small_spec("int64", 2, 16, 2, 128, 32, {90, 33}), B, B, 1, true),
      // mixed with each other and with the variants
      with_variant(serving(small_spec("mix_qlen4_e4m3", 3, 16, 4, 80, 8, {4, 0, 61}), B, E4, 4, true, 0.5, 2.0), 0, 5,
                   false, true),
      with_variant(serving(small_spec("mix_f16_qlen8", 2, 16, 2, 96, 1, {8, 29}), H, H, 8), 1.5, -1, true, false),
      with_variant(serving(small_spec("mix_qlen16_e5m2", 1, 32, 8, 96, 16, {700}), B, E5, 16, false, 1.0, 1.0), 0, 20,
                   false, false),
      with_variant(serving(small_spec("mix_qlen2_split", 2, 8, 1, 128, 16, {2600, 2}), H, E4, 2, true), 2.0, 1500, true,
                   true),
  };
}

}  // namespace mixpa::testing
