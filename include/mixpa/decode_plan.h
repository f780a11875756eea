// A plan for the layers of one decode step: validate and plan once, run each layer cheaply.
//
//   mixpa::DecodePlan plan(inputs, options);          // once per decode step
//   for (layer ...) plan.run({q[layer], k[layer], v[layer]}, out[layer]);
//
// Within a decode step every layer has the same shapes, block table and context lengths; only
// the query and the layer's KV cache differ. The plan validates everything once (as run() does),
// copies block_table and context_lens (later changes to the caller's tensors do not reach it),
// and for the cpu executor holds the split-KV chunks, the work order and the partial-result
// buffers, so run() checks the three tensors' shapes and computes: nothing is allocated or
// planned per layer. Results are bitwise those of mixpa::run with the same inputs and options.
// alibi_slopes and sinks are copied too (sinks may also be given per layer: LayerInputs).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "mixpa/paged_attention.h"

namespace mixpa {

// The tensors that change from layer to layer (shapes as in Inputs). sinks: absent = the plan's
// (the ones it was made with, copied then); present = this layer's (f32 [num_heads], checked).
struct LayerInputs {
  TensorView query;
  TensorView key_cache;
  TensorView value_cache;
  TensorView sinks;
};

class DecodePlan {
 public:
  // Validates `inputs` and `options` in full; throws mixpa::Error (naming the input) otherwise.
  DecodePlan(const Inputs& inputs, const Options& options);
  ~DecodePlan();
  DecodePlan(DecodePlan&&) noexcept;
  DecodePlan& operator=(DecodePlan&&) noexcept;

  // One layer: query, key_cache and value_cache must have the dtypes, shapes and strides the
  // plan was made with, and `out` its output shape (mixpa::Error otherwise, `out` untouched);
  // out.lse, when set, gets the log-sum-exp per row as with mixpa::run.
  // Calls on one plan must not overlap (it owns the scratch they write).
  void run(const LayerInputs& layer, OutputView out);

  std::string_view executor() const;  // the resolved executor ("cpu", "cuda", ...)
  // The cpu executor's kernel flavour and why it was picked ("avx2: the only SIMD flavour this
  // CPU runs"); empty for other executors.
  std::string kernels() const;
  std::string kernels_reason() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mixpa
