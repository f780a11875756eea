// mixpa's public entry point: decode-phase paged attention over a bf16 paged KV cache.
//
//   out[b,h] = sum_t softmax_t(scale * q[b,h] . K[b,t,g(h)]) * V[b,t,g(h)]
//
// Inputs are validated in full (docs/spec.md §1) before anything is written to `out`.
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

// The KV cache layout (docs/spec.md §6): NHD = [num_blocks, block_size, num_kv_heads, head_dim] (default),
// HND = [num_blocks, num_kv_heads, block_size, head_dim]. Both are read through the view's strides.
enum class KvLayout { kNHD, kHND };

// "NHD" / "HND"; throws mixpa::Error naming `what` otherwise.
KvLayout parse_kv_layout(std::string_view name, std::string_view what = "kv_layout");

// The input tensors (shapes and dtypes as docs/spec.md §1 and §6):
//   query        bf16|f16 [batch, num_heads, head_dim] (q_len 1)              contiguous
//                         or [batch, q_len, num_heads, head_dim], q_len 1..16 (multi-token decode)
//   key_cache    bf16|f16|f8_e4m3|f8_e5m2 [num_blocks, block_size, num_kv_heads, head_dim]
//                     ([num_blocks, num_kv_heads, block_size, head_dim] with kv_layout HND)
//                                                                              any strides, head_dim stride 1
//   value_cache  same dtype and shape as key_cache                            any strides, head_dim stride 1
//   block_table  i32|i64 [batch, max_blocks_per_req]                           contiguous
//   context_lens i32|i64 [batch] (same dtype as block_table)                   contiguous
// head_dim: a multiple of 16 in 16..256; block_size 1..256. Context length n counts every token
// of a request, its q_len new ones included: query row p sits at position n - q_len + p.
//   alibi_slopes f32  [num_heads], optional: x += slope_h * (t - pos)         contiguous
//   sinks        f32  [num_heads], optional: one extra softmax term e^sink_h   contiguous
struct Inputs {
  TensorView query;
  TensorView key_cache;
  TensorView value_cache;
  TensorView block_table;
  TensorView context_lens;
  TensorView alibi_slopes;  // absent = no ALiBi
  TensorView sinks;         // absent = no sinks
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
  // The sim as a MIX debugging tool (docs/sim.md):
  bool check = false;           // shadow state per pipe slot and local tile; a finding throws SimCheckError
  bool explicit_free = false;   // pipes free on TFREE (the next generation) instead of at pop
  bool random_schedule = false; // seeded random turn interleavings (implies single_thread)
  std::uint64_t schedule_seed = 0;
  std::string inject;           // test hook: run with one injected bug, e.g. "lane-half0"; "" = none
};

// Thrown by executor "sim" when SimOptions::check finds a synchronisation error; what() is the
// report (several lines). The CLI exits 4 on it.
class SimCheckError : public Error {
 public:
  using Error::Error;
};

struct Options {
  std::optional<double> scale;   // softmax scale; default 1/sqrt(head_dim)
  double softcap = 0;            // > 0: logits soft-capped after the scale, c * tanh(x / c); 0 = none
  // fp8 caches: K = k_scale * float(key_cache), V = v_scale * float(value_cache) (default 1,
  // vLLM's convention); positive and finite; setting either on a bf16/f16 cache is an error.
  std::optional<double> k_scale;
  std::optional<double> v_scale;
  std::int64_t window_left = -1; // >= 0: each query sees itself and window_left tokens before; -1 = all
  KvLayout kv_layout = KvLayout::kNHD;
  std::string executor = "auto"; // "auto" = the fastest executor this build has
  int hw_blocks = 24;            // hardware blocks of the SPMD launch (origin: 24)
  int pipe_depth = 2;            // slots per tile pipe (origin: 2)
  int num_threads = 0;           // OS threads for executors that use them; 0 = all cores
  SimOptions sim;
  // Human-readable report lines from an executor (e.g. sim's busy/overlap summary);
  // empty = silent. The CLI prints them to stdout.
  std::function<void(std::string_view)> report;
  // Polled by the executors between work items (cpu: page chunks, sim: logical blocks,
  // reference: rows), possibly from several threads; once it returns true, run() stops early
  // and throws mixpa::Interrupted, leaving `out` partly written. Empty = never.
  std::function<bool()> cancelled;
};

// Validates everything, then computes attention into `out` (float32, the query's shape) and,
// when out.lse is set, the log-sum-exp of each row's visible logits into it (float32
// [batch, (q_len,) num_heads], natural log, -inf for a row that sees no token; sinks not included).
// Throws mixpa::Error naming the input and the rule on invalid input; `out` is untouched then.
void run(const Inputs& inputs, const Options& options, OutputView out);

// Merges two partial attention results over disjoint token sets of the same rows (cascade /
// shared-prefix attention, split-KV across devices): for each of `rows` rows of `head_dim`,
//   lse = log(e^lse_a + e^lse_b),  o = e^(lse_a - lse) * o_a + e^(lse_b - lse) * o_b;
// -inf on both sides gives zeros and -inf. The outputs may alias either input.
void merge_states(const float* o_a, const float* lse_a, const float* o_b, const float* lse_b, float* o_out,
                  float* lse_out, std::int64_t rows, std::int64_t head_dim);

// Executors this build has that can run on this machine, fastest first; "auto" picks the first.
std::vector<std::string> executor_names();

}  // namespace mixpa
