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

// How the Python layer passes a dtype DLPack cannot name: the array holds the raw bits of the
// element type as unsigned integers (NumPy ml_dtypes arrays, torch fp8 tensors, viewed in place).
// The masks of the binding carry one 2-bit code per tensor: code of tensor i = (mask >> 2i) & 3.
enum RawBits : unsigned {
  kAsIs = 0,    // the DLPack dtype is the element type
  kBf16Bits = 1,  // uint16 holding bf16 (ml_dtypes.bfloat16)
  kE4m3Bits = 2,  // uint8 holding OCP e4m3fn (ml_dtypes.float8_e4m3fn, torch.float8_e4m3fn)
  kE5m2Bits = 3,  // uint8 holding e5m2 (ml_dtypes.float8_e5m2, torch.float8_e5m2)
};
inline unsigned raw_code(unsigned mask, int tensor) { return (mask >> (2 * tensor)) & 3u; }

// Imports `obj` as a read-only view named `name` (used in every error message).
// None gives a default view ("missing" to validate()). `raw`: a RawBits code (see above).
// `keep` holds the imported array so its memory stays alive while the view is used.
// Throws mixpa::Error for non-arrays, rank > 4, unsupported dtypes and non-CPU memory.
TensorView import_tensor(const char* name, nanobind::handle obj, unsigned raw, std::vector<ReadArray>& keep);

// The output as imported: float32, or bf16 / f16 (computed in float32, then converted).
struct OutputArray {
  WriteArray array;                  // keeps it alive
  void* data = nullptr;
  DType dtype = DType::kF32;         // kF32, kBF16 or kF16
  std::vector<std::int64_t> shape;   // rank 3 [batch, heads, head_dim] or 4 [batch, q_len, heads, head_dim]
  std::int64_t numel() const;
};

// Imports `obj` as the writable output; checks dtype (float32, bfloat16, float16; `raw` =
// kBf16Bits for a NumPy bfloat16 array viewed as uint16), rank 3 or 4, contiguity, device.
OutputArray import_output(nanobind::handle obj, unsigned raw);

// Records / returns what the last call saw (process-wide; for tests and diagnostics).
void record_seen(std::vector<SeenTensor> seen);
std::vector<SeenTensor> last_seen();
SeenTensor seen_of(const char* name, const TensorView& v);

}  // namespace mixpa::python
