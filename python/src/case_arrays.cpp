// Zero-copy export of Case vectors (each moved into a heap vector owned by a capsule) and
// the strided gather that turns arbitrary-layout caches into the contiguous Case format.
#include "case_arrays.h"

#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstring>
#include <memory>
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

// Gathers a rank-4 strided bf16 view into a contiguous vector.
KvVector gather4(const TensorView& v) {
  KvVector out(static_cast<size_t>(v.numel()));
  const bf16* src = v.as<bf16>();
  size_t i = 0;
  for (std::int64_t a = 0; a < v.shape[0]; ++a)
    for (std::int64_t b = 0; b < v.shape[1]; ++b)
      for (std::int64_t c = 0; c < v.shape[2]; ++c) {
        const bf16* row = src + a * v.strides[0] + b * v.strides[1] + c * v.strides[2];
        std::memcpy(out.data() + i, row, static_cast<size_t>(v.shape[3]) * sizeof(bf16));
        i += static_cast<size_t>(v.shape[3]);
      }
  return out;
}

template <class T>
std::vector<T> copy_contiguous(const TensorView& v) {
  const T* p = v.as<T>();
  return std::vector<T>(p, p + v.numel());
}

}  // namespace

nb::dict case_to_dict(Case&& c) {
  // The shapes the Case's own views have (a loaded case: the file's, already validated by
  // load_case; a generated one: its spec's), never one tensor's shape derived from another's.
  const Inputs in = c.inputs();
  nb::dict r;
  r["name"] = c.spec.name;
  r["scale"] = c.scale;
  r["query"] = owning_array<std::uint16_t>("query", std::move(c.query), in.query);
  r["key_cache"] = owning_array<std::uint16_t>("key_cache", std::move(c.key_cache), in.key_cache);
  r["value_cache"] = owning_array<std::uint16_t>("value_cache", std::move(c.value_cache), in.value_cache);
  r["block_table"] = owning_array<std::int32_t>("block_table", std::move(c.block_table), in.block_table);
  r["context_lens"] = owning_array<std::int32_t>("context_lens", std::move(c.context_lens), in.context_lens);
  return r;
}

nb::object kv_buffer(std::size_t n) {
  KvVector v(n);
  return owning_array<std::uint16_t>("kv_buffer", std::move(v), TensorView::contiguous(nullptr, DType::kBF16, {static_cast<std::int64_t>(n)}));
}

Case case_from_tensors(nb::handle query, nb::handle key_cache, nb::handle value_cache, nb::handle block_table,
                       nb::handle context_lens, unsigned bf16_mask, double scale) {
  std::vector<ReadArray> keep;
  Inputs in;
  in.query = import_tensor("query", query, bf16_mask & 1u, keep);
  in.key_cache = import_tensor("key_cache", key_cache, bf16_mask & 2u, keep);
  in.value_cache = import_tensor("value_cache", value_cache, bf16_mask & 4u, keep);
  in.block_table = import_tensor("block_table", block_table, bf16_mask & 8u, keep);
  in.context_lens = import_tensor("context_lens", context_lens, bf16_mask & 16u, keep);
  // What load_case will check of the file, checked now (validate_inputs(): shapes, dtypes,
  // page ids, context lengths, scale), so save_case never writes a case that cannot be loaded.
  Options scale_only;
  scale_only.scale = scale;
  const Shape s = validate_inputs(in, scale_only).shape;
  Case c;
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
    c.query = copy_contiguous<bf16>(in.query);
    c.key_cache = gather4(in.key_cache);
    c.value_cache = gather4(in.value_cache);
    c.block_table = copy_contiguous<std::int32_t>(in.block_table);
    c.context_lens = copy_contiguous<std::int32_t>(in.context_lens);
  }
  c.spec.context_lens.assign(c.context_lens.begin(), c.context_lens.end());
  if (c.spec.context_lens.empty()) c.spec.context_lens = {0};
  return c;
}

}  // namespace mixpa::python
