// Case table and generator. Values come from a counter-based hash (splitmix64 of
// seed, tensor id and element index), so generation parallelises without changing a byte.
#include "core/cases.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>
#include <sstream>

#include "core/parallel.h"
#include "mixpa/error.h"

namespace mixpa {
namespace {

CaseSpec origin_case(std::string name, std::int64_t batch, std::int64_t heads, std::int64_t block_size) {
  CaseSpec c;
  c.name = std::move(name);
  c.batch = batch;
  c.num_heads = heads;
  c.num_kv_heads = 1;
  c.head_dim = 128;
  c.block_size = block_size;
  c.context_lens = {8192};
  c.max_model_len = 32768;
  c.scale = 1.0;
  return c;
}

CaseSpec decode_32k() {
  CaseSpec c;
  c.name = "Decode32k";  // batch-1 long-context decode, GQA 32/8 (benchmark shape)
  c.batch = 1;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.block_size = 64;
  c.context_lens = {32768};
  c.max_model_len = 32768;
  c.scale = 1.0 / std::sqrt(128.0);
  return c;
}

const std::vector<CaseSpec>& table() {
  static const std::vector<CaseSpec> cases = {
      origin_case("Case1", 256, 16, 128),
      origin_case("Case2", 64, 64, 64),
      origin_case("SmallCase1", 24, 16, 128),
      decode_32k(),
  };
  return cases;
}

constexpr std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

enum Stream : std::uint64_t { kQuery = 1, kKey = 2, kValue = 3, kTable = 4 };

std::uint64_t draw(std::uint64_t seed, Stream stream, std::uint64_t index) {
  return splitmix64(splitmix64(seed * 4 + stream) ^ index);
}

// Uniform in [-range, range), then rounded to the element type (bf16, f16, e4m3, e5m2).
template <class T>
T uniform_element(std::uint64_t bits, double range) {
  const double u = static_cast<double>(bits >> 11) * 0x1.0p-53;  // [0, 1)
  return T::from_float(static_cast<float>((2.0 * u - 1.0) * range));
}

template <class T, class Vector>
void fill_uniform(Vector& v, std::uint64_t seed, Stream stream, double range,
                  const std::function<void(double)>& progress, std::atomic<std::int64_t>& done, std::int64_t total) {
  constexpr std::int64_t kChunk = 1 << 20;
  const std::int64_t n = static_cast<std::int64_t>(v.size() * sizeof(v[0]) / sizeof(T));
  const std::int64_t chunks = (n + kChunk - 1) / kChunk;
  // A reporter thread polls the shared counter while the workers fill.
  std::atomic<bool> finished{false};
  std::thread reporter;
  if (progress)
    reporter = std::thread([&] {
      while (!finished.load()) {
        progress(static_cast<double>(done.load()) / static_cast<double>(std::max<std::int64_t>(total, 1)));
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    });
  parallel_chunks(n, std::max<std::int64_t>(chunks, 1), hardware_threads(), [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) {
      const T x = uniform_element<T>(draw(seed, stream, static_cast<std::uint64_t>(i)), range);
      std::memcpy(&v[i * sizeof(T) / sizeof(v[0])], &x, sizeof(T));
    }
    done += e - b;
  });
  finished = true;
  if (reporter.joinable()) reporter.join();
}

}  // namespace

std::span<const CaseSpec> case_table() { return table(); }

const CaseSpec& find_case(std::string_view name) {
  for (const CaseSpec& c : table())
    if (c.name == name) return c;
  std::ostringstream s;
  s << "case: unknown case '" << name << "', expected one of {";
  bool first = true;
  for (const CaseSpec& c : table()) {
    s << (first ? "" : ", ") << c.name;
    first = false;
  }
  s << '}';
  throw Error(s.str());
}

namespace {
TensorView stored_view(const char* name, const void* data, DType dtype, const std::vector<std::int64_t>& shape) {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.rank = static_cast<int>(std::min<std::size_t>(shape.size(), kMaxRank));
  for (int d = 0; d < v.rank; ++d) v.shape[d] = shape[d];
  // Row-major strides, overflow-checked: a file may store [0, 2^40, 2^40] (no elements, so
  // no bytes to contradict it), whose strides do not fit in 64 bits.
  std::int64_t stride = 1;
  for (int d = v.rank - 1; d >= 0; --d) {
    v.strides[d] = stride;
    if (d > 0 && __builtin_mul_overflow(stride, shape[d], &stride))
      throw Error(std::string(name) + ": shape " + v.shape_string() + ": the product of its dimensions overflows 64 bits");
  }
  return v;
}
}  // namespace

void Case::apply_variant(Options& options) const {
  options.softcap = softcap;
  options.window_left = window_left;
  options.kv_layout = kv_layout;
  if (spec.k_scale != 0) options.k_scale = spec.k_scale;
  if (spec.v_scale != 0) options.v_scale = spec.v_scale;
}

const void* Case::query_data() const {
  return spec.query_dtype == DType::kBF16 ? static_cast<const void*>(query.data()) : query_bytes.data();
}
const void* Case::key_data() const {
  return spec.kv_dtype == DType::kBF16 ? static_cast<const void*>(key_cache.data()) : key_bytes.data();
}
const void* Case::value_data() const {
  return spec.kv_dtype == DType::kBF16 ? static_cast<const void*>(value_cache.data()) : value_bytes.data();
}

Inputs Case::inputs() const {
  Inputs in = tensor_inputs();
  if (has_alibi) in.alibi_slopes = stored_view("alibi_slopes", alibi_slopes.data(), DType::kF32, alibi_shape);
  if (has_sinks) in.sinks = stored_view("sinks", sinks.data(), DType::kF32, sinks_shape);
  return in;
}

Inputs Case::tensor_inputs() const {
  const bool wide = spec.int64_indices;
  const DType index = wide ? DType::kI64 : DType::kI32;
  const void* table = wide ? static_cast<const void*>(block_table64.data()) : block_table.data();
  const void* lens = wide ? static_cast<const void*>(context_lens64.data()) : context_lens.data();
  if (stored_shapes.size() == 5) {
    Inputs in;
    in.query = stored_view("query", query_data(), spec.query_dtype, stored_shapes[0]);
    in.key_cache = stored_view("key_cache", key_data(), spec.kv_dtype, stored_shapes[1]);
    in.value_cache = stored_view("value_cache", value_data(), spec.kv_dtype, stored_shapes[2]);
    in.block_table = stored_view("block_table", table, index, stored_shapes[3]);
    in.context_lens = stored_view("context_lens", lens, index, stored_shapes[4]);
    return in;
  }
  const std::int64_t b = spec.batch, h = spec.num_heads, kvh = spec.num_kv_heads, d = spec.head_dim;
  Inputs in;
  in.query = spec.q_len == 1 ? TensorView::contiguous(query_data(), spec.query_dtype, {b, h, d})
                             : TensorView::contiguous(query_data(), spec.query_dtype, {b, spec.q_len, h, d});
  in.key_cache = TensorView::contiguous(key_data(), spec.kv_dtype, {num_blocks, spec.block_size, kvh, d});
  in.value_cache = TensorView::contiguous(value_data(), spec.kv_dtype, {num_blocks, spec.block_size, kvh, d});
  in.block_table = TensorView::contiguous(table, index, {b, max_blocks_per_req});
  in.context_lens = TensorView::contiguous(lens, index, {b});
  return in;
}

std::int64_t Case::kv_bytes_read() const {
  std::int64_t tokens = 0;
  for (std::int32_t len : context_lens) tokens += len;
  return tokens * spec.num_kv_heads * spec.head_dim * static_cast<std::int64_t>(dtype_size(spec.kv_dtype)) * 2 /*K and V*/;
}

namespace {

// A cache's rows [page][row][kv head] moved to [page][kv head][row] (elements of `size` bytes).
template <class Vec>
void to_hnd(Vec& cache, std::int64_t nb, std::int64_t bs, std::int64_t kvh, std::int64_t d, std::size_t size) {
  Vec hnd(cache.size());
  const std::size_t row = static_cast<std::size_t>(d) * size / sizeof(typename Vec::value_type);
  parallel_chunks(nb, 64, hardware_threads(), [&](std::int64_t p0, std::int64_t p1) {
    for (std::int64_t p = p0; p < p1; ++p)
      for (std::int64_t k = 0; k < kvh; ++k)
        for (std::int64_t r = 0; r < bs; ++r)
          std::memcpy(&hnd[((p * kvh + k) * bs + r) * row], &cache[((p * bs + r) * kvh + k) * row], row * sizeof(typename Vec::value_type));
  });
  cache.swap(hnd);
}

}  // namespace

void restore_hnd(Case& c) {
  if (c.kv_layout == KvLayout::kHND) throw Error("restore_hnd: the caches are HND already");
  const std::int64_t nb = c.num_blocks, bs = c.spec.block_size, kvh = c.spec.num_kv_heads, d = c.spec.head_dim;
  if (c.spec.kv_dtype == DType::kBF16) {
    for (KvVector* cache : {&c.key_cache, &c.value_cache}) to_hnd(*cache, nb, bs, kvh, d, sizeof(bf16));
  } else {
    for (KvBytes* cache : {&c.key_bytes, &c.value_bytes}) to_hnd(*cache, nb, bs, kvh, d, dtype_size(c.spec.kv_dtype));
  }
  std::vector<std::int64_t> query{c.spec.batch, c.spec.num_heads, d};
  if (c.spec.q_len > 1) query.insert(query.begin() + 1, c.spec.q_len);
  c.stored_shapes = {query, {nb, kvh, bs, d}, {nb, kvh, bs, d}, {c.spec.batch, c.max_blocks_per_req}, {c.spec.batch}};
  c.kv_layout = KvLayout::kHND;
}

Case generate_case(const CaseSpec& spec, std::uint64_t seed, const std::function<void(double)>& progress) {
  if (spec.batch < 0 || spec.num_heads < 1 || spec.num_kv_heads < 1 || spec.head_dim < 1 || spec.block_size < 1)
    throw Error("case " + spec.name + ": batch must be >= 0 and heads, head_dim, block_size >= 1");
  if (spec.context_lens.empty()) throw Error("case " + spec.name + ": context_lens is empty");
  if (spec.query_dtype != DType::kBF16 && spec.query_dtype != DType::kF16)
    throw Error("case " + spec.name + ": query_dtype must be BF16 or F16");
  if (spec.q_len < 1) throw Error("case " + spec.name + ": q_len must be >= 1");
  Case c;
  c.spec = spec;
  c.scale = spec.scale;
  c.softcap = spec.softcap;
  c.window_left = spec.window_left;
  c.has_alibi = !spec.alibi_slopes.empty();
  c.alibi_slopes = spec.alibi_slopes;
  c.alibi_shape = {static_cast<std::int64_t>(spec.alibi_slopes.size())};
  c.has_sinks = !spec.sinks.empty();
  c.sinks = spec.sinks;
  c.sinks_shape = {static_cast<std::int64_t>(spec.sinks.size())};
  c.context_lens.resize(spec.batch);
  for (std::int64_t b = 0; b < spec.batch; ++b)
    c.context_lens[b] = spec.context_lens[b % static_cast<std::int64_t>(spec.context_lens.size())];
  const std::int64_t bs = spec.block_size;
  c.max_blocks_per_req = (spec.max_model_len + bs - 1) / bs;
  std::int64_t max_len = 0;
  for (std::int32_t len : c.context_lens) max_len = std::max<std::int64_t>(max_len, len);
  c.num_blocks = spec.num_blocks > 0 ? spec.num_blocks : std::max<std::int64_t>(1, spec.batch * ((max_len + bs - 1) / bs));

  const std::int64_t kv_elems = c.num_blocks * bs * spec.num_kv_heads * spec.head_dim;
  const std::int64_t q_elems = spec.batch * spec.q_len * spec.num_heads * spec.head_dim;
  std::atomic<std::int64_t> done{0};
  const std::int64_t total = q_elems + 2 * kv_elems;
  if (spec.query_dtype == DType::kBF16) {
    c.query.resize(q_elems);
    fill_uniform<bf16>(c.query, seed, kQuery, spec.qk_range, progress, done, total);
  } else {
    c.query_bytes.resize(q_elems * sizeof(f16));
    fill_uniform<f16>(c.query_bytes, seed, kQuery, spec.qk_range, progress, done, total);
  }
  // fp8 values are stored divided by their scale, so that k_scale * K keeps the spec's range.
  const double k_range = spec.qk_range / (spec.k_scale != 0 ? spec.k_scale : 1.0);
  const double v_range = spec.v_range / (spec.v_scale != 0 ? spec.v_scale : 1.0);
  switch (spec.kv_dtype) {
    case DType::kBF16:
      c.key_cache.resize(kv_elems);
      c.value_cache.resize(kv_elems);
      fill_uniform<bf16>(c.key_cache, seed, kKey, spec.qk_range, progress, done, total);
      fill_uniform<bf16>(c.value_cache, seed, kValue, spec.v_range, progress, done, total);
      break;
    case DType::kF16:
      c.key_bytes.resize(kv_elems * 2);
      c.value_bytes.resize(kv_elems * 2);
      fill_uniform<f16>(c.key_bytes, seed, kKey, spec.qk_range, progress, done, total);
      fill_uniform<f16>(c.value_bytes, seed, kValue, spec.v_range, progress, done, total);
      break;
    case DType::kF8E4M3:
      c.key_bytes.resize(kv_elems);
      c.value_bytes.resize(kv_elems);
      fill_uniform<e4m3>(c.key_bytes, seed, kKey, k_range, progress, done, total);
      fill_uniform<e4m3>(c.value_bytes, seed, kValue, v_range, progress, done, total);
      break;
    case DType::kF8E5M2:
      c.key_bytes.resize(kv_elems);
      c.value_bytes.resize(kv_elems);
      fill_uniform<e5m2>(c.key_bytes, seed, kKey, k_range, progress, done, total);
      fill_uniform<e5m2>(c.value_bytes, seed, kValue, v_range, progress, done, total);
      break;
    default: throw Error("case " + spec.name + ": kv_dtype must be BF16, F16, F8_E4M3 or F8_E5M2");
  }

  // Page ids uniform in [0, num_blocks), drawn with replacement for every entry (SPEC §4).
  c.block_table.resize(spec.batch * c.max_blocks_per_req);
  for (std::size_t i = 0; i < c.block_table.size(); ++i) {
    const std::uint64_t r = draw(seed, kTable, i) >> 32;
    c.block_table[i] = static_cast<std::int32_t>((r * static_cast<std::uint64_t>(c.num_blocks)) >> 32);
  }
  if (spec.int64_indices) {
    c.block_table64.assign(c.block_table.begin(), c.block_table.end());
    c.context_lens64.assign(c.context_lens.begin(), c.context_lens.end());
  }
  if (progress) progress(1.0);
  return c;
}

}  // namespace mixpa
