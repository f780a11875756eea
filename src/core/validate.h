// Validation of every input rule in SPEC §1, done once before any output is written.
#pragma once

#include "core/problem.h"
#include "mixpa/paged_attention.h"

namespace mixpa {

// SPEC §6 shapes: head_dim a multiple of 16 in 16..256, block_size 1..256, q_len 1..16.
inline constexpr std::int64_t kMinHeadDim = 16;
inline constexpr std::int64_t kMaxHeadDim = 256;
inline constexpr std::int64_t kHeadDimMultiple = 16;
inline constexpr std::int64_t kMinBlockSize = 1;
inline constexpr std::int64_t kMaxBlockSize = 256;
inline constexpr std::int64_t kMinQLen = 1;
inline constexpr std::int64_t kMaxQLen = 16;
// The origin's shapes (SPEC §1), which every executor has fast paths for.
inline constexpr std::array<std::int64_t, 3> kSupportedHeadDims{64, 128, 256};
inline constexpr std::array<std::int64_t, 4> kSupportedBlockSizes{16, 32, 64, 128};

// Option bounds (validate_options): a launch of 3 * kMaxHwBlocks sim workers (OS threads) and
// pipes of kMaxPipeDepth slots stay within reach of an ordinary machine (the origin: 24 and 2);
// a watchdog shorter than kMinWatchdogSeconds would report ordinary stalls as deadlocks.
inline constexpr int kMaxHwBlocks = 256;
inline constexpr int kMaxPipeDepth = 16;
inline constexpr int kMaxThreads = 1024;
inline constexpr double kMinWatchdogSeconds = 1.0;

// Checks the tensors, the scale and the output view; reads block_table and context_lens
// (host memory) to check every page a request uses. Throws mixpa::Error on the first
// violation, with a message naming the input and the rule.
Problem validate(const Inputs& inputs, const Options& options, const OutputView& out);

// validate() without the output view: everything about the inputs and options (for loaders
// that check a case before any output exists). The Problem's pointers refer to `inputs`.
Problem validate_inputs(const Inputs& inputs, const Options& options);

// Shape/dtype checks only (no reads of block_table/context_lens), for callers that validate
// page ids elsewhere (e.g. on a device). Returns the shape.
Shape validate_shapes(const Inputs& inputs, KvLayout layout = KvLayout::kNHD);

// Scale resolution: options.scale if set (finite, within float32, and either 0 or at least the
// smallest normal float32 in magnitude), else 1/sqrt(head_dim).
float resolve_scale(const Options& options, std::int64_t head_dim);

// The variant of SPEC §6 (scale, softcap, window_left, alibi_slopes, sinks) checked against
// the shape: finite values, [num_heads] vectors.
Variant resolve_variant(const Inputs& inputs, const Options& options, const Shape& shape);

// k_scale / v_scale (SPEC §6): only on fp8 caches, positive finite float32; into p.k_scale/v_scale.
void resolve_kv_scales(const Options& options, DType kv_dtype, Problem& p);

// Option checks shared by all executors (hw_blocks, pipe_depth, num_threads and the sim's
// watchdog and swimlane), with the bounds above.
void validate_options(const Options& options);

}  // namespace mixpa
