// The one table of cases (the origin's scene cases plus benchmark shapes) and the
// deterministic generator that turns a case spec + seed into tensors. Unit tests, scene
// tests, the CLI (`mixpa gen` / `run --case`), benchmarks and Python all draw from here.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mixpa/memory.h"
#include "mixpa/paged_attention.h"

namespace mixpa {

struct CaseSpec {
  std::string name;
  std::int64_t batch = 1;
  std::int64_t num_heads = 16;
  std::int64_t num_kv_heads = 1;
  std::int64_t head_dim = 128;
  std::int64_t block_size = 128;
  std::vector<std::int32_t> context_lens{8192};  // repeated or cut to batch (SPEC §4)
  std::int64_t max_model_len = 32768;            // max_blocks_per_req = ceil(max_model_len / block_size)
  std::int64_t num_blocks = 0;                   // 0 = batch * ceil(max(context_lens) / block_size)
  double scale = 1.0;                            // stored in the case file's metadata
  // Value ranges: query and keys ~ U(-qk_range, qk_range), values ~ U(-v_range, v_range).
  double qk_range = 0.5;
  double v_range = 1.0;
  // The variant of SPEC §6, stored in case files (metadata softcap / window_left, tensors
  // alibi_slopes / sinks [num_heads]; empty = none).
  double softcap = 0.0;
  std::int64_t window_left = -1;
  std::vector<float> alibi_slopes;
  std::vector<float> sinks;
  // Dtypes and shapes of SPEC §6. q_len > 1 stores the query as [batch, q_len, num_heads,
  // head_dim] (q_len 1: [batch, num_heads, head_dim]); context lengths must be 0 or >= q_len.
  std::int64_t q_len = 1;
  DType query_dtype = DType::kBF16;  // kBF16 or kF16
  DType kv_dtype = DType::kBF16;     // kBF16, kF16, kF8E4M3 or kF8E5M2
  // fp8 caches only: the stored values are uniform / scale, so the dequantised values keep the
  // ranges above; 0 = not given (1, and absent from a case file).
  double k_scale = 0.0;
  double v_scale = 0.0;
  bool int64_indices = false;        // block_table / context_lens as int64
};

// The origin's cases (SPEC §4) and the benchmark shapes; the first three are the origin's.
std::span<const CaseSpec> case_table();
// Looks a case up by name; throws mixpa::Error listing the known names.
const CaseSpec& find_case(std::string_view name);

// Owning tensors of one generated case. The element storage used depends on the spec's dtypes:
// bf16 tensors live in `query` / `key_cache` / `value_cache`, the others in the byte vectors
// (the bf16 ones are then empty); query_data() / key_data() / value_data() point at either.
struct Case {
  CaseSpec spec;
  std::vector<bf16> query;        // bf16 query: [batch, (q_len,) num_heads, head_dim]
  KvVector key_cache;    // bf16 caches: [num_blocks, block_size, num_kv_heads, head_dim], on huge pages
  KvVector value_cache;  // same
  std::vector<std::uint8_t> query_bytes;  // F16 query (raw elements)
  KvBytes key_bytes, value_bytes;         // F16 / F8 caches (raw elements), on huge pages
  std::vector<std::int32_t> block_table;   // [batch, max_blocks_per_req] (int32 values, always filled)
  std::vector<std::int32_t> context_lens;  // [batch]
  std::vector<std::int64_t> block_table64, context_lens64;  // spec.int64_indices: what inputs() hands out
  std::int64_t num_blocks = 0;
  std::int64_t max_blocks_per_req = 0;
  double scale = 1.0;
  bool has_scale = true;
  // The variant: soft-cap and window go into Options (apply_variant), the vectors into inputs().
  double softcap = 0.0;
  std::int64_t window_left = -1;
  KvLayout kv_layout = KvLayout::kNHD;  // of the stored caches (generated cases are NHD)
  bool has_alibi = false, has_sinks = false;
  std::vector<float> alibi_slopes, sinks;
  std::vector<std::int64_t> alibi_shape, sinks_shape;  // as stored (validate() checks them)
  // Shapes as stored in a case file (query, key_cache, value_cache, block_table, context_lens);
  // empty for generated cases. inputs() uses them so that validate() sees the file's shapes.
  std::vector<std::vector<std::int64_t>> stored_shapes;  // false for a case file without a "scale" entry: use 1/sqrt(head_dim)

  Inputs inputs() const;
  // Sets options.softcap, window_left, kv_layout and (fp8) k_scale / v_scale from the case (a
  // CLI flag may override after).
  void apply_variant(Options& options) const;
  Inputs tensor_inputs() const;  // the five tensors of SPEC §1 only
  const void* query_data() const;
  const void* key_data() const;
  const void* value_data() const;
  std::int64_t out_elements() const { return spec.batch * spec.q_len * spec.num_heads * spec.head_dim; }
  std::int64_t lse_elements() const { return spec.batch * spec.q_len * spec.num_heads; }
  // The output view shape: [batch, num_heads, head_dim] with q_len (OutputView).
  OutputView output_view(float* out, float* lse = nullptr) const {
    return OutputView{out, {spec.batch, spec.num_heads, spec.head_dim}, lse, spec.q_len};
  }
  // Bytes of K and V a kernel must read: every used page's rows of every kv head (context only).
  std::int64_t kv_bytes_read() const;
};

// Deterministic in (spec, seed): the same bytes for every thread count and platform.
// `progress` (may be empty) gets the fraction done, possibly from a helper thread.
Case generate_case(const CaseSpec& spec, std::uint64_t seed, const std::function<void(double)>& progress = {});

// c's caches (any dtype) restored HND ([num_blocks, num_kv_heads, block_size, head_dim]; generated
// cases are NHD): the same values, kv_layout and the stored shapes that validate() reads set to
// match.
void restore_hnd(Case& c);

}  // namespace mixpa
