// The case file format on top of safetensors: five named tensors plus metadata "scale" and
// the variant / dtype keys of SPEC §6, and the output file holding "out" and "lse". Loading
// validates the case in full (SPEC §1 and §6).
#include <algorithm>
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

// "BF16 or F16", "BF16, F16, F8_E4M3 or F8_E5M2".
std::string dtype_list(std::initializer_list<DType> dtypes) {
  std::string s;
  std::size_t i = 0;
  for (DType t : dtypes) {
    if (i > 0) s += i + 1 == dtypes.size() ? " or " : ", ";
    s += dtype_name(t);
    ++i;
  }
  return s;
}

// A tensor of one of `dtypes` and rank `rank` (or `alt_rank`, with its dims, when given).
const StoredTensor& require(const SafetensorsFile& f, const std::string& path, const char* name,
                            std::initializer_list<DType> dtypes, std::size_t rank, const char* dims,
                            std::size_t alt_rank = 0, const char* alt_dims = nullptr) {
  const StoredTensor* t = f.find(name);
  const std::string expected = dtype_list(dtypes) + " " + dims + (alt_rank ? std::string(" or ") + alt_dims : "");
  if (!t) throw Error(path + ": " + name + ": missing (expected " + expected + ")");
  if (std::find(dtypes.begin(), dtypes.end(), t->dtype) == dtypes.end())
    throw Error(path + ": " + name + ": dtype is " + std::string(dtype_name(t->dtype)) + ", expected " +
                dtype_list(dtypes));
  if (t->shape.size() != rank && (alt_rank == 0 || t->shape.size() != alt_rank))
    throw Error(path + ": " + name + ": rank is " + std::to_string(t->shape.size()) + ", expected " +
                std::to_string(rank) + " " + dims +
                (alt_rank ? " or " + std::to_string(alt_rank) + " " + alt_dims : std::string()));
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

// A tensor of `dtype` from raw element memory (any dtype: bf16, f16, fp8, int32, int64).
StoredTensor stored_raw(std::string name, DType dtype, std::vector<std::int64_t> shape, const void* data) {
  std::size_t n = 1;
  for (std::int64_t d : shape) n *= static_cast<std::size_t>(d);
  return stored(std::move(name), dtype, std::move(shape), static_cast<const std::uint8_t*>(data), n * dtype_size(dtype));
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

// k_scale / v_scale (SPEC §6): a positive finite decimal; whether the cache is fp8 is checked
// by validate_inputs() with the options. 0 = absent (CaseSpec's convention).
double kv_scale_metadata(const SafetensorsFile& f, const std::string& path, const char* key) {
  const auto v = metadata_number<double>(f, path, key, "a decimal number");
  if (!v) return 0.0;
  if (!std::isfinite(*v) || !(*v > 0))
    throw Error(path + ": metadata '" + key + "' = '" + printable(f.metadata.at(key)) +
                "' must be a positive finite number");
  return *v;
}

std::string scale_string(double scale) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, scale);  // shortest round-trip form
  return std::string(buf, r.ptr);
}

}  // namespace

Case load_case(const std::string& path) { return case_from_file(read_safetensors(path), path); }

