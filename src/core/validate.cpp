// Every rule of SPEC §1 as a check with a message that names the input and the rule.
#include "core/validate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>

namespace mixpa {
namespace {

template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  throw Error(s.str());
}

std::string dtype_set(std::initializer_list<DType> dtypes) {
  std::string s;
  for (DType d : dtypes) s += (s.empty() ? "" : " or ") + std::string(dtype_name(d));
  return s;
}

void require_tensor(const TensorView& t, const char* name, std::initializer_list<DType> dtypes, int rank,
                    const char* dims, int alt_rank = -1, const char* alt_dims = nullptr) {
  if (!t.present()) fail(name, ": missing (expected ", dtype_set(dtypes), ' ', dims, ')');
  if (std::find(dtypes.begin(), dtypes.end(), t.dtype) == dtypes.end())
    fail(name, ": dtype is ", dtype_name(t.dtype), ", expected ", dtype_set(dtypes));
  if (t.rank != rank && t.rank != alt_rank) {
    if (alt_rank > 0)
      fail(name, ": rank is ", t.rank, " (shape ", t.shape_string(), "), expected ", rank, ' ', dims, " or ", alt_rank,
           ' ', alt_dims);
    fail(name, ": rank is ", t.rank, " (shape ", t.shape_string(), "), expected ", rank, ' ', dims);
  }
  // Dimensions are bounded so that every product of them fits in 64 bits.
  __int128 total = 1;
  for (int d = 0; d < rank; ++d) {
    if (t.shape[d] < 0) fail(name, ": dimension ", d, " is ", t.shape[d], ", must be >= 0");
    if (t.shape[d] > std::numeric_limits<std::int32_t>::max())
      fail(name, ": dimension ", d, " is ", t.shape[d], ", must be < 2^31");
    total *= t.shape[d];
  }
  if (total > (__int128{1} << 60)) fail(name, ": shape ", t.shape_string(), " has more than 2^60 elements");
  if (t.numel() > 0 && t.data == nullptr) fail(name, ": data pointer is null for shape ", t.shape_string());
}

void require_contiguous(const TensorView& t, const char* name) {
  if (!t.is_contiguous()) fail(name, ": must be contiguous (row-major), shape ", t.shape_string());
}

// The bytes a view can touch, [lo, hi) as addresses (empty for no elements).
struct Extent {
  __int128 lo = 0, hi = 0;
  bool empty() const { return hi <= lo; }
};
Extent extent_of(const void* data, std::size_t elem_bytes, const std::int64_t* shape, const std::int64_t* strides,
                 int rank) {
  Extent e;
  __int128 lo = 0, hi = 0;  // element offsets of the first and last element
  for (int d = 0; d < rank; ++d) {
    if (shape[d] <= 0) return e;
    const __int128 span = static_cast<__int128>(shape[d] - 1) * strides[d];
    (span < 0 ? lo : hi) += span;
  }
  const auto base = static_cast<__int128>(reinterpret_cast<std::uintptr_t>(data));
  e.lo = base + lo * static_cast<__int128>(elem_bytes);
  e.hi = base + (hi + 1) * static_cast<__int128>(elem_bytes);
  return e;
}

bool overlap(const Extent& a, const Extent& b) { return !a.empty() && !b.empty() && a.lo < b.hi && b.lo < a.hi; }

// Executors write `out` (and `lse`) while they read the inputs: an output sharing memory with
// one of them, or with the other output, would corrupt it mid-computation. Shapes are
// validated (the output's against the query's) before this is called.
void require_disjoint_outputs(const Inputs& in, const OutputView& out) {
  // Both outputs are contiguous: [rows, head_dim] and [rows].
  const std::int64_t out_shape[2] = {out.rows(), out.shape[2]}, out_strides[2] = {out.shape[2], 1};
  const std::int64_t lse_shape[1] = {out.rows()}, lse_strides[1] = {1};
  const Extent o = extent_of(out.data, sizeof(float), out_shape, out_strides, 2);
  const Extent l = out.lse ? extent_of(out.lse, sizeof(float), lse_shape, lse_strides, 1) : Extent{};
  if (overlap(o, l)) fail("lse: overlaps the memory of out");
  const std::pair<const TensorView*, const char*> inputs[] = {
      {&in.query, "query"},         {&in.key_cache, "key_cache"},       {&in.value_cache, "value_cache"},
      {&in.block_table, "block_table"}, {&in.context_lens, "context_lens"}, {&in.alibi_slopes, "alibi_slopes"},
      {&in.sinks, "sinks"}};
  for (const auto& [t, name] : inputs) {
    if (!t->present()) continue;
    const Extent e = extent_of(t->data, dtype_size(t->dtype), t->shape.data(), t->strides.data(), t->rank);
    if (overlap(o, e)) fail("out: overlaps the memory of ", name, " (the output must not share memory with an input)");
    if (overlap(l, e)) fail("lse: overlaps the memory of ", name, " (the output must not share memory with an input)");
  }
}

// Element strides of a cache view as (page, row, kv head), whatever the layout.
CacheStrides cache_strides(const TensorView& t, const char* name, KvLayout layout) {
  if (t.shape[3] > 1 && t.strides[3] != 1) fail(name, ": head_dim stride is ", t.strides[3], ", must be 1");
  for (int d = 0; d < 3; ++d)
    if (t.strides[d] < 0) fail(name, ": stride ", d, " is ", t.strides[d], ", must be >= 0");
  return layout == KvLayout::kNHD ? CacheStrides{t.strides[0], t.strides[1], t.strides[2]}
                                  : CacheStrides{t.strides[0], t.strides[2], t.strides[1]};
}

// An optional f32 [num_heads] vector of finite values (ALiBi slopes, sinks).
const float* head_vector(const TensorView& t, const char* name, std::int64_t num_heads) {
  if (!t.present()) return nullptr;
  require_tensor(t, name, {DType::kF32}, 1, "[num_heads]");
  require_contiguous(t, name);
  if (t.shape[0] != num_heads) fail(name, ": shape ", t.shape_string(), ", expected [", num_heads, "] (num_heads)");
  const float* v = t.as<float>();
  for (std::int64_t h = 0; h < num_heads; ++h)
    if (!std::isfinite(v[h])) fail(name, "[", h, "] = ", v[h], " is not finite");
  return v;
}

}  // namespace

