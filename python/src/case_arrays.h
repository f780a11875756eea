// Cases between C++ and Python: a generated or loaded mixpa::Case becomes a dict of NumPy
// arrays that own the Case's vectors (moved, not copied); Python tensors become a Case to save.
#pragma once

#include <nanobind/nanobind.h>

#include <optional>

#include "core/cases.h"

namespace mixpa::python {

// {"name", "scale", "query_dtype", "kv_dtype", "k_scale", "v_scale", "query", "key_cache",
// "value_cache", "block_table", "context_lens"}: bf16 tensors as uint16 arrays, F16 / F8 ones as
// uint8 arrays of their bytes (the Python layer views them as their dtypes); indices int32 or int64.
nanobind::dict case_to_dict(Case&& c);

// A zero-filled uint16 array of n elements on huge pages (KvVector, include/mixpa/memory.h),
// owned by a capsule: the storage behind mixpa.zeros_kv_cache().
nanobind::object kv_buffer(std::size_t n);

// Copies five tensors (any layout validate_shapes() accepts) into an owning Case.
// `raw_mask`: the RawBits code of each tensor (tensor_import.h); k_scale / v_scale: fp8 caches
// only (stored in the file's metadata). Throws mixpa::Error on bad input.
Case case_from_tensors(nanobind::handle query, nanobind::handle key_cache, nanobind::handle value_cache,
                       nanobind::handle block_table, nanobind::handle context_lens, unsigned raw_mask, double scale,
                       std::optional<double> k_scale, std::optional<double> v_scale);

}  // namespace mixpa::python
