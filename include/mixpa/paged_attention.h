// mixpa's public entry point: decode-phase paged attention over a bf16 paged KV cache.
//
//   out[b,h] = sum_t softmax_t(scale * q[b,h] . K[b,t,g(h)]) * V[b,t,g(h)]
//
// Inputs are validated in full (SPEC §1) before anything is written to `out`.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>
#include <string>
#include <vector>

#include "mixpa/error.h"
#include "mixpa/tensor.h"

namespace mixpa {

// The five input tensors (shapes as SPEC §1):
//   query        bf16 [batch, num_heads, head_dim]                            contiguous
//   key_cache    bf16 [num_blocks, block_size, num_kv_heads, head_dim]        any strides, head_dim stride 1
//   value_cache  bf16 same shape as key_cache                                 any strides, head_dim stride 1
//   block_table  i32  [batch, max_blocks_per_req]                              contiguous
//   context_lens i32  [batch]                                                  contiguous
struct Inputs {
  TensorView query;
  TensorView key_cache;
  TensorView value_cache;
  TensorView block_table;
  TensorView context_lens;
};

// Options of the simulated MIX pipeline (executor "sim"); other executors ignore them.
struct SimOptions {
  std::string trace_path;       // Chrome/Perfetto trace events (JSON); empty = none
  std::string swimlane_path;    // SVG swimlane; empty = none
  int swimlane_blocks = 3;      // hardware blocks drawn in the swimlane, from block 0
  double swimlane_from_us = 0;  // window on the simulated clock; to < 0: until block 0's
  double swimlane_to_us = -1;   //   vectors finish 8 pages of their first logical block
  double watchdog_seconds = 10; // no progress for this long = deadlock report
  bool single_thread = false;   // deterministic single-OS-thread scheduling
};

struct Options {
  std::optional<double> scale;   // softmax scale; default 1/sqrt(head_dim)
  std::string executor = "auto"; // "auto" = the fastest executor this build has
  int hw_blocks = 24;            // hardware blocks of the SPMD launch (origin: 24)
  int pipe_depth = 2;            // slots per tile pipe (origin: 2)
  int num_threads = 0;           // OS threads for executors that use them; 0 = all cores
  SimOptions sim;
  // Human-readable report lines from an executor (e.g. sim's busy/overlap summary);
  // empty = silent. The CLI prints them to stdout.
  std::function<void(std::string_view)> report;
};

// Validates everything, then computes attention into `out` (float32 [batch, num_heads, head_dim]).
// Throws mixpa::Error naming the input and the rule on invalid input; `out` is untouched then.
void run(const Inputs& inputs, const Options& options, OutputView out);

// Executors this build has that can run on this machine, fastest first; "auto" picks the first.
std::vector<std::string> executor_names();

}  // namespace mixpa
