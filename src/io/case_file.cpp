// The case file format on top of safetensors: five named tensors plus metadata "scale",
// and the output file holding "out". Loading validates the case in full (SPEC §1).
#include <charconv>
#include <cmath>
#include <cstring>
#include <optional>
#include <utility>
#include <sstream>

#include "core/validate.h"
#include "io/safetensors.h"
#include "mixpa/error.h"

namespace mixpa {
namespace {

const StoredTensor& require(const SafetensorsFile& f, const std::string& path, const char* name, DType dtype,
                            std::size_t rank, const char* dims) {
  const StoredTensor* t = f.find(name);
  if (!t) throw Error(path + ": " + name + ": missing (expected " + std::string(dtype_name(dtype)) + " " + dims + ")");
  if (t->dtype != dtype)
    throw Error(path + ": " + name + ": dtype is " + std::string(dtype_name(t->dtype)) + ", expected " +
                std::string(dtype_name(dtype)));
  if (t->shape.size() != rank)
    throw Error(path + ": " + name + ": rank is " + std::to_string(t->shape.size()) + ", expected " +
                std::to_string(rank) + " " + dims);
  return *t;
}

template <class T, class Vector = std::vector<T>>
Vector copy_out(const StoredTensor& t) {
  Vector v(t.bytes.size() / sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), t.bytes.data(), v.size() * sizeof(T));
  return v;
}

template <class T>
StoredTensor stored(std::string name, DType dtype, std::vector<std::int64_t> shape, const T* data, std::size_t n) {
  StoredTensor t{std::move(name), dtype, std::move(shape), {}};
  t.bytes.resize(n * sizeof(T));
  if (n) std::memcpy(t.bytes.data(), data, n * sizeof(T));
  return t;
}

// A metadata number: the whole string must parse (no trailing text, no "0x").
template <class T>
std::optional<T> metadata_number(const SafetensorsFile& f, const std::string& path, const char* key, const char* what) {
  const auto it = f.metadata.find(key);
  if (it == f.metadata.end()) return std::nullopt;
  const std::string& s = it->second;
  T value{};
  const auto r = std::from_chars(s.data(), s.data() + s.size(), value);
  if (r.ec != std::errc{} || r.ptr != s.data() + s.size())
    throw Error(path + ": metadata '" + key + "' = '" + printable(s) + "' is not " + what);
  return value;
}

// An optional f32 vector tensor (alibi_slopes, sinks); its shape is checked by validate().
bool optional_vector(const SafetensorsFile& f, const std::string& path, const char* name, std::vector<float>& values,
                     std::vector<std::int64_t>& shape) {
  const StoredTensor* t = f.find(name);
  if (!t) return false;
  if (t->dtype != DType::kF32)
    throw Error(path + ": " + name + ": dtype is " + std::string(dtype_name(t->dtype)) + ", expected F32 [num_heads]");
  values = copy_out<float>(*t);
  shape = t->shape;
  return true;
}

std::string scale_string(double scale) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, scale);  // shortest round-trip form
  return std::string(buf, r.ptr);
}

}  // namespace

Case load_case(const std::string& path) { return case_from_file(read_safetensors(path), path); }

