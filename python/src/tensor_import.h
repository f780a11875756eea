// Turns Python tensors (NumPy arrays, PyTorch tensors: anything nanobind imports through
// DLPack or the buffer protocol) into mixpa TensorViews without copying a byte.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <string>
#include <vector>

#include "mixpa/tensor.h"

namespace mixpa::python {

using ReadArray = nanobind::ndarray<nanobind::ro>;
using WriteArray = nanobind::ndarray<>;

// What the C++ side saw for one tensor: for the zero-copy check in the tests.
struct SeenTensor {
  std::string name;
  std::uintptr_t data = 0;
  std::vector<std::int64_t> shape, strides;
};

// Imports `obj` as a read-only view named `name` (used in every error message).
// None gives a default view ("missing" to validate()). `bf16_bits`: the array holds bf16 as
// uint16 bits (a NumPy ml_dtypes.bfloat16 array viewed as uint16 by the Python layer).
// `keep` holds the imported array so its memory stays alive while the view is used.
// Throws mixpa::Error for non-arrays, rank > 4, unsupported dtypes and non-CPU memory.
TensorView import_tensor(const char* name, nanobind::handle obj, bool bf16_bits, std::vector<ReadArray>& keep);

// Imports `obj` as the writable float32 output; checks dtype, rank, contiguity, device.
// Returns the array (keeps it alive); `data` gets its pointer and `shape` its shape.
WriteArray import_output(nanobind::handle obj, float*& data, std::array<std::int64_t, 3>& shape);

// Records / returns what the last call saw (process-wide; for tests and diagnostics).
void record_seen(std::vector<SeenTensor> seen);
std::vector<SeenTensor> last_seen();
SeenTensor seen_of(const char* name, const TensorView& v);

}  // namespace mixpa::python
