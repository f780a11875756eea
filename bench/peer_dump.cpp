// Dense gather for the peer. Requests of a case must share one context length (the peer
// runs one batched SDPA call); every benchmark case does.
#include "peer_dump.h"

#include <fstream>

#include "mixpa/error.h"

namespace mixpa::bench {
namespace {

template <class T>
void write_raw(const std::filesystem::path& p, const T* data, std::size_t n) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * sizeof(T)));
  if (!f) throw Error("mixpa_bench: cannot write " + p.string());
}

}  // namespace

void write_peer_case(const Case& c, const std::vector<float>& mixpa_out, const std::filesystem::path& dir) {
  const auto& s = c.spec;
  const std::int64_t ctx = c.context_lens.empty() ? 0 : c.context_lens[0];
  for (auto l : c.context_lens)
    if (l != ctx) throw Error("mixpa_bench: the peer needs one context length per case");
  std::filesystem::create_directories(dir);
  std::vector<bf16> k(s.batch * s.num_kv_heads * ctx * s.head_dim), v(k.size());
  const std::int64_t row = s.num_kv_heads * s.head_dim;
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t t = 0; t < ctx; ++t) {
      const std::int64_t page = c.block_table[b * c.max_blocks_per_req + t / s.block_size];
      const std::int64_t src = (page * s.block_size + t % s.block_size) * row;
      for (std::int64_t g = 0; g < s.num_kv_heads; ++g)
        for (std::int64_t d = 0; d < s.head_dim; ++d) {
          const std::int64_t dst = ((b * s.num_kv_heads + g) * ctx + t) * s.head_dim + d;
          k[dst] = c.key_cache[src + g * s.head_dim + d];
          v[dst] = c.value_cache[src + g * s.head_dim + d];
        }
    }
  write_raw(dir / "q.bin", c.query.data(), c.query.size());
  write_raw(dir / "k.bin", k.data(), k.size());
  write_raw(dir / "v.bin", v.data(), v.size());
  write_raw(dir / "mixpa_out.bin", mixpa_out.data(), mixpa_out.size());
  std::ofstream h(dir / "header.json");
  h << "{\"batch\": " << s.batch << ", \"num_heads\": " << s.num_heads << ", \"num_kv_heads\": " << s.num_kv_heads
    << ", \"head_dim\": " << s.head_dim << ", \"ctx\": " << ctx << ", \"scale\": " << c.scale << "}\n";
}

}  // namespace mixpa::bench
