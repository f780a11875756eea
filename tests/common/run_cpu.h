// A Case through one cpu flavour (cpu::run_with_isa) or through given kernels
// (cpu::run_with_kernels), out and lse filled with a poison value first: what the flavour and
// sweep tests compare against exact attention and against each other.
#pragma once

#include <vector>

#include "common/check.h"
#include "common/variants.h"
#include "cpu/cpu_executor.h"

namespace mixpa::testing {

inline RunOutput run_isa(const Case& c, cpu::Isa isa, int threads = 0, const Options& base = {}) {
  Options options = case_options(c, base);
  options.num_threads = threads;
  RunOutput r;
  r.out.assign(c.out_elements(), -12345.0f);
  r.lse.assign(c.lse_elements(), -12345.0f);
  const Problem p = validate(c.inputs(), options, c.output_view(r.out.data(), r.lse.data()));
  cpu::run_with_isa(p, make_plan(p.shape, p.variant.scale), options, Results{r.out.data(), r.lse.data()}, isa);
  return r;
}

inline RunOutput run_kernels(const Case& c, cpu::ChunkKernel chunk, cpu::GroupKernel group) {
  const Options options = case_options(c, {});
  RunOutput r;
  r.out.assign(c.out_elements(), -12345.0f);
  r.lse.assign(c.lse_elements(), -12345.0f);
  const Problem p = validate(c.inputs(), options, c.output_view(r.out.data(), r.lse.data()));
  cpu::run_with_kernels(p, make_plan(p.shape, p.variant.scale), options, Results{r.out.data(), r.lse.data()}, chunk, group);
  return r;
}

}  // namespace mixpa::testing
