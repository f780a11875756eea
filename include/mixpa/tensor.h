// Non-owning tensor views: pointer, dtype, shape and element strides (rank <= 4).
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "mixpa/dtype.h"

namespace mixpa {

inline constexpr int kMaxRank = 4;

// A read-only view. Strides are in elements, 64-bit; a default-constructed view
// (data == nullptr, rank 0) means "missing" and fails validation by name.
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int rank = 0;
  std::array<std::int64_t, kMaxRank> shape{};
  std::array<std::int64_t, kMaxRank> strides{};

  // A contiguous (row-major) view of the given shape.
  static TensorView contiguous(const void* data, DType dtype, std::initializer_list<std::int64_t> shape);

  std::int64_t numel() const;
  bool is_contiguous() const;
  bool present() const { return rank > 0; }
  std::string shape_string() const;  // "[2, 16, 128]"

  template <class T>
  const T* as() const { return static_cast<const T*>(data); }
};

// The output: float32, contiguous [batch, q_len, num_heads, head_dim] (the query's shape;
// q_len 1 is [batch, num_heads, head_dim]); optionally the log-sum-exp of each row, float32
// contiguous [batch, q_len, num_heads] (nullptr = not wanted). `shape` is
// [batch, num_heads, head_dim]; q_len is the query's (docs/spec.md §6: 1..16).
struct OutputView {
  float* data = nullptr;
  std::array<std::int64_t, 3> shape{};
  float* lse = nullptr;
  std::int64_t q_len = 1;

  std::int64_t rows() const { return shape[0] * q_len * shape[1]; }
  std::int64_t numel() const { return rows() * shape[2]; }
};

}  // namespace mixpa
