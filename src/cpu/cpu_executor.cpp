// The cpu executor: plan the chunks (shapes only), run them on the pool, merge, finalize.
#include "cpu/cpu_executor.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "core/parallel.h"
#include "core/softmax_state.h"
#include "core/split_kv.h"
#include "cpu/thread_pool.h"
#include "mixpa/error.h"

namespace mixpa {
namespace cpu {
namespace {

// Partial results of one chunk: rows x head_dim floats plus m and l per row.
struct Partials {
  std::int64_t row_floats = 0;  // q_tile * head_dim
  std::vector<float> o, m, l;
  ChunkOut at(std::int64_t chunk, int q_tile) {
    return {o.data() + chunk * row_floats, m.data() + chunk * q_tile, l.data() + chunk * q_tile};
  }
};

ChunkJob job_for(const Problem& pr, const Plan& plan, const KvChunk& c) {
  const LogicalBlock lb = plan.logical_block(c.logical_block);
  return {&pr, lb.batch, lb.kv_head, lb.head_begin, lb.rows, c.tokens};
}

// The order the pool hands chunks out: chunks that read the same pages (the other kv heads
// and head tiles of one request, same page range) run next to each other, so the pages one
// brings into the shared cache (and the hardware prefetcher's neighbouring lines: a kv head's
// rows are strided within a page) are still there for the others. Results never depend on it:
// every chunk writes its own partial, merged in chunk order.
std::vector<std::int64_t> execution_order(const Plan& plan, const SplitKvPlan& sp) {
  std::vector<std::int64_t> order(sp.chunks.size());
  std::iota(order.begin(), order.end(), std::int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    const KvChunk &x = sp.chunks[a], &y = sp.chunks[b];
    const std::int64_t bx = x.logical_block / plan.q_loop, by = y.logical_block / plan.q_loop;
    return bx != by ? bx < by : x.tokens.begin < y.tokens.begin;
  });
  return order;
}

// Work units as runs of `order` (unit u = order[begin[u] .. begin[u+1])). With `grouping`, the
// chunks of one request over the same pages (its kv heads) form one unit, so a group kernel
// reads each page once and contiguously, as long as there are at least 4 units per thread;
// otherwise every chunk is its own unit.
std::vector<std::int64_t> work_units(const Plan& plan, const SplitKvPlan& sp, const std::vector<std::int64_t>& order,
                                     bool grouping, int threads) {
  const auto n = static_cast<std::int64_t>(order.size());
  std::vector<std::int64_t> begin;
  for (std::int64_t i = 0; i < n; ++i) {
    const KvChunk& c = sp.chunks[order[i]];
    const KvChunk* p = i > 0 ? &sp.chunks[order[i - 1]] : nullptr;
    const bool joins = grouping && p != nullptr && p->logical_block / plan.q_loop == c.logical_block / plan.q_loop &&
                       p->tokens.begin == c.tokens.begin && p->tokens.end == c.tokens.end;
    if (!joins) begin.push_back(i);
  }
  if (static_cast<std::int64_t>(begin.size()) < 4 * threads) {
    begin.resize(n);
    std::iota(begin.begin(), begin.end(), std::int64_t{0});
  }
  begin.push_back(n);
  return begin;
}

// Merges the chunks of one logical block in chunk order and writes out = o / (l + e^(sink - m))
// and lse: the sinks join once, after the merge.
void merge_block(const Problem& pr, const Plan& plan, const SplitKvPlan& sp, std::int64_t block, Partials& parts,
                 const Results& res) {
  const LogicalBlock lb = plan.logical_block(block);
  const std::int64_t dim = pr.shape.head_dim;
  std::vector<float> o(dim);
  for (int r = 0; r < lb.rows; ++r) {
    SoftmaxState st;
    std::fill(o.begin(), o.end(), 0.0f);
    for (std::int64_t c = sp.first[block]; c < sp.first[block + 1]; ++c) {
      const ChunkOut part = parts.at(c, plan.q_tile);
      st.merge(o.data(), part.o + r * dim, part.m[r], part.l[r], dim);
    }
    const std::int64_t head = lb.head_begin + r, row = lb.batch * pr.shape.num_heads + head;
    st.finalize(o.data(), res.out + row * dim, dim, pr.variant.sink(head));
    if (res.lse) res.lse[row] = st.lse();
  }
}

}  // namespace

void run_with_isa(const Problem& pr, const Plan& plan, const Options& options, const Results& out, Isa isa) {
  if (!isa_supported(isa)) throw Error("cpu: this CPU cannot run the " + std::string(isa_name(isa)) + " kernels");
  run_with_kernels(pr, plan, options, out, chunk_kernel(isa), group_kernel(isa));
}

void run_with_kernels(const Problem& pr, const Plan& plan, const Options& options, const Results& out,
                      ChunkKernel kernel, GroupKernel group) {
  const SplitKvPlan sp = plan_split_kv(plan, pr.context_lens, kSplitTargetItems, kSplitMinChunkTokens,
                                       pr.variant.window_left);
  const std::int64_t n = static_cast<std::int64_t>(sp.chunks.size());
  const int threads = options.num_threads > 0 ? options.num_threads : hardware_threads();
  Partials parts;
  parts.row_floats = std::int64_t{plan.q_tile} * pr.shape.head_dim;
  parts.o.resize(n * parts.row_floats);
  parts.m.resize(n * plan.q_tile);
  parts.l.resize(n * plan.q_tile);
  const std::vector<std::int64_t> order = execution_order(plan, sp);
  const bool grouping = group != nullptr && pr.shape.num_kv_heads > 1 && pr.shape.group() <= 8;
  const std::vector<std::int64_t> unit_begin = work_units(plan, sp, order, grouping, threads);
  const std::int64_t units = static_cast<std::int64_t>(unit_begin.size()) - 1;
  ThreadPool::instance().parallel_for(units, threads, [&](std::int64_t u) {
    const std::int64_t i0 = unit_begin[u], count = unit_begin[u + 1] - i0;
    if (count == 1) {
      const std::int64_t c = order[i0];
      kernel(job_for(pr, plan, sp.chunks[c]), parts.at(c, plan.q_tile));
      return;
    }
    std::vector<ChunkJob> jobs;
    std::vector<ChunkOut> outs;
    for (std::int64_t i = i0; i < i0 + count; ++i) {
      jobs.push_back(job_for(pr, plan, sp.chunks[order[i]]));
      outs.push_back(parts.at(order[i], plan.q_tile));
    }
    group(jobs, outs);
  });
  // Merging is (rows x head_dim) per chunk: cheap next to the chunks, but still spread out.
  ThreadPool::instance().parallel_for(plan.total_logical_blocks, threads, [&](std::int64_t b) {
    merge_block(pr, plan, sp, b, parts, out);
  });
}

}  // namespace cpu

void run_cpu(const Problem& problem, const Plan& plan, const Options& options, const Results& out) {
  cpu::run_with_isa(problem, plan, options, out, cpu::default_isa());
}

}  // namespace mixpa
