// Random SPEC §6 problems drawn from the whole contract at once (tests/cpu/sweep_test.cpp runs
// them through the library on every executor, tests/cli/sweep_cli_test.cpp through `mixpa run`).
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <random>
#include <sstream>
#include <string>

#include "common/check.h"
#include "common/poison.h"

namespace mixpa::testing {

struct Drawn {
  CaseSpec spec;
  bool hnd = false;
  std::string text;  // the spec, as a failure message prints it
};

template <class T>
T pick(std::mt19937_64& g, std::initializer_list<T> xs) {
  std::uniform_int_distribution<std::size_t> u(0, xs.size() - 1);
  return *(xs.begin() + u(g));
}

inline std::int64_t uniform(std::mt19937_64& g, std::int64_t lo, std::int64_t hi) {
  return std::uniform_int_distribution<std::int64_t>(lo, hi)(g);
}

inline bool chance(std::mt19937_64& g, double p) { return std::bernoulli_distribution(p)(g); }

// The drawn problem as a failure message prints it.
inline std::string describe(const Drawn& d) {
  const CaseSpec& s = d.spec;
  std::ostringstream t;
  t << s.name << ": kv " << dtype_name(s.kv_dtype) << " q " << dtype_name(s.query_dtype) << " heads " << s.num_heads << "/"
    << s.num_kv_heads << " head_dim " << s.head_dim << " block_size " << s.block_size << " q_len " << s.q_len << " lens {";
  for (auto l : s.context_lens) t << l << ",";
  t << "} scale " << s.scale << " k/v_scale " << s.k_scale << "/" << s.v_scale << " softcap " << s.softcap << " window "
    << s.window_left << " alibi " << !s.alibi_slopes.empty() << " sinks " << !s.sinks.empty() << " int64 " << s.int64_indices
    << (d.hnd ? " HND" : " NHD");
  return t.str();
}

inline Drawn draw(std::uint64_t seed) {
  std::mt19937_64 g(seed * 0x9e3779b97f4a7c15ull + 17);
  Drawn d;
  CaseSpec& s = d.spec;
  s.name = "sweep" + std::to_string(seed);
  s.kv_dtype = pick(g, {DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2});
  s.query_dtype = pick(g, {DType::kBF16, DType::kF16});
  s.head_dim = 16 * uniform(g, 1, 16);
  s.block_size = chance(g, 0.5) ? pick<std::int64_t>(g, {16, 32, 64, 128}) : uniform(g, 1, 256);
  s.num_kv_heads = uniform(g, 1, 4);
  const std::int64_t group = pick<std::int64_t>(g, {1, 1, 2, 3, 4, 4, 5, 8, 16});
  s.num_heads = s.num_kv_heads * group;
  s.q_len = chance(g, 0.5) ? 1 : uniform(g, 2, 16);
  s.batch = uniform(g, 1, 4);
  // Context lengths: 0, exactly q_len, a page edge, short, or long enough to split the KV.
  s.context_lens.clear();
  for (std::int64_t b = 0; b < s.batch; ++b) {
    std::int64_t len;
    switch (uniform(g, 0, 6)) {
      case 0: len = 0; break;
      case 1: len = s.q_len; break;
      case 2: len = std::max(s.q_len, s.block_size * uniform(g, 1, 3) + uniform(g, -1, 1)); break;
      case 3: len = uniform(g, 2400, 4700); break;  // split-KV chunks (SPEC §3: >= 2048 tokens each)
      default: len = uniform(g, s.q_len, 300); break;
    }
    s.context_lens.push_back(static_cast<std::int32_t>(len));
  }
  std::int32_t longest = 1;
  for (auto l : s.context_lens) longest = std::max(longest, l);
  s.max_model_len = longest + uniform(g, 0, 2) * s.block_size;  // spare table columns
  s.scale = std::uniform_real_distribution<double>(0.03, 0.4)(g);
  if (s.kv_dtype == DType::kF8E4M3 || s.kv_dtype == DType::kF8E5M2) {
    if (chance(g, 0.6)) {
      s.k_scale = std::uniform_real_distribution<double>(0.05, 4.0)(g);
      s.v_scale = std::uniform_real_distribution<double>(0.05, 4.0)(g);
    }
  }
  if (chance(g, 0.3)) s.softcap = std::uniform_real_distribution<double>(0.5, 6.0)(g);
  if (chance(g, 0.35)) s.window_left = chance(g, 0.2) ? 0 : uniform(g, 1, longest + 10);
  if (chance(g, 0.3)) s.alibi_slopes = alibi_slopes_for(s.num_heads);
  if (chance(g, 0.3)) s.sinks = sinks_for(s.num_heads, chance(g, 0.3));
  s.int64_indices = chance(g, 0.25);
  d.hnd = chance(g, 0.3);
  d.text = describe(d);
  return d;
}


// The shapes the SIMD flavours have fast paths for: q_len 1, head_dim 64/128/256, block_size 16..128.
inline void fast_shape(std::mt19937_64& g, CaseSpec& s) {
  s.q_len = 1;
  s.head_dim = pick<std::int64_t>(g, {64, 128, 128, 256});
  s.block_size = pick<std::int64_t>(g, {16, 32, 64, 128});
}

// Context lengths cut to 600 tokens unless they split the KV; the table sized to them. Returns
// the longest.
inline std::int32_t cut_lengths(CaseSpec& s) {
  std::int32_t longest = 1;
  for (auto& l : s.context_lens) {
    if (l > 600 && l < 2400) l = 600;
    longest = std::max(longest, l);
  }
  s.max_model_len = longest + s.block_size;
  return longest;
}

// A draw kept inside what every cpu flavour computes (the origin's problems: bf16 caches and
// queries, q_len 1, head_dim 64/128/256, block_size 16..128), the rest of it (heads, lengths,
// layout, index width, variants) as drawn; context lengths cut to 600 tokens unless they split.
inline Drawn draw_origin(std::uint64_t seed) {
  Drawn d = draw(seed);
  CaseSpec& s = d.spec;
  std::mt19937_64 g(seed * 31 + 7);
  s.name = "origin_" + s.name;
  s.kv_dtype = s.query_dtype = DType::kBF16;
  s.k_scale = s.v_scale = 0;
  fast_shape(g, s);
  cut_lengths(s);
  d.text = describe(d);
  return d;
}

// A draw on the fast head_dims and block sizes (fast_shape, from g), then `more(g, s)` redraws
// what the caller narrows further (heads, q_len); context lengths cut to 600 tokens unless they
// split, the window clamped to them, the name prefixed.
template <class More>
inline Drawn fast_draw(std::uint64_t seed, std::mt19937_64 g, const char* prefix, More&& more) {
  Drawn d = draw(seed);
  CaseSpec& s = d.spec;
  s.name = prefix + s.name;
  fast_shape(g, s);
  more(g, s);
  const std::int32_t longest = cut_lengths(s);
  if (s.window_left > longest + 10) s.window_left = longest + 10;
  d.text = describe(d);
  return d;
}

// A draw of what avx512's wide tile computes beyond the origin's: more than 8 query rows per kv
// head (9-20, 32 or 64), q_len 1, head_dim 64/128/256, block_size 16..128, the dtypes, scales,
// lengths, layout, index width and variants as drawn (bf16 only where both drew bf16).
inline Drawn draw_wide(std::uint64_t seed) {
  return fast_draw(seed, std::mt19937_64(seed * 131 + 3), "wide_", [](std::mt19937_64& g, CaseSpec& s) {
    s.num_kv_heads = uniform(g, 1, 2);
    s.num_heads = s.num_kv_heads * (chance(g, 0.75) ? uniform(g, 9, 20) : pick<std::int64_t>(g, {32, 64}));
    if (!s.alibi_slopes.empty()) s.alibi_slopes = alibi_slopes_for(s.num_heads);
    if (!s.sinks.empty()) s.sinks = sinks_for(s.num_heads, chance(g, 0.3));
  });
}

// A draw of every shape the avx512 kernels compute at q_len 1 (narrow and wide tiles): head_dim
// 64/128/256, block_size 16..128, the heads (1-16 query rows per kv head), dtypes, scales,
// lengths, layout, index width and variants as drawn.
inline Drawn draw_fast(std::uint64_t seed) {
  return fast_draw(seed, std::mt19937_64(seed * 173 + 11), "fast_", [](std::mt19937_64&, CaseSpec&) {});
}

// Multi-token decode on the fast shapes (avx512's wide tile with per-row causal limits and
// windows): q_len 2..16, the heads as drawn (2-256 rows per kv head), every dtype and variant;
// nonzero context lengths raised to q_len where they fell below it.
inline Drawn draw_multi(std::uint64_t seed) {
  return fast_draw(seed, std::mt19937_64(seed * 197 + 5), "multi_", [](std::mt19937_64& g, CaseSpec& s) {
    s.q_len = uniform(g, 2, 16);
    for (auto& l : s.context_lens)
      if (l != 0 && l < s.q_len) l = static_cast<std::int32_t>(s.q_len);
  });
}

// Multi-token decode in bf16 (what avx512bf16's wide tile computes beyond q_len 1): draw_multi's
// shapes, heads, lengths and variants from its own stream, bf16 caches and queries.
inline Drawn draw_multi_bf16(std::uint64_t seed) {
  return fast_draw(seed, std::mt19937_64(seed * 211 + 13), "multi_bf16_", [](std::mt19937_64& g, CaseSpec& s) {
    s.kv_dtype = s.query_dtype = DType::kBF16;
    s.k_scale = s.v_scale = 0;
    s.q_len = uniform(g, 2, 16);
    for (auto& l : s.context_lens)
      if (l != 0 && l < s.q_len) l = static_cast<std::int32_t>(s.q_len);
  });
}

// The drawn problem as a case: rows no query row sees hold NaN / Inf (they must not leak into
// any output), then the caches restored HND when drawn so.
inline Case sweep_case(const Drawn& d, std::uint64_t seed) {
  Case c = generate_case(d.spec, seed);
  poison_unused_cache_rows(c);
  if (d.hnd) restore_hnd(c);
  return c;
}

}  // namespace mixpa::testing
