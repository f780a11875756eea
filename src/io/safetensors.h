// safetensors read/write (BF16, F16, F32, I32, F64; __metadata__) and the case file format.
// Reading is robust to truncated or corrupt files: a clear mixpa::Error, bounded allocation.
// Writing goes to a temporary name in the same directory and is renamed on success, so a
// failed write never leaves a partial file behind.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <map>
#include <string>
#include <vector>

#include "core/cases.h"
#include "mixpa/dtype.h"

namespace mixpa {

struct StoredTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> bytes;  // little-endian, row-major
};

struct SafetensorsFile {
  std::map<std::string, std::string> metadata;
  std::vector<StoredTensor> tensors;  // in file order
  const StoredTensor* find(const std::string& name) const;
};

SafetensorsFile read_safetensors(const std::string& path);
// Parses an in-memory file image; `origin` names it in error messages.
SafetensorsFile parse_safetensors(const std::byte* data, std::size_t size, const std::string& origin);
void write_safetensors(const std::string& path, const SafetensorsFile& file);

// The case format: tensors query, key_cache, value_cache, block_table, context_lens, and
// optionally alibi_slopes, sinks (F32 [num_heads]); metadata "scale", "softcap" (decimal
// strings), "window_left" (integer) and "kv_layout" (NHD). load_case checks presence and dtypes of the tensors
// with the same one-line messages as validate(); the rest of SPEC §1 is checked by run().
Case load_case(const std::string& path);
Case case_from_file(const SafetensorsFile& file, const std::string& origin);  // load_case without the disk
void save_case(const std::string& path, const Case& c);

// The output format: F32 "out" [batch, num_heads, head_dim] and, when given, F32 "lse"
// [batch, num_heads] (natural log, -inf for a row that sees no token).
void save_output(const std::string& path, const float* out, std::int64_t batch, std::int64_t num_heads,
                 std::int64_t head_dim, const float* lse = nullptr);

}  // namespace mixpa
