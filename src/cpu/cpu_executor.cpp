// The cpu executor: plan the chunks (shapes only), run them on the pool, merge, finalize.
#include "cpu/cpu_executor.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <ctime>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "core/parallel.h"
#include "core/softmax_state.h"
#include "cpu/dispatch.h"
#include "cpu/thread_pool.h"
#include "mixpa/error.h"

namespace mixpa {
namespace cpu {
namespace {

ChunkJob job_for(const Problem& pr, const Plan& plan, const KvChunk& c) {
  const LogicalBlock lb = plan.logical_block(c.logical_block);
  return {&pr, lb.batch, lb.kv_head, lb.head_begin, lb.rows, c.tokens, lb.row_begin};
}

ChunkOut chunk_out(ExecPlan& ep, std::int64_t chunk) {
  return {ep.o.data() + chunk * ep.row_floats, ep.m.data() + chunk * ep.q_tile, ep.l.data() + chunk * ep.q_tile};
}

// The order the pool hands chunks out: chunks that read the same pages (the other kv heads
// and head tiles of one request, same page range) run next to each other, so the pages one
// brings into the shared cache (and the hardware prefetcher's neighbouring lines: a kv head's
// rows are strided within a page) are still there for the others. Results never depend on it:
// every chunk writes its own partial, merged in chunk order. Empty chunks (context 0) are left
// out: their partial (m = -inf, l = 0) is written once by prepare().
std::vector<std::int64_t> execution_order(const Plan& plan, const SplitKvPlan& sp) {
  std::vector<std::int64_t> order;
  order.reserve(sp.chunks.size());
  for (std::int64_t c = 0; c < static_cast<std::int64_t>(sp.chunks.size()); ++c)
    if (!sp.chunks[c].tokens.empty()) order.push_back(c);
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
// and lse for each of its rows (tile row r = pair (token p, head h): out row (b, p, h)): the
// sinks join once, after the merge.
void merge_block(const Problem& pr, const Plan& plan, ExecPlan& ep, std::int64_t block, const Results& res) {
  const LogicalBlock lb = plan.logical_block(block);
  const std::int64_t dim = pr.shape.head_dim;
  constexpr std::int64_t kStackDim = 512;
  std::array<float, kStackDim> stack;
  std::vector<float> heap;  // only for head_dim > kStackDim (never allocated for SPEC shapes)
  float* o = stack.data();
  if (dim > kStackDim) {
    heap.resize(dim);
    o = heap.data();
  }
  const SplitKvPlan& sp = ep.sp;
  const bool empty = pr.context_len(lb.batch) == 0;  // every chunk empty: zeros and lse -inf
  for (int r = 0; r < lb.rows; ++r) {
    const TileRow tr = plan.tile_row(lb, r);
    const std::int64_t row = pr.out_row(lb.batch, tr.token, tr.head);
    float* row_out = res.out + row * dim;
    if (empty) {
      std::memset(row_out, 0, sizeof(float) * static_cast<std::size_t>(dim));
      if (res.lse) res.lse[row] = -std::numeric_limits<float>::infinity();
      continue;
    }
    SoftmaxState st;
    std::fill(o, o + dim, 0.0f);
    for (std::int64_t c = sp.first[block]; c < sp.first[block + 1]; ++c) {
      const ChunkOut part = chunk_out(ep, c);
      st.merge(o, part.o + r * dim, part.m[r], part.l[r], dim);
    }
    st.finalize(o, row_out, dim, pr.variant.sink(tr.head));
    if (res.lse) res.lse[row] = st.lse();
  }
}

bool same_shape(const Shape& a, const Shape& b) {
  return a.batch == b.batch && a.num_heads == b.num_heads && a.num_kv_heads == b.num_kv_heads &&
         a.head_dim == b.head_dim && a.num_blocks == b.num_blocks && a.block_size == b.block_size &&
         a.max_blocks_per_req == b.max_blocks_per_req && a.q_len == b.q_len;
}

}  // namespace

int threads_for(const Options& options) {
  // hardware_concurrency() reads /sys on every call (glibc): ~5 us, a quarter of the budget.
  static const int cores = hardware_threads();
  return options.num_threads > 0 ? options.num_threads : cores;
}

void check_supported(const Problem& pr, Isa isa) {
  if (!isa_supported(isa)) throw Error("cpu: this CPU cannot run the " + std::string(isa_name(isa)) + " kernels");
  if (!flavour_computes(isa, pr))
    throw Error("cpu: the " + std::string(isa_name(isa)) + " kernels cannot compute " + beyond_flavour(isa, pr));
}

namespace {

// The plan of one call for explicit kernels (run_with_kernels: the emulated flavours' tests).
void prepare_with(ExecPlan& ep, const Problem& pr, const Plan& plan, int threads, Isa isa, ChunkKernel kernel,
                  GroupKernel group) {
  ep.kernel = nullptr;  // invalid until complete (matches() is false meanwhile)
  ep.isa = isa;
  ep.group = group;
  ep.threads = std::max(1, threads);
  ep.sp = plan_split_kv(plan, pr.context_lens, kSplitTargetItems, kSplitMinChunkTokens, pr.variant.window_left);
  const auto n = static_cast<std::int64_t>(ep.sp.chunks.size());
  ep.q_tile = plan.q_tile;
  ep.row_floats = std::int64_t{plan.q_tile} * pr.shape.head_dim;
  ep.o.assign(n * ep.row_floats, 0.0f);
  ep.m.assign(n * plan.q_tile, -std::numeric_limits<float>::infinity());
  ep.l.assign(n * plan.q_tile, 0.0f);
  ep.order = execution_order(plan, ep.sp);
  const bool grouping = ep.group != nullptr && pr.shape.num_kv_heads > 1 && pr.shape.group() <= 8;
  ep.unit_begin = work_units(plan, ep.sp, ep.order, grouping, ep.threads);
  ep.shape = pr.shape;
  ep.window_left = pr.variant.window_left;  // the window decides the chunks
  ep.context_lens.resize(static_cast<std::size_t>(pr.shape.batch));
  for (std::int64_t b = 0; b < pr.shape.batch; ++b) ep.context_lens[b] = pr.context_len(b);
  ep.kernel = kernel;
}

}  // namespace

void prepare(ExecPlan& ep, const Problem& pr, const Plan& plan, int threads, Isa isa) {
  check_supported(pr, isa);
  prepare_with(ep, pr, plan, threads, isa, chunk_kernel(isa), group_kernel(isa));
}

void run_with_kernels(const Problem& pr, const Plan& plan, const Options& options, const Results& out,
                      ChunkKernel kernel, GroupKernel group) {
  ExecPlan ep;
  prepare_with(ep, pr, plan, threads_for(options), Isa::kScalar, kernel, group);
  execute(ep, pr, plan, out, options.cancelled);
}

static bool same_context_lens(const ExecPlan& ep, const Problem& pr) {
  if (!pr.context_lens.wide)  // the common case, one memcmp-like pass
    return std::equal(ep.context_lens.begin(), ep.context_lens.end(), static_cast<const std::int32_t*>(pr.context_lens.data));
  return std::equal(ep.context_lens.begin(), ep.context_lens.end(), static_cast<const std::int64_t*>(pr.context_lens.data));
}

bool matches(const ExecPlan& ep, const Problem& pr, const Plan& plan, int threads, Isa isa) {
  return ep.kernel != nullptr && ep.isa == isa && ep.threads == std::max(1, threads) && ep.q_tile == plan.q_tile &&
         same_shape(ep.shape, pr.shape) && ep.window_left == pr.variant.window_left &&
         static_cast<std::int64_t>(ep.context_lens.size()) == pr.shape.batch && same_context_lens(ep, pr);
}

void execute(ExecPlan& ep, const Problem& pr, const Plan& plan, const Results& out,
             const std::function<bool()>& cancelled) {
  const std::int64_t units = static_cast<std::int64_t>(ep.unit_begin.size()) - 1;
  ThreadPool& pool = ThreadPool::instance();
  // Cancellation skips the remaining units (pool workers must not throw) and throws below,
  // before anything is written to `out`.
  std::atomic<bool> stop{false};
  auto run_unit = [&](std::int64_t u) {
    if (cancelled && (stop.load(std::memory_order_relaxed) || cancelled())) {
      stop.store(true, std::memory_order_relaxed);
      return;
    }
    const std::int64_t i0 = ep.unit_begin[u], count = ep.unit_begin[u + 1] - i0;
    if (count == 1) {
      const std::int64_t c = ep.order[i0];
      ep.kernel(job_for(pr, plan, ep.sp.chunks[c]), chunk_out(ep, c));
      return;
    }
    constexpr std::int64_t kStackJobs = 64;
    std::array<ChunkJob, kStackJobs> job_stack;
    std::array<ChunkOut, kStackJobs> out_stack;
    std::vector<ChunkJob> job_heap;  // only for groups of more than kStackJobs kv heads
    std::vector<ChunkOut> out_heap;
    ChunkJob* jobs = job_stack.data();
    ChunkOut* outs = out_stack.data();
    if (count > kStackJobs) {
      job_heap.resize(count);
      out_heap.resize(count);
      jobs = job_heap.data();
      outs = out_heap.data();
    }
    for (std::int64_t i = 0; i < count; ++i) {
      const std::int64_t c = ep.order[i0 + i];
      jobs[i] = job_for(pr, plan, ep.sp.chunks[c]);
      outs[i] = chunk_out(ep, c);
    }
    ep.group(std::span<const ChunkJob>(jobs, count), std::span<const ChunkOut>(outs, count));
  };
  if (ep.kernel_ns == nullptr) {
    pool.parallel_for(units, ep.threads, run_unit);
  } else {
    pool.parallel_for(units, ep.threads, [&](std::int64_t u) {
      timespec t0, t1;  // the thread's CPU time: a neighbour's preemption is not counted
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
      run_unit(u);
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
      ep.kernel_ns->fetch_add((t1.tv_sec - t0.tv_sec) * 1'000'000'000 + (t1.tv_nsec - t0.tv_nsec));
    });
  }
  if (stop.load()) throw Interrupted();
  // Merging is (rows x head_dim) per chunk: cheap next to the chunks, but still spread out.
  pool.parallel_for(plan.total_logical_blocks, ep.threads, [&](std::int64_t b) { merge_block(pr, plan, ep, b, out); });
}

void run_with_isa(const Problem& pr, const Plan& plan, const Options& options, const Results& out, Isa isa) {
  // One plan per calling thread, reused while the figures stay the same (the layers of a
  // decode step): a repeated call plans and allocates nothing.
  thread_local ExecPlan cached;
  const int threads = threads_for(options);
  check_supported(pr, isa);  // the variant may differ from the cached plan's (same shapes)
  if (!matches(cached, pr, plan, threads, isa)) prepare(cached, pr, plan, threads, isa);
  execute(cached, pr, plan, out, options.cancelled);
}

}  // namespace cpu

void run_cpu(const Problem& problem, const Plan& plan, const Options& options, const Results& out) {
  cpu::run_with_isa(problem, plan, options, out, cpu::isa_for(problem, plan));
}

}  // namespace mixpa
