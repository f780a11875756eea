// DLPack / buffer-protocol import: dtype mapping, device check, strides passed through as-is
// (validate() decides which layouts are allowed, so Python and C++ reject the same inputs).
#include "tensor_import.h"

#include <algorithm>
#include <mutex>
#include <sstream>

#include "mixpa/error.h"
#include "mixpa/paged_attention.h"

namespace nb = nanobind;

namespace mixpa::python {
namespace {

std::string dlpack_dtype_name(nb::dlpack::dtype t) {
  std::ostringstream s;
  switch (static_cast<nb::dlpack::dtype_code>(t.code)) {
    case nb::dlpack::dtype_code::Int: s << "int"; break;
    case nb::dlpack::dtype_code::UInt: s << "uint"; break;
    case nb::dlpack::dtype_code::Float: s << "float"; break;
    case nb::dlpack::dtype_code::Bfloat: s << "bfloat"; break;
    case nb::dlpack::dtype_code::Complex: s << "complex"; break;
    case nb::dlpack::dtype_code::Bool: s << "bool"; break;
    default: s << "code" << static_cast<int>(t.code) << '_'; break;
  }
  s << static_cast<int>(t.bits);
  if (t.lanes != 1) s << 'x' << t.lanes;
  return s.str();
}

// DLPack 1.0's codes of the 8-bit floats (kDLFloat8_e4m3fn, kDLFloat8_e5m2), which
// producers that export fp8 through DLPack use.
constexpr std::uint8_t kDlpackFloat8E4M3FN = 10;
constexpr std::uint8_t kDlpackFloat8E5M2 = 12;

// The dtypes validate() knows by name; anything else is rejected here with the DLPack name.
bool to_mixpa_dtype(nb::dlpack::dtype t, unsigned raw, DType& out) {
  using C = nb::dlpack::dtype_code;
  if (t.lanes != 1) return false;
  const auto code = static_cast<C>(t.code);
  switch (raw) {
    case kBf16Bits:
      if (code != C::UInt || t.bits != 16) return false;
      out = DType::kBF16;
      return true;
    case kE4m3Bits:
    case kE5m2Bits:
      if (code != C::UInt || t.bits != 8) return false;
      out = raw == kE4m3Bits ? DType::kF8E4M3 : DType::kF8E5M2;
      return true;
    default: break;
  }
  if (code == C::Bfloat && t.bits == 16) out = DType::kBF16;
  else if (code == C::Float && t.bits == 16) out = DType::kF16;
  else if (code == C::Float && t.bits == 32) out = DType::kF32;
  else if (code == C::Float && t.bits == 64) out = DType::kF64;
  else if (code == C::Int && t.bits == 32) out = DType::kI32;
  else if (code == C::Int && t.bits == 64) out = DType::kI64;
  else if (t.code == kDlpackFloat8E4M3FN && t.bits == 8) out = DType::kF8E4M3;
  else if (t.code == kDlpackFloat8E5M2 && t.bits == 8) out = DType::kF8E5M2;
  else return false;
  return true;
}

std::string expected_dtype(std::string_view name) {
  if (name == "block_table" || name == "context_lens") return "I32 or I64 (int32 / int64)";
  if (name == "key_cache" || name == "value_cache")
    return "BF16, F16, F8_E4M3 or F8_E5M2 (torch.bfloat16 / float16 / float8_e4m3fn / float8_e5m2, ml_dtypes "
           "bfloat16 / float8_e4m3fn / float8_e5m2, numpy.float16)";
  if (name == "query") return "BF16 or F16 (torch.bfloat16 / float16, ml_dtypes.bfloat16, numpy.float16)";
  return "F32 (float32)";
}

std::string names_string() {
  std::ostringstream s;
  s << '{';
  bool first = true;
  for (const std::string& n : executor_names()) {
    s << (first ? "" : ", ") << n;
    first = false;
  }
  s << '}';
  return s.str();
}

void require_cpu(const char* name, int device_type) {
  if (device_type == nb::device::cpu::value || device_type == nb::device::cuda_host::value) return;
  if (device_type == nb::device::cuda::value) {
    const auto names = executor_names();
    if (std::find(names.begin(), names.end(), "cuda") == names.end())
      throw Error(std::string(name) + ": CUDA tensor given but this build has no cuda executor (executors: " +
                  names_string() + "); pass CPU tensors (tensor.cpu())");
    throw Error(std::string(name) +
                ": CUDA tensor given; the cuda executor takes host tensors through this binding, pass tensor.cpu()");
  }
  throw Error(std::string(name) + ": tensor on DLPack device type " + std::to_string(device_type) +
              " is not supported; pass CPU tensors");
}

std::string shape_of(const nb::ndarray<nb::ro>& a) {
  std::ostringstream s;
  s << '[';
  for (size_t d = 0; d < a.ndim(); ++d) s << (d ? ", " : "") << a.shape(d);
  s << ']';
  return s.str();
}

std::mutex seen_mutex;
std::vector<SeenTensor> seen_last;

}  // namespace

TensorView import_tensor(const char* name, nb::handle obj, unsigned raw, std::vector<ReadArray>& keep) {
  if (obj.is_none()) return {};
  ReadArray a;
  if (!nb::try_cast(obj, a, /*convert=*/false)) {
    PyErr_Clear();  // a failed import may leave the producer's error (e.g. BufferError) set
    if (nb::hasattr(obj, "dtype")) {  // an array, but not one DLPack can share (byte order, object dtype, ...)
      const nb::object dtype = obj.attr("dtype");
      throw Error(std::string(name) + ": cannot read a " + nb::type_name(obj.type()).c_str() + " of dtype " +
                  nb::str(dtype).c_str() + " in place, expected " + expected_dtype(name));
    }
    throw Error(std::string(name) + ": expected a NumPy array or a PyTorch tensor (DLPack or buffer protocol), got " +
                nb::type_name(obj.type()).c_str());
  }
  require_cpu(name, a.device_type());
  if (a.ndim() < 1 || a.ndim() > static_cast<size_t>(kMaxRank))
    throw Error(std::string(name) + ": rank is " + std::to_string(a.ndim()) + " (shape " + shape_of(a) +
                "), mixpa tensors have rank 1 to " + std::to_string(kMaxRank));
  TensorView v;
  if (!to_mixpa_dtype(a.dtype(), raw, v.dtype))
    throw Error(std::string(name) + ": dtype is " + dlpack_dtype_name(a.dtype()) + ", expected " + expected_dtype(name));
  v.data = a.data();
  v.rank = static_cast<int>(a.ndim());
  for (int d = 0; d < v.rank; ++d) {
    v.shape[d] = static_cast<std::int64_t>(a.shape(d));
    v.strides[d] = a.stride(d);
  }
  keep.push_back(std::move(a));
  return v;
}

std::int64_t OutputArray::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

OutputArray import_output(nb::handle obj, unsigned raw) {
  OutputArray o;
  WriteArray& a = o.array;
  if (!nb::try_cast(obj, a, /*convert=*/false)) {
    PyErr_Clear();
    throw Error(std::string("out: expected a writable float32, bfloat16 or float16 NumPy array or PyTorch tensor, "
                            "got ") +
                nb::type_name(obj.type()).c_str() + " (read-only arrays are not accepted)");
  }
  require_cpu("out", a.device_type());
  const auto t = a.dtype();
  using C = nb::dlpack::dtype_code;
  const auto code = static_cast<C>(t.code);
  if (t.lanes == 1 && raw == kBf16Bits && code == C::UInt && t.bits == 16) o.dtype = DType::kBF16;
  else if (t.lanes == 1 && raw == kAsIs && code == C::Float && t.bits == 32) o.dtype = DType::kF32;
  else if (t.lanes == 1 && raw == kAsIs && code == C::Bfloat && t.bits == 16) o.dtype = DType::kBF16;
  else if (t.lanes == 1 && raw == kAsIs && code == C::Float && t.bits == 16) o.dtype = DType::kF16;
  else throw Error("out: dtype is " + dlpack_dtype_name(t) + ", expected F32, BF16 or F16 (float32, bfloat16, float16)");
  if (a.ndim() != 3 && a.ndim() != 4)
    throw Error("out: rank is " + std::to_string(a.ndim()) +
                ", expected 3 [batch, num_heads, head_dim] or 4 [batch, q_len, num_heads, head_dim] (the query's)");
  o.shape.resize(a.ndim());
  std::int64_t expected = 1;
  for (int d = static_cast<int>(a.ndim()) - 1; d >= 0; --d) {
    o.shape[d] = static_cast<std::int64_t>(a.shape(d));
    if (o.shape[d] != 1 && a.stride(d) != expected) throw Error("out: must be contiguous (row-major)");
    expected *= o.shape[d];
  }
  o.data = a.data();
  return o;
}

SeenTensor seen_of(const char* name, const TensorView& v) {
  SeenTensor s;
  s.name = name;
  s.data = reinterpret_cast<std::uintptr_t>(v.data);
  s.shape.assign(v.shape.begin(), v.shape.begin() + v.rank);
  s.strides.assign(v.strides.begin(), v.strides.begin() + v.rank);
  return s;
}

void record_seen(std::vector<SeenTensor> seen) {
  std::lock_guard lock(seen_mutex);
  seen_last = std::move(seen);
}

std::vector<SeenTensor> last_seen() {
  std::lock_guard lock(seen_mutex);
  return seen_last;
}

}  // namespace mixpa::python