Case case_from_file(const SafetensorsFile& f, const std::string& path) {
  const auto& q = require(f, path, "query", DType::kBF16, 3, "[batch, num_heads, head_dim]");
  const auto& k = require(f, path, "key_cache", DType::kBF16, 4, "[num_blocks, block_size, num_kv_heads, head_dim]");
  const auto& v = require(f, path, "value_cache", DType::kBF16, 4, "[num_blocks, block_size, num_kv_heads, head_dim]");
  const auto& bt = require(f, path, "block_table", DType::kI32, 2, "[batch, max_blocks_per_req]");
  const auto& cl = require(f, path, "context_lens", DType::kI32, 1, "[batch]");
  if (k.shape != v.shape) throw Error(path + ": value_cache: shape differs from key_cache shape");

  Case c;
  c.has_scale = false;
  if (auto it = f.metadata.find("scale"); it != f.metadata.end()) {
    const std::string& s = it->second;
    double value = 0;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), value);
    if (r.ec != std::errc{} || r.ptr != s.data() + s.size())
      throw Error(path + ": metadata 'scale' = '" + printable(s) + "' is not a decimal number");
    if (!std::isfinite(value)) throw Error(path + ": metadata 'scale' = '" + printable(s) + "' is not finite");
    c.scale = value;
    c.has_scale = true;
  }
  // SPEC §6's variant keys. Values are checked by validate_inputs() with the other options.
  if (auto v = metadata_number<double>(f, path, "softcap", "a decimal number")) {
    if (!std::isfinite(*v))
      throw Error(path + ": metadata 'softcap' = '" + printable(f.metadata.at("softcap")) + "' is not finite");
    c.softcap = *v;
  }
  if (auto v = metadata_number<std::int64_t>(f, path, "window_left", "an integer")) c.window_left = *v;
  for (const char* key : {"k_scale", "v_scale"})
    if (f.metadata.count(key))
      throw Error(path + ": metadata '" + key + "': fp8 scales are only valid with an F8_E4M3/F8_E5M2 cache, "
                  "and key_cache is BF16");
  if (auto it = f.metadata.find("kv_layout"); it != f.metadata.end())
    c.kv_layout = parse_kv_layout(printable(it->second), path + ": metadata 'kv_layout'");
  c.has_alibi = optional_vector(f, path, "alibi_slopes", c.alibi_slopes, c.alibi_shape);
  c.has_sinks = optional_vector(f, path, "sinks", c.sinks, c.sinks_shape);

  c.query = copy_out<bf16>(q);
  c.key_cache = copy_out<bf16, KvVector>(k);
  c.value_cache = copy_out<bf16, KvVector>(v);
  c.block_table = copy_out<std::int32_t>(bt);
  c.context_lens = copy_out<std::int32_t>(cl);
  c.stored_shapes = {q.shape, k.shape, v.shape, bt.shape, cl.shape};

  // Every rule run() checks on inputs, by the same code (validate_inputs()), before anything
  // is derived from the shapes: so a file that loads (CLI, Python load_case) is one run()
  // accepts, and its arrays are exactly as large as their buffers.
  Problem problem;
  try {
    Options options;
    if (c.has_scale) options.scale = c.scale;
    c.apply_variant(options);
    problem = validate_inputs(c.inputs(), options);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  const Shape& s = problem.shape;  // block_size and num_kv_heads as the layout places them
  c.spec.name = path;
  c.spec.batch = s.batch;
  c.spec.num_heads = s.num_heads;
  c.spec.head_dim = s.head_dim;
  c.spec.block_size = s.block_size;
  c.spec.num_kv_heads = s.num_kv_heads;
  c.num_blocks = s.num_blocks;
  c.max_blocks_per_req = s.max_blocks_per_req;
  c.spec.num_blocks = c.num_blocks;
  c.spec.max_model_len = c.max_blocks_per_req * c.spec.block_size;
  c.spec.context_lens = c.context_lens;
  c.spec.scale = c.scale;
  c.spec.softcap = c.softcap;
  c.spec.window_left = c.window_left;
  return c;
}

void save_case(const std::string& path, const Case& c) {
  const Inputs in = c.inputs();
  auto shape_of = [](const TensorView& t) { return std::vector<std::int64_t>(t.shape.begin(), t.shape.begin() + t.rank); };
  SafetensorsFile f;
  if (c.has_scale) f.metadata["scale"] = scale_string(c.scale);
  if (c.softcap != 0) f.metadata["softcap"] = scale_string(c.softcap);
  if (c.window_left != -1) f.metadata["window_left"] = std::to_string(c.window_left);
  if (c.kv_layout == KvLayout::kHND) f.metadata["kv_layout"] = "HND";
  if (c.has_alibi) f.tensors.push_back(stored("alibi_slopes", DType::kF32, c.alibi_shape, c.alibi_slopes.data(), c.alibi_slopes.size()));
  if (c.has_sinks) f.tensors.push_back(stored("sinks", DType::kF32, c.sinks_shape, c.sinks.data(), c.sinks.size()));
  f.tensors.push_back(stored("query", DType::kBF16, shape_of(in.query), c.query.data(), c.query.size()));
  f.tensors.push_back(stored("key_cache", DType::kBF16, shape_of(in.key_cache), c.key_cache.data(), c.key_cache.size()));
  f.tensors.push_back(
      stored("value_cache", DType::kBF16, shape_of(in.value_cache), c.value_cache.data(), c.value_cache.size()));
  f.tensors.push_back(
      stored("block_table", DType::kI32, shape_of(in.block_table), c.block_table.data(), c.block_table.size()));
  f.tensors.push_back(
      stored("context_lens", DType::kI32, shape_of(in.context_lens), c.context_lens.data(), c.context_lens.size()));
  write_safetensors(path, f);
}

void save_output(const std::string& path, const float* out, std::int64_t batch, std::int64_t num_heads,
                 std::int64_t head_dim, const float* lse) {
  SafetensorsFile f;
  f.tensors.push_back(stored("out", DType::kF32, {batch, num_heads, head_dim}, out,
                             static_cast<std::size_t>(batch * num_heads * head_dim)));
  if (lse)
    f.tensors.push_back(stored("lse", DType::kF32, {batch, num_heads}, lse, static_cast<std::size_t>(batch * num_heads)));
  write_safetensors(path, f);
}

}  // namespace mixpa
