// Zero-copy export of Case vectors (each moved into a heap vector owned by a capsule) and
// the strided gather that turns arbitrary-layout caches into the contiguous Case format.
#include "case_arrays.h"

#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "core/validate.h"
#include "tensor_import.h"

namespace nb = nanobind;

namespace mixpa::python {
namespace {

// A NumPy array of `view`'s shape that owns `v`: the vector moves to the heap and a capsule
// deletes it. The shape must cover exactly the vector (an array larger than its buffer is
// a memory error waiting for the next write).
template <class Element, class T, class A>
nb::object owning_array(const char* name, std::vector<T, A>&& v, const TensorView& view) {
  static_assert(sizeof(Element) == sizeof(T));
  if (view.numel() != static_cast<std::int64_t>(v.size()))
    throw Error(std::string(name) + ": shape " + view.shape_string() + " does not match its " +
                std::to_string(v.size()) + " elements");
  std::vector<size_t> shape(view.shape.begin(), view.shape.begin() + view.rank);
  auto* heap = new std::vector<T, A>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T, A>*>(p); });
  return nb::ndarray<nb::numpy, Element>(reinterpret_cast<Element*>(heap->data()), shape.size(), shape.data(), owner)
      .cast();
}

// A non-bf16 float tensor's raw bytes as a uint8 array whose last dimension holds the bytes of
// head_dim elements ([..., head_dim * element size]); the Python layer views it as its dtype.
nb::object owning_bytes(const char* name, std::vector<std::uint8_t, HugePageAllocator<std::uint8_t>>&& v,
                        const TensorView& view) {
  TensorView bytes = view;
  bytes.shape[bytes.rank - 1] *= static_cast<std::int64_t>(dtype_size(view.dtype));
  std::vector<size_t> shape(bytes.shape.begin(), bytes.shape.begin() + bytes.rank);
  if (static_cast<std::int64_t>(v.size()) != view.numel() * static_cast<std::int64_t>(dtype_size(view.dtype)))
    throw Error(std::string(name) + ": shape " + view.shape_string() + " does not match its " +
                std::to_string(v.size()) + " bytes");
  using Vec = std::vector<std::uint8_t, HugePageAllocator<std::uint8_t>>;
  auto* heap = new Vec(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<Vec*>(p); });
  return nb::ndarray<nb::numpy, std::uint8_t>(heap->data(), shape.size(), shape.data(), owner).cast();
}

// Gathers a rank-4 strided view (any element size) into contiguous bytes.
template <class Vector>
Vector gather4(const TensorView& v) {
  const size_t es = dtype_size(v.dtype);
  Vector out(static_cast<size_t>(v.numel()) * es / sizeof(typename Vector::value_type));
  const auto* src = static_cast<const std::uint8_t*>(v.data);
  auto* dst = reinterpret_cast<std::uint8_t*>(out.data());
  size_t i = 0;
  const size_t row_bytes = static_cast<size_t>(v.shape[3]) * es;
  for (std::int64_t a = 0; a < v.shape[0]; ++a)
    for (std::int64_t b = 0; b < v.shape[1]; ++b)
      for (std::int64_t c = 0; c < v.shape[2]; ++c) {
        const std::int64_t off = a * v.strides[0] + b * v.strides[1] + c * v.strides[2];
        std::memcpy(dst + i, src + off * static_cast<std::int64_t>(es), row_bytes);
        i += row_bytes;
      }
  return out;
}

template <class T>
std::vector<T> copy_contiguous(const TensorView& v) {
  const T* p = v.as<T>();
  return std::vector<T>(p, p + v.numel());
}

std::vector<std::uint8_t> copy_bytes(const TensorView& v) {
  const auto* p = static_cast<const std::uint8_t*>(v.data);
  return std::vector<std::uint8_t>(p, p + v.numel() * static_cast<std::int64_t>(dtype_size(v.dtype)));
}

}  // namespace

