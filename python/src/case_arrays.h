// Cases between C++ and Python: a generated or loaded mixpa::Case becomes a dict of NumPy
// arrays that own the Case's vectors (moved, not copied); Python tensors become a Case to save.
#pragma once

#include <nanobind/nanobind.h>

#include "core/cases.h"

namespace mixpa::python {

// {"name", "scale", "query", "key_cache", "value_cache", "block_table", "context_lens"}:
// bf16 tensors as uint16 arrays (the Python layer views them as ml_dtypes.bfloat16).
nanobind::dict case_to_dict(Case&& c);

// A zero-filled uint16 array of n elements on huge pages (KvVector, include/mixpa/memory.h),
// owned by a capsule: the storage behind mixpa.zeros_kv_cache().
nanobind::object kv_buffer(std::size_t n);

// Copies five tensors (any layout validate_shapes() accepts) into an owning Case.
// `bf16_mask` bit i: tensor i holds bf16 as uint16 bits. Throws mixpa::Error on bad input.
Case case_from_tensors(nanobind::handle query, nanobind::handle key_cache, nanobind::handle value_cache,
                       nanobind::handle block_table, nanobind::handle context_lens, unsigned bf16_mask, double scale);

}  // namespace mixpa::python