Case case_from_file(const SafetensorsFile& f, const std::string& path) {
  const std::initializer_list<DType> kCacheDtypes = {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2};
  constexpr const char* kCacheDims = "[num_blocks, block_size, num_kv_heads, head_dim]";
  const auto& q = require(f, path, "query", {DType::kBF16, DType::kF16}, 3, "[batch, num_heads, head_dim]", 4,
                          "[batch, q_len, num_heads, head_dim]");
  const auto& k = require(f, path, "key_cache", kCacheDtypes, 4, kCacheDims);
  const auto& v = require(f, path, "value_cache", kCacheDtypes, 4, kCacheDims);
  const auto& bt = require(f, path, "block_table", {DType::kI32, DType::kI64}, 2, "[batch, max_blocks_per_req]");
  const auto& cl = require(f, path, "context_lens", {DType::kI32, DType::kI64}, 1, "[batch]");
  if (k.shape != v.shape) throw Error(path + ": value_cache: shape differs from key_cache shape");
  if (v.dtype != k.dtype)
    throw Error(path + ": value_cache: dtype is " + std::string(dtype_name(v.dtype)) + " but key_cache is " +
                std::string(dtype_name(k.dtype)) + " (the caches must share a dtype)");
  if (cl.dtype != bt.dtype)
    throw Error(path + ": context_lens: dtype is " + std::string(dtype_name(cl.dtype)) + " but block_table is " +
                std::string(dtype_name(bt.dtype)) + " (the index tensors must share a dtype)");

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
  c.spec.k_scale = kv_scale_metadata(f, path, "k_scale");
  c.spec.v_scale = kv_scale_metadata(f, path, "v_scale");
  if (auto it = f.metadata.find("kv_layout"); it != f.metadata.end())
    c.kv_layout = parse_kv_layout(printable(it->second), path + ": metadata 'kv_layout'");
  c.has_alibi = optional_vector(f, path, "alibi_slopes", c.alibi_slopes, c.alibi_shape);
  c.has_sinks = optional_vector(f, path, "sinks", c.sinks, c.sinks_shape);

  // The tensors as stored; inputs() hands out the storage of each one's dtype.
  c.spec.query_dtype = q.dtype;
  c.spec.kv_dtype = k.dtype;
  c.spec.q_len = q.shape.size() == 4 ? q.shape[1] : 1;
  c.spec.int64_indices = bt.dtype == DType::kI64;
  if (q.dtype == DType::kBF16)
    c.query = copy_out<bf16>(q);
  else
    c.query_bytes = copy_out<std::uint8_t>(q);
  if (k.dtype == DType::kBF16) {
    c.key_cache = copy_out<bf16, KvVector>(k);
    c.value_cache = copy_out<bf16, KvVector>(v);
  } else {
    c.key_bytes = copy_out<std::uint8_t, KvBytes>(k);
    c.value_bytes = copy_out<std::uint8_t, KvBytes>(v);
  }
  if (c.spec.int64_indices) {
    c.block_table64 = copy_out<std::int64_t>(bt);
    c.context_lens64 = copy_out<std::int64_t>(cl);
    // The int32 copies the rest of the Case reads (exact once validated: every value used is in
    // int32 range; unused table entries may wrap, and nothing reads them).
    c.block_table.assign(c.block_table64.begin(), c.block_table64.end());
    c.context_lens.assign(c.context_lens64.begin(), c.context_lens64.end());
  } else {
    c.block_table = copy_out<std::int32_t>(bt);
    c.context_lens = copy_out<std::int32_t>(cl);
  }
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
  if (c.spec.k_scale != 0) f.metadata["k_scale"] = scale_string(c.spec.k_scale);
  if (c.spec.v_scale != 0) f.metadata["v_scale"] = scale_string(c.spec.v_scale);
  if (c.has_alibi) f.tensors.push_back(stored("alibi_slopes", DType::kF32, c.alibi_shape, c.alibi_slopes.data(), c.alibi_slopes.size()));
  if (c.has_sinks) f.tensors.push_back(stored("sinks", DType::kF32, c.sinks_shape, c.sinks.data(), c.sinks.size()));
  for (const auto& [name, t] : {std::pair<const char*, const TensorView*>{"query", &in.query},
                                {"key_cache", &in.key_cache},
                                {"value_cache", &in.value_cache},
                                {"block_table", &in.block_table},
                                {"context_lens", &in.context_lens}})
    f.tensors.push_back(stored_raw(name, t->dtype, shape_of(*t), t->data));
  write_safetensors(path, f);
}

void save_output(const std::string& path, const float* out, const std::vector<std::int64_t>& out_shape,
                 const float* lse) {
  if (out_shape.empty()) throw Error("save_output: the output shape is empty");
  SafetensorsFile f;
  std::size_t n = 1;
  for (std::int64_t d : out_shape) n *= static_cast<std::size_t>(d);
  f.tensors.push_back(stored("out", DType::kF32, out_shape, out, n));
  if (lse) {
    // lse: the output's shape without head_dim ([batch, (q_len,) num_heads]).
    const std::vector<std::int64_t> lse_shape(out_shape.begin(), out_shape.end() - 1);
    const std::size_t rows = n / static_cast<std::size_t>(std::max<std::int64_t>(out_shape.back(), 1));
    f.tensors.push_back(stored("lse", DType::kF32, lse_shape, lse, out_shape.back() > 0 ? rows : 0));
  }
  write_safetensors(path, f);
}

}  // namespace mixpa
