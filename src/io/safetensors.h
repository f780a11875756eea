// safetensors read/write (BF16, F16, F32, F64, I32, I64, F8_E4M3, F8_E5M2; __metadata__) and the case file format.
// Reading is robust to truncated or corrupt files: a clear mixpa::Error, bounded allocation.
// Writing goes through AtomicFileWriter (io/atomic_file.h): an exclusive temporary beside the
// target, renamed on success, so a failed or concurrent write never leaves a partial file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <map>
#include <string>
#include <string_view>
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

// Reads a regular file (a directory, FIFO or device is refused by name).
SafetensorsFile read_safetensors(const std::string& path);
// Parses an in-memory file image; `origin` names it in error messages.
SafetensorsFile parse_safetensors(const std::byte* data, std::size_t size, const std::string& origin);
void write_safetensors(const std::string& path, const SafetensorsFile& file);

// A string from a file, fit for a one-line message: control characters, NUL, backslash and
// quote become \xNN, and anything past `max_chars` is cut (with the full length noted).
std::string printable(std::string_view s, std::size_t max_chars = 64);

// The case format (SPEC §1 and §6): tensors query (BF16 or F16, [batch, num_heads, head_dim]
// or [batch, q_len, num_heads, head_dim]), key_cache / value_cache (BF16, F16, F8_E4M3 or
// F8_E5M2, one dtype), block_table / context_lens (I32 or I64, one dtype), and optionally
// alibi_slopes, sinks (F32 [num_heads]); metadata "scale", "softcap", "k_scale", "v_scale"
// (decimal strings; the scales only with an fp8 cache, positive and finite), "window_left"
// (integer) and "kv_layout" (NHD or HND). load_case validates the case
// in full with validate_inputs() (SPEC §1 and §6: shapes, dtypes, page ids, context lengths,
// scale and variant), the same code run() uses, and throws mixpa::Error prefixed with the
// file's name; a loaded Case's inputs() match its buffers.
Case load_case(const std::string& path);
Case case_from_file(const SafetensorsFile& file, const std::string& origin);  // load_case without the disk
void save_case(const std::string& path, const Case& c);

// The output format: F32 "out" of `out_shape`, the query's shape ([batch, num_heads, head_dim]
// or [batch, q_len, num_heads, head_dim]) and, when given, F32 "lse" of that shape without
// head_dim ([batch, (q_len,) num_heads]; natural log, -inf for a row that sees no token).
void save_output(const std::string& path, const float* out, const std::vector<std::int64_t>& out_shape,
                 const float* lse = nullptr);

}  // namespace mixpa
