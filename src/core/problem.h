// A validated problem: the shapes, the scale and typed pointers executors read.
// Built only by validate(); every executor takes it as the truth about its inputs.
#pragma once

#include <array>
#include <cstdint>

#include "core/variant.h"
#include "mixpa/dtype.h"

namespace mixpa {

struct Shape {
  std::int64_t batch = 0;
  std::int64_t num_heads = 0;
  std::int64_t num_kv_heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t num_blocks = 0;          // pages in the cache
  std::int64_t block_size = 0;          // tokens per page
  std::int64_t max_blocks_per_req = 0;  // columns of block_table
  std::int64_t q_len = 1;               // new tokens per request (SPEC §6: 1..16)

  std::int64_t group() const { return num_heads / num_kv_heads; }  // query heads per kv head
  // Query rows sharing one kv head of a request: (new token p, head of the group) pairs.
  std::int64_t rows_per_kv_head() const { return q_len * group(); }
  // Rows of out (and lse): [batch, q_len, num_heads].
  std::int64_t num_rows() const { return batch * q_len * num_heads; }
};

// An int32 or int64 index tensor (block_table, context_lens) read in place: SPEC §6 accepts
// both; validate() checks every int64 value the executors read lies in int32 range.
struct IndexView {
  IndexView() = default;
  IndexView(const std::int32_t* d) : data(d) {}  // NOLINT: the int32 case converts implicitly
  IndexView(const std::int64_t* d) : data(d), wide(true) {}  // NOLINT
  const void* data = nullptr;
  bool wide = false;  // int64
  std::int64_t operator[](std::int64_t i) const {
    return wide ? static_cast<const std::int64_t*>(data)[i] : static_cast<const std::int32_t*>(data)[i];
  }
  explicit operator bool() const { return data != nullptr; }
};

// Element strides of a cache: page, row in page, kv head (head_dim is unit stride).
struct CacheStrides {
  std::int64_t page = 0;
  std::int64_t row = 0;
  std::int64_t head = 0;
};

// Where an executor writes its results: out float32 [batch, num_heads, head_dim] and, when
// asked for, lse float32 [batch, num_heads] (natural log; -inf for a row that sees no token).
struct Results {
  Results(float* out_ = nullptr, float* lse_ = nullptr) : out(out_), lse(lse_) {}  // NOLINT: from float* on purpose
  float* out;
  float* lse;  // nullptr = not wanted
};

struct Problem {
  Shape shape;
  Variant variant;  // scale, soft-cap, window, ALiBi, sinks (SPEC §6)

  // The query, contiguous [batch, q_len, num_heads, head_dim], of query_dtype (kBF16 or kF16).
  DType query_dtype = DType::kBF16;
  const void* query_data = nullptr;
  // The caches, of kv_dtype (kBF16, kF16, kF8E4M3, kF8E5M2), read through element strides;
  // fp8 values are k_scale * float(K) and v_scale * float(V) (1 for the other dtypes).
  DType kv_dtype = DType::kBF16;
  const void* key_data = nullptr;
  const void* value_data = nullptr;
  float k_scale = 1.0f;
  float v_scale = 1.0f;
  CacheStrides k_strides;
  CacheStrides v_strides;
  // bf16 views of the same memory, set only when the dtype is bf16 (nullptr otherwise): what
  // the bf16-only kernels read.
  const bf16* query = nullptr;
  const bf16* key_cache = nullptr;
  const bf16* value_cache = nullptr;
  IndexView block_table;   // contiguous [batch, max_blocks_per_req], int32 or int64
  IndexView context_lens;  // [batch], int32 or int64

  bool is_plain_bf16() const { return query_dtype == DType::kBF16 && kv_dtype == DType::kBF16; }
  bool kv_is_fp8() const { return kv_dtype == DType::kF8E4M3 || kv_dtype == DType::kF8E5M2; }

  std::int64_t context_len(std::int64_t b) const { return context_lens[b]; }
  std::int64_t num_pages(std::int64_t b) const { return (context_len(b) + shape.block_size - 1) / shape.block_size; }
  // The tokens any query row of request b sees (the union over its q_len rows, the window
  // applied): [first_visible(n - q_len), n); empty for context 0.
  TokenRange visible(std::int64_t b) const { return visible_tokens(variant, context_len(b), shape.q_len); }
  // The position of request b's query row p (SPEC §6: n - q_len + p); q_len 1: its last token.
  std::int64_t position(std::int64_t b, std::int64_t p = 0) const { return context_len(b) - shape.q_len + p; }
  // The tokens row p of request b sees: [first_visible(pos), pos] (empty for context 0).
  TokenRange row_visible(std::int64_t b, std::int64_t p) const {
    if (context_len(b) <= 0) return {};
    const std::int64_t pos = position(b, p);
    return {variant.first_visible(pos), pos + 1};
  }
  // Page j of request b; validated to be in [0, num_blocks) for j < num_pages(b).
  std::int64_t page(std::int64_t b, std::int64_t j) const { return block_table[b * shape.max_blocks_per_req + j]; }

  // Element offsets (in elements of kv_dtype) of a cache row; all 64-bit.
  std::int64_t key_offset(std::int64_t page, std::int64_t row, std::int64_t kv_head) const {
    return page * k_strides.page + row * k_strides.row + kv_head * k_strides.head;
  }
  std::int64_t value_offset(std::int64_t page, std::int64_t row, std::int64_t kv_head) const {
    return page * v_strides.page + row * v_strides.row + kv_head * v_strides.head;
  }
  // Row `row` of `page` for kv head `kv_head`: head_dim contiguous elements of type T (which
  // must match kv_dtype: bf16, f16, e4m3 or e5m2).
  template <class T>
  const T* key_row_as(std::int64_t page, std::int64_t row, std::int64_t kv_head) const {
    return static_cast<const T*>(key_data) + key_offset(page, row, kv_head);
  }
  template <class T>
  const T* value_row_as(std::int64_t page, std::int64_t row, std::int64_t kv_head) const {
    return static_cast<const T*>(value_data) + value_offset(page, row, kv_head);
  }
  // Query row (request b, new token p, head h): head_dim contiguous elements of type T
  // (bf16 or f16, matching query_dtype).
  template <class T>
  const T* query_row_as(std::int64_t b, std::int64_t p, std::int64_t h) const {
    return static_cast<const T*>(query_data) + ((b * shape.q_len + p) * shape.num_heads + h) * shape.head_dim;
  }
  // Row of out / lse for (b, p, h).
  std::int64_t out_row(std::int64_t b, std::int64_t p, std::int64_t h) const {
    return (b * shape.q_len + p) * shape.num_heads + h;
  }

  // The bf16 accessors of the bf16-only kernels (query_dtype and kv_dtype kBF16, q_len 1).
  const bf16* key_row(std::int64_t page, std::int64_t row, std::int64_t kv_head) const {
    return key_cache + key_offset(page, row, kv_head);
  }
  const bf16* value_row(std::int64_t page, std::int64_t row, std::int64_t kv_head) const {
    return value_cache + value_offset(page, row, kv_head);
  }
  const bf16* query_row(std::int64_t b, std::int64_t h) const {
    return query + (b * shape.q_len * shape.num_heads + h) * shape.head_dim;
  }
};

}  // namespace mixpa