Variant resolve_variant(const Inputs& in, const Options& options, const Shape& s) {
  Variant v;
  v.scale = resolve_scale(options, s.head_dim);
  if (!std::isfinite(options.softcap) || options.softcap < 0)
    fail("softcap: ", options.softcap, " must be a finite number >= 0 (0 = no soft-cap)");
  v.softcap = static_cast<float>(options.softcap);
  if (options.softcap > 0 && !(v.softcap > 0 && std::isfinite(v.softcap)))
    fail("softcap: ", options.softcap, " is outside float32's positive normal range");
  if (options.window_left < -1) fail("window_left: ", options.window_left, " must be >= -1 (-1 = no window)");
  v.window_left = options.window_left;
  v.alibi_slopes = head_vector(in.alibi_slopes, "alibi_slopes", s.num_heads);
  v.sinks = head_vector(in.sinks, "sinks", s.num_heads);
  return v;
}

void resolve_kv_scales(const Options& options, DType kv_dtype, Problem& p) {
  const bool fp8 = kv_dtype == DType::kF8E4M3 || kv_dtype == DType::kF8E5M2;
  const std::pair<const std::optional<double>*, const char*> scales[] = {{&options.k_scale, "k_scale"},
                                                                         {&options.v_scale, "v_scale"}};
  for (const auto& [value, name] : scales) {
    if (!value->has_value()) continue;
    if (!fp8)
      fail(name, ": given for a ", dtype_name(kv_dtype), " cache; k_scale/v_scale apply to F8_E4M3 / F8_E5M2 caches only");
    const double v = **value;
    if (!std::isfinite(v) || !(v > 0)) fail(name, ": ", v, " must be a positive finite number");
    const float f = static_cast<float>(v);
    if (!std::isfinite(f) || f < std::numeric_limits<float>::min())
      fail(name, ": ", v, " is outside float32's positive normal range");
  }
  p.k_scale = options.k_scale ? static_cast<float>(*options.k_scale) : 1.0f;
  p.v_scale = options.v_scale ? static_cast<float>(*options.v_scale) : 1.0f;
}

