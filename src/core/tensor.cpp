// TensorView helpers: contiguous construction, element count, layout queries.
#include "mixpa/tensor.h"

#include <algorithm>
#include <limits>
#include <sstream>

#include "mixpa/error.h"

namespace mixpa {
namespace {

// Shapes come from files and callers before validation: every product of dimensions is
// overflow-checked (a zero dimension does not make [0, 2^40, 2^40]'s strides any smaller).
std::int64_t checked_mul(std::int64_t a, std::int64_t b, const TensorView& v) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r))
    throw Error("shape " + v.shape_string() + ": the product of its dimensions overflows 64 bits");
  return r;
}

}  // namespace

TensorView TensorView::contiguous(const void* data, DType dtype, std::initializer_list<std::int64_t> shape) {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.rank = static_cast<int>(shape.size());
  int i = 0;
  for (std::int64_t s : shape) v.shape[i++] = s;
  std::int64_t stride = 1;
  for (int d = v.rank - 1; d >= 0; --d) {
    v.strides[d] = stride;
    if (d > 0) stride = checked_mul(stride, v.shape[d], v);
  }
  return v;
}

std::int64_t TensorView::numel() const {
  if (rank == 0) return 0;
  for (int d = 0; d < rank; ++d)
    if (shape[d] == 0) return 0;
  std::int64_t n = 1;
  for (int d = 0; d < rank; ++d) n = checked_mul(n, shape[d], *this);
  return n;
}

bool TensorView::is_contiguous() const {
  // In 128 bits, clamped just past the int64 range (which no stride can equal), so the
  // product of any shape is computed without overflow.
  constexpr __int128 kHi = static_cast<__int128>(std::numeric_limits<std::int64_t>::max()) + 1, kLo = -kHi - 1;
  __int128 expected = 1;
  for (int d = rank - 1; d >= 0; --d) {
    if (shape[d] != 1 && strides[d] != expected) return false;
    expected = std::clamp<__int128>(expected * shape[d], kLo, kHi);
  }
  return true;
}

std::string TensorView::shape_string() const {
  std::ostringstream s;
  s << '[';
  for (int d = 0; d < rank; ++d) s << (d ? ", " : "") << shape[d];
  s << ']';
  return s.str();
}

}  // namespace mixpa