nb::dict case_to_dict(Case&& c) {
  // The shapes the Case's own views have (a loaded case: the file's, already validated by
  // load_case; a generated one: its spec's), never one tensor's shape derived from another's.
  const Inputs in = c.inputs();
  nb::dict r;
  r["name"] = c.spec.name;
  r["scale"] = c.scale;
  // Float tensors: bf16 as uint16 bits; the others as bytes ([..., head_dim * size]); the
  // Python layer views each as its dtype (query_dtype / kv_dtype, safetensors names).
  r["query_dtype"] = std::string(dtype_name(c.spec.query_dtype));
  r["kv_dtype"] = std::string(dtype_name(c.spec.kv_dtype));
  r["k_scale"] = c.spec.k_scale;  // 0 = not given
  r["v_scale"] = c.spec.v_scale;
  if (c.spec.query_dtype == DType::kBF16) {
    r["query"] = owning_array<std::uint16_t>("query", std::move(c.query), in.query);
  } else {
    std::vector<std::uint8_t, HugePageAllocator<std::uint8_t>> q(c.query_bytes.begin(), c.query_bytes.end());
    r["query"] = owning_bytes("query", std::move(q), in.query);
  }
  if (c.spec.kv_dtype == DType::kBF16) {
    r["key_cache"] = owning_array<std::uint16_t>("key_cache", std::move(c.key_cache), in.key_cache);
    r["value_cache"] = owning_array<std::uint16_t>("value_cache", std::move(c.value_cache), in.value_cache);
  } else {
    r["key_cache"] = owning_bytes("key_cache", std::move(c.key_bytes), in.key_cache);
    r["value_cache"] = owning_bytes("value_cache", std::move(c.value_bytes), in.value_cache);
  }
  if (c.spec.int64_indices) {
    r["block_table"] = owning_array<std::int64_t>("block_table", std::move(c.block_table64), in.block_table);
    r["context_lens"] = owning_array<std::int64_t>("context_lens", std::move(c.context_lens64), in.context_lens);
  } else {
    r["block_table"] = owning_array<std::int32_t>("block_table", std::move(c.block_table), in.block_table);
    r["context_lens"] = owning_array<std::int32_t>("context_lens", std::move(c.context_lens), in.context_lens);
  }
  return r;
}

nb::object kv_buffer(std::size_t n) {
  KvVector v(n);
  return owning_array<std::uint16_t>("kv_buffer", std::move(v), TensorView::contiguous(nullptr, DType::kBF16, {static_cast<std::int64_t>(n)}));
}

Case case_from_tensors(nb::handle query, nb::handle key_cache, nb::handle value_cache, nb::handle block_table,
                       nb::handle context_lens, unsigned raw_mask, double scale, std::optional<double> k_scale,
                       std::optional<double> v_scale) {
  std::vector<ReadArray> keep;
  Inputs in;
  in.query = import_tensor("query", query, raw_code(raw_mask, 0), keep);
  in.key_cache = import_tensor("key_cache", key_cache, raw_code(raw_mask, 1), keep);
  in.value_cache = import_tensor("value_cache", value_cache, raw_code(raw_mask, 2), keep);
  in.block_table = import_tensor("block_table", block_table, raw_code(raw_mask, 3), keep);
  in.context_lens = import_tensor("context_lens", context_lens, raw_code(raw_mask, 4), keep);
  // What load_case will check of the file, checked now (validate_inputs(): shapes, dtypes,
  // page ids, context lengths, scale, k/v scales), so save_case never writes a case that cannot
  // be loaded.
  Options scale_only;
  scale_only.scale = scale;
  scale_only.k_scale = k_scale;
  scale_only.v_scale = v_scale;
  const Shape s = validate_inputs(in, scale_only).shape;
  Case c;
  c.spec.query_dtype = in.query.dtype;
  c.spec.kv_dtype = in.key_cache.dtype;
  c.spec.q_len = s.q_len;
  c.spec.int64_indices = in.block_table.dtype == DType::kI64;
  c.spec.k_scale = k_scale.value_or(0.0);
  c.spec.v_scale = v_scale.value_or(0.0);
  c.scale = scale;
  c.spec.name = "python";
  c.spec.batch = s.batch;
  c.spec.num_heads = s.num_heads;
  c.spec.num_kv_heads = s.num_kv_heads;
  c.spec.head_dim = s.head_dim;
  c.spec.block_size = s.block_size;
  c.spec.num_blocks = s.num_blocks;
  c.spec.max_model_len = s.max_blocks_per_req * s.block_size;
  c.spec.scale = scale;
  c.num_blocks = s.num_blocks;
  c.max_blocks_per_req = s.max_blocks_per_req;
  {
    nb::gil_scoped_release release;
    if (c.spec.query_dtype == DType::kBF16) c.query = copy_contiguous<bf16>(in.query);
    else c.query_bytes = copy_bytes(in.query);
    if (c.spec.kv_dtype == DType::kBF16) {
      c.key_cache = gather4<KvVector>(in.key_cache);
      c.value_cache = gather4<KvVector>(in.value_cache);
    } else {
      c.key_bytes = gather4<KvBytes>(in.key_cache);
      c.value_bytes = gather4<KvBytes>(in.value_cache);
    }
    if (c.spec.int64_indices) {
      c.block_table64 = copy_contiguous<std::int64_t>(in.block_table);
      c.context_lens64 = copy_contiguous<std::int64_t>(in.context_lens);
      c.block_table.assign(c.block_table64.begin(), c.block_table64.end());  // in int32 range where used
      c.context_lens.assign(c.context_lens64.begin(), c.context_lens64.end());
    } else {
      c.block_table = copy_contiguous<std::int32_t>(in.block_table);
      c.context_lens = copy_contiguous<std::int32_t>(in.context_lens);
    }
  }
  c.spec.context_lens.assign(c.context_lens.begin(), c.context_lens.end());
  if (c.spec.context_lens.empty()) c.spec.context_lens = {0};
  return c;
}

}  // namespace mixpa::python