float resolve_scale(const Options& options, std::int64_t head_dim) {
  if (!options.scale) return static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  const double s = *options.scale;
  if (!std::isfinite(s)) fail("scale: ", s, " is not finite");
  if (!std::isfinite(static_cast<float>(s))) fail("scale: ", s, " overflows float32");
  // Scores are computed in float32: a scale below the smallest normal float32 would become 0
  // or a denormal (flushed to 0 by some kernels), silently turning attention into a mean.
  if (s != 0 && std::abs(s) < std::numeric_limits<float>::min())
    fail("scale: ", s, " is nonzero but below the smallest normal float32 (",
         std::numeric_limits<float>::min(), ") in magnitude: it would compute as 0");
  return static_cast<float>(s);
}

void validate_options(const Options& options) {
  if (options.hw_blocks < 1) fail("hw_blocks: ", options.hw_blocks, " must be >= 1");
  if (options.hw_blocks > kMaxHwBlocks)
    fail("hw_blocks: ", options.hw_blocks, " is above the limit of ", kMaxHwBlocks,
         " (each hardware block is 3 sim workers, i.e. OS threads)");
  if (options.pipe_depth < 1) fail("pipe_depth: ", options.pipe_depth, " must be >= 1");
  if (options.pipe_depth > kMaxPipeDepth)
    fail("pipe_depth: ", options.pipe_depth, " is above the limit of ", kMaxPipeDepth, " slots per pipe");
  if (options.num_threads < 0) fail("num_threads: ", options.num_threads, " must be >= 0 (0 = all cores)");
  if (options.num_threads > kMaxThreads)
    fail("num_threads: ", options.num_threads, " is above the limit of ", kMaxThreads, " OS threads");
  const SimOptions& sim = options.sim;
  if (!(sim.watchdog_seconds > 0) || !std::isfinite(sim.watchdog_seconds))
    fail("watchdog: ", sim.watchdog_seconds, " seconds must be a positive number");
  if (sim.watchdog_seconds < kMinWatchdogSeconds)
    fail("watchdog: ", sim.watchdog_seconds, " seconds is below the minimum of ", kMinWatchdogSeconds,
         " s (shorter stalls happen without a deadlock: scheduling, page faults)");
  if (sim.swimlane_blocks < 1) fail("swimlane_blocks: ", sim.swimlane_blocks, " must be >= 1");
  if (!std::isfinite(sim.swimlane_from_us) || sim.swimlane_from_us < 0)
    fail("swimlane window: from ", sim.swimlane_from_us, " us must be a finite time >= 0");
  if (!std::isfinite(sim.swimlane_to_us))
    fail("swimlane window: to ", sim.swimlane_to_us, " us must be finite (or negative for the default window)");
  if (sim.swimlane_to_us >= 0 && !(sim.swimlane_to_us > sim.swimlane_from_us))
    fail("swimlane window: to ", sim.swimlane_to_us, " us must be after from ", sim.swimlane_from_us, " us");
}

KvLayout parse_kv_layout(std::string_view name, std::string_view what) {
  if (name == "NHD") return KvLayout::kNHD;
  if (name == "HND") return KvLayout::kHND;
  fail(what, ": '", name, "' is not a KV layout, expected NHD ([num_blocks, block_size, num_kv_heads, head_dim]) "
       "or HND ([num_blocks, num_kv_heads, block_size, head_dim])");
}

