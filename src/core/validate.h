// Validation of every input rule in SPEC §1, done once before any output is written.
#pragma once

#include "core/problem.h"
#include "mixpa/paged_attention.h"

namespace mixpa {

inline constexpr std::array<std::int64_t, 3> kSupportedHeadDims{64, 128, 256};
inline constexpr std::array<std::int64_t, 4> kSupportedBlockSizes{16, 32, 64, 128};

// Checks the tensors, the scale and the output view; reads block_table and context_lens
// (host memory) to check every page a request uses. Throws mixpa::Error on the first
// violation, with a message naming the input and the rule.
Problem validate(const Inputs& inputs, const Options& options, const OutputView& out);

// Shape/dtype checks only (no reads of block_table/context_lens), for callers that validate
// page ids elsewhere (e.g. on a device). Returns the shape.
Shape validate_shapes(const Inputs& inputs, KvLayout layout = KvLayout::kNHD);

// Scale resolution: options.scale if set (must be finite), else 1/sqrt(head_dim).
float resolve_scale(const Options& options, std::int64_t head_dim);

// The variant of SPEC §6 (scale, softcap, window_left, alibi_slopes, sinks) checked against
// the shape: finite values, [num_heads] vectors.
Variant resolve_variant(const Inputs& inputs, const Options& options, const Shape& shape);

// Option checks shared by all executors (hw_blocks, pipe_depth, num_threads).
void validate_options(const Options& options);

}  // namespace mixpa
