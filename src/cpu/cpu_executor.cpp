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

// The merge's passes over head_dim, with an AVX2 clone picked at load time (the library's
// baseline is x86-64 SSE2): the same IEEE operations either way, so the same bits.
// Not under ThreadSanitizer: its runtime is not up yet when the loader runs ifunc resolvers.
#if defined(__SANITIZE_THREAD__)
#define MIXPA_MERGE_CLONES
#else
#define MIXPA_MERGE_CLONES __attribute__((target_clones("avx2", "default")))
#endif
MIXPA_MERGE_CLONES void combine(float* dst, const float* o, const float* p, float alpha, float beta, std::int64_t dim) {
  for (std::int64_t d = 0; d < dim; ++d) dst[d] = alpha * o[d] + beta * p[d];
}
MIXPA_MERGE_CLONES void combine_scaled(float* dst, const float* o, const float* p, float alpha, float beta, float inv,
                                       std::int64_t dim) {
  for (std::int64_t d = 0; d < dim; ++d) dst[d] = (alpha * o[d] + beta * p[d]) * inv;
}
MIXPA_MERGE_CLONES void scaled(float* dst, const float* o, float inv, std::int64_t dim) {
  for (std::int64_t d = 0; d < dim; ++d) dst[d] = o[d] * inv;
}
#undef MIXPA_MERGE_CLONES

// Merges the chunks of one logical block in chunk order and writes out = o / (l + e^(sink - m))
// and lse for each of its rows (tile row r = pair (token p, head h): out row (b, p, h)): the
// sinks join once, after the merge. Bit for bit SoftmaxState::merge over the chunks, then
// finalize(), in fewer passes over head_dim: the scalar fold runs first, so the first partial
// is read in place (no copy) and the last fold writes out directly, already scaled.
void merge_block(const Problem& pr, const Plan& plan, ExecPlan& ep, std::int64_t block, const Results& res) {
  const LogicalBlock lb = plan.logical_block(block);
  const std::int64_t dim = pr.shape.head_dim;
  constexpr std::int64_t kStackDim = 512;
  struct Step {
    const float* part;
    SoftmaxState::Factors f;
  };
  // Chunks per block <= kSplitTargetItems (plan_split_kv); the heap only past that.
  constexpr std::int64_t kStackSteps = kSplitTargetItems;
  std::array<float, kStackDim> stack;
  std::array<Step, kStackSteps> step_stack;
  std::vector<float> heap;  // only for head_dim > kStackDim (never allocated for SPEC shapes)
  std::vector<Step> step_heap;
  float* acc = stack.data();
  if (dim > kStackDim) {
    heap.resize(dim);
    acc = heap.data();
  }
  const SplitKvPlan& sp = ep.sp;
  Step* steps = step_stack.data();
  if (sp.first[block + 1] - sp.first[block] > kStackSteps) {
    step_heap.resize(sp.first[block + 1] - sp.first[block]);
    steps = step_heap.data();
  }
  const bool empty = pr.context_len(lb.batch) == 0;  // every chunk empty: zeros and lse -inf
  for (int r = 0; r < lb.rows; ++r) {
    const TileRow tr = plan.tile_row(lb, r);
    const std::int64_t row = pr.out_row(lb.batch, tr.token, tr.head);
    float* row_out = res.out + row * dim;
    SoftmaxState st;
    std::int64_t n = 0;
    for (std::int64_t c = empty ? sp.first[block + 1] : sp.first[block]; c < sp.first[block + 1]; ++c) {
      const ChunkOut part = chunk_out(ep, c);
      const float m_part = part.m[r], l_part = part.l[r];
      if (m_part == -std::numeric_limits<float>::infinity() && l_part == 0.0f) continue;  // sees no token
      const float* o_part = part.o + r * dim;
      if (st.empty()) {
        st.m = m_part;
        st.l = l_part;
        steps[n++] = {o_part, {0.0f, 1.0f}};
      } else {
        steps[n++] = {o_part, st.fold(m_part, l_part)};
      }
    }
    if (res.lse) res.lse[row] = st.lse();
    if (n == 0) {
      std::memset(row_out, 0, sizeof(float) * static_cast<std::size_t>(dim));
      continue;
    }
    const float inv = st.inverse_denominator(pr.variant.sink(tr.head));
    const float* o = steps[0].part;
    for (std::int64_t k = 1; k + 1 < n; ++k) {
      combine(acc, o, steps[k].part, steps[k].f.alpha, steps[k].f.beta, dim);
      o = acc;
    }
    if (n == 1) scaled(row_out, o, inv, dim);
    else combine_scaled(row_out, o, steps[n - 1].part, steps[n - 1].f.alpha, steps[n - 1].f.beta, inv, dim);
  }
}

// Runs fn; when ns is set (the bench), adds its CLOCK_MONOTONIC duration to it.
template <class Fn>
void timed(std::atomic<std::int64_t>* ns, Fn&& fn) {
  if (ns == nullptr) return fn();
  timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  fn();
  clock_gettime(CLOCK_MONOTONIC, &t1);
  ns->fetch_add((t1.tv_sec - t0.tv_sec) * 1'000'000'000 + (t1.tv_nsec - t0.tv_nsec));
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
  const std::int64_t blocks = plan.total_logical_blocks;
  ep.block_chunks.assign(static_cast<std::size_t>(blocks), 0);
  for (const std::int64_t c : ep.order) ++ep.block_chunks[ep.sp.chunks[c].logical_block];
  ep.pending = std::make_unique<std::atomic<std::int32_t>[]>(static_cast<std::size_t>(blocks));
  ep.idle_blocks.clear();
  for (std::int64_t b = 0; b < blocks; ++b)
    if (ep.block_chunks[b] == 0) ep.idle_blocks.push_back(b);
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
  // Cancellation skips the remaining units (pool workers must not throw) and throws below;
  // the blocks merged by then are written, the rest of `out` is not (Options::cancelled).
  std::atomic<bool> stop{false};
  auto run_kernels = [&](std::int64_t i0, std::int64_t count) {
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
  auto merge = [&](std::int64_t b) { timed(ep.merge_ns, [&] { merge_block(pr, plan, ep, b, out); }); };
  auto run_unit = [&](std::int64_t u) {
    if (cancelled && (stop.load(std::memory_order_relaxed) || cancelled())) {
      stop.store(true, std::memory_order_relaxed);
      return;
    }
    const std::int64_t i0 = ep.unit_begin[u], count = ep.unit_begin[u + 1] - i0;
    timed(ep.kernel_ns, [&] { run_kernels(i0, count); });
    // The thread that completes a block's last chunk merges it (acq_rel: the other chunks'
    // partials, written before their decrements, are visible here). Chunk order, not
    // completion order, decides the arithmetic, so the result is the same on any thread count.
    for (std::int64_t i = i0; i < i0 + count; ++i) {
      const std::int64_t b = ep.sp.chunks[ep.order[i]].logical_block;
      if (ep.pending[b].fetch_sub(1, std::memory_order_acq_rel) == 1) merge(b);
    }
  };
  for (std::int64_t b = 0; b < plan.total_logical_blocks; ++b)
    ep.pending[b].store(ep.block_chunks[b], std::memory_order_relaxed);  // published by the pool's hand-out
  for (const std::int64_t b : ep.idle_blocks) merge_block(pr, plan, ep, b, out);
  pool.parallel_for(units, ep.threads, run_unit);
  if (stop.load()) throw Interrupted();
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