Shape validate_shapes(const Inputs& in, KvLayout layout) {
  const bool nhd = layout == KvLayout::kNHD;
  const char* cache_dims = nhd ? "[num_blocks, block_size, num_kv_heads, head_dim]"
                               : "[num_blocks, num_kv_heads, block_size, head_dim] (kv_layout HND)";
  const std::initializer_list<DType> kCacheDtypes = {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2};
  require_tensor(in.query, "query", {DType::kBF16, DType::kF16}, 3, "[batch, num_heads, head_dim]", 4,
                 "[batch, q_len, num_heads, head_dim]");
  require_tensor(in.key_cache, "key_cache", kCacheDtypes, 4, cache_dims);
  require_tensor(in.value_cache, "value_cache", kCacheDtypes, 4, cache_dims);
  require_tensor(in.block_table, "block_table", {DType::kI32, DType::kI64}, 2, "[batch, max_blocks_per_req]");
  require_tensor(in.context_lens, "context_lens", {DType::kI32, DType::kI64}, 1, "[batch]");
  require_contiguous(in.query, "query");
  require_contiguous(in.block_table, "block_table");
  require_contiguous(in.context_lens, "context_lens");
  if (in.value_cache.dtype != in.key_cache.dtype)
    fail("value_cache: dtype is ", dtype_name(in.value_cache.dtype), " but key_cache is ", dtype_name(in.key_cache.dtype),
         " (the caches must share a dtype)");
  if (in.context_lens.dtype != in.block_table.dtype)
    fail("context_lens: dtype is ", dtype_name(in.context_lens.dtype), " but block_table is ",
         dtype_name(in.block_table.dtype), " (the index tensors must share a dtype)");

  Shape s;
  const bool multi = in.query.rank == 4;
  s.batch = in.query.shape[0];
  s.q_len = multi ? in.query.shape[1] : 1;
  s.num_heads = in.query.shape[multi ? 2 : 1];
  s.head_dim = in.query.shape[multi ? 3 : 2];
  s.num_blocks = in.key_cache.shape[0];
  s.block_size = in.key_cache.shape[nhd ? 1 : 2];
  s.num_kv_heads = in.key_cache.shape[nhd ? 2 : 1];
  s.max_blocks_per_req = in.block_table.shape[1];

  for (int d = 0; d < 4; ++d)
    if (in.value_cache.shape[d] != in.key_cache.shape[d])
      fail("value_cache: shape ", in.value_cache.shape_string(), " differs from key_cache shape ",
           in.key_cache.shape_string());
  if (in.key_cache.shape[3] != s.head_dim)
    fail("key_cache: head_dim is ", in.key_cache.shape[3], " but query head_dim is ", s.head_dim);
  if (in.block_table.shape[0] != s.batch)
    fail("block_table: batch is ", in.block_table.shape[0], " but query batch is ", s.batch);
  if (in.context_lens.shape[0] != s.batch)
    fail("context_lens: batch is ", in.context_lens.shape[0], " but query batch is ", s.batch);
  if (s.q_len < kMinQLen || s.q_len > kMaxQLen)
    fail("query: q_len is ", s.q_len, " (shape ", in.query.shape_string(), "), must be in ", kMinQLen, "..", kMaxQLen);
  if (s.num_heads < 1) fail("query: num_heads is ", s.num_heads, ", must be >= 1");
  if (s.num_kv_heads < 1) fail("key_cache: num_kv_heads is ", s.num_kv_heads, ", must be >= 1");
  if (s.num_heads % s.num_kv_heads != 0)
    fail("num_heads % num_kv_heads: num_heads ", s.num_heads, " is not a multiple of num_kv_heads ", s.num_kv_heads);
  if (s.head_dim < kMinHeadDim || s.head_dim > kMaxHeadDim || s.head_dim % kHeadDimMultiple != 0)
    fail("query: head_dim ", s.head_dim, " is not supported, expected a multiple of ", kHeadDimMultiple, " in ",
         kMinHeadDim, "..", kMaxHeadDim);
  if (s.block_size < kMinBlockSize || s.block_size > kMaxBlockSize)
    fail("key_cache: block_size ", s.block_size, " is not supported, expected ", kMinBlockSize, "..", kMaxBlockSize);
  cache_strides(in.key_cache, "key_cache", layout);
  cache_strides(in.value_cache, "value_cache", layout);
  return s;
}

