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

  std::int64_t group() const { return num_heads / num_kv_heads; }  // query heads per kv head
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
  float scale = 1.0f;  // == variant.scale
  const bf16* query = nullptr;  // contiguous [batch, num_heads, head_dim]
  const bf16* key_cache = nullptr;
  const bf16* value_cache = nullptr;
  CacheStrides k_strides;
  CacheStrides v_strides;
  const std::int32_t* block_table = nullptr;   // contiguous [batch, max_blocks_per_req]
  const std::int32_t* context_lens = nullptr;  // [batch]

  std::int64_t context_len(std::int64_t b) const { return context_lens[b]; }
  std::int64_t num_pages(std::int64_t b) const { return (context_lens[b] + shape.block_size - 1) / shape.block_size; }
  // The tokens request b's query rows see (the window applied); empty for context 0.
  TokenRange visible(std::int64_t b) const { return visible_tokens(variant, context_lens[b]); }
  // The position of request b's query row (q_len 1: its last token).
  std::int64_t position(std::int64_t b) const { return context_lens[b] - 1; }
  // Page j of request b; validated to be in [0, num_blocks) for j < num_pages(b).
  std::int64_t page(std::int64_t b, std::int64_t j) const { return block_table[b * shape.max_blocks_per_req + j]; }

  // Row `row` of `page` for kv head `kv_head`: head_dim contiguous bf16. All offsets 64-bit.
  const bf16* key_row(std::int64_t page, std::int64_t row, std::int64_t kv_head) const {
    return key_cache + page * k_strides.page + row * k_strides.row + kv_head * k_strides.head;
  }
  const bf16* value_row(std::int64_t page, std::int64_t row, std::int64_t kv_head) const {
    return value_cache + page * v_strides.page + row * v_strides.row + kv_head * v_strides.head;
  }
  const bf16* query_row(std::int64_t b, std::int64_t h) const {
    return query + (b * shape.num_heads + h) * shape.head_dim;
  }
};

}  // namespace mixpa