Problem validate(const Inputs& in, const Options& options, const OutputView& out) {
  Problem p = validate_inputs(in, options);
  const Shape& s = p.shape;
  if (out.shape[0] != s.batch || out.shape[1] != s.num_heads || out.shape[2] != s.head_dim || out.q_len != s.q_len) {
    if (out.q_len != 1 || s.q_len != 1)
      fail("out: shape [", out.shape[0], ", ", out.q_len, ", ", out.shape[1], ", ", out.shape[2], "], expected [", s.batch,
           ", ", s.q_len, ", ", s.num_heads, ", ", s.head_dim, "] (the query's)");
    fail("out: shape [", out.shape[0], ", ", out.shape[1], ", ", out.shape[2], "], expected [", s.batch, ", ",
         s.num_heads, ", ", s.head_dim, "]");
  }
  if (out.data == nullptr && s.batch > 0) fail("out: data pointer is null");
  if (out.lse != nullptr && out.lse == out.data) fail("lse: must not alias out");
  require_disjoint_outputs(in, out);
  return p;
}

Problem validate_inputs(const Inputs& in, const Options& options) {
  validate_options(options);
  Problem p;
  p.shape = validate_shapes(in, options.kv_layout);
  const Shape& s = p.shape;
  p.variant = resolve_variant(in, options, s);

  p.query_dtype = in.query.dtype;
  p.query_data = in.query.data;
  p.kv_dtype = in.key_cache.dtype;
  p.key_data = in.key_cache.data;
  p.value_data = in.value_cache.data;
  resolve_kv_scales(options, p.kv_dtype, p);
  if (p.query_dtype == DType::kBF16) p.query = in.query.as<bf16>();
  if (p.kv_dtype == DType::kBF16) {
    p.key_cache = in.key_cache.as<bf16>();
    p.value_cache = in.value_cache.as<bf16>();
  }
  p.k_strides = cache_strides(in.key_cache, "key_cache", options.kv_layout);
  p.v_strides = cache_strides(in.value_cache, "value_cache", options.kv_layout);
  const bool wide = in.block_table.dtype == DType::kI64;
  p.block_table = wide ? IndexView(in.block_table.as<std::int64_t>()) : IndexView(in.block_table.as<std::int32_t>());
  p.context_lens = wide ? IndexView(in.context_lens.as<std::int64_t>()) : IndexView(in.context_lens.as<std::int32_t>());

  constexpr std::int64_t kI32Max = std::numeric_limits<std::int32_t>::max();
  constexpr std::int64_t kI32Min = std::numeric_limits<std::int32_t>::min();
  const std::int64_t max_tokens = s.max_blocks_per_req * s.block_size;
  for (std::int64_t b = 0; b < s.batch; ++b) {
    const std::int64_t len = p.context_lens[b];
    if (wide && (len > kI32Max || len < kI32Min))
      fail("context_lens[", b, "] = ", len, " is outside int32 range");
    if (len < 0) fail("context_lens[", b, "] = ", len, " is negative");
    if (len > max_tokens)
      fail("context_lens[", b, "] = ", len, " exceeds max_blocks_per_req * block_size = ", s.max_blocks_per_req,
           " * ", s.block_size, " = ", max_tokens);
    if (len > 0 && len < s.q_len)
      fail("context_lens[", b, "] = ", len, " is below q_len ", s.q_len,
           " (the context counts the new tokens too; 0 = an empty request)");
    // The pages a request uses: those holding its visible tokens (a window skips the rest).
    const TokenRange seen = p.visible(b);
    const std::int64_t first = seen.empty() ? 0 : seen.begin / s.block_size;
    const std::int64_t pages = p.num_pages(b);
    for (std::int64_t j = first; j < pages; ++j) {
      const std::int64_t page = p.page(b, j);
      if (wide && (page > kI32Max || page < kI32Min))
        fail("block_table[", b, "][", j, "] = ", page, " is outside int32 range");
      if (page < 0 || page >= s.num_blocks)
        fail("block_table[", b, "][", j, "] = ", page, " is outside [0, ", s.num_blocks, ") (page ", j,
             " of request ", b, " with context length ", len, ")");
    }
  }
  return p;
}

}  // namespace mixpa
