// Writes a few small valid case files as the fuzzer's seed corpus (generated, not committed).
#include <cstdio>
#include <string>

#include "core/cases.h"
#include "io/safetensors.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  using namespace mixpa;
  int i = 0;
  for (auto [heads, kv, dim, bs, len] : {std::tuple{4, 1, 64, 16, 20}, std::tuple{8, 2, 64, 16, 1},
                                         std::tuple{3, 3, 64, 32, 0}}) {
    CaseSpec s;
    s.name = "seed";
    s.batch = 2;
    s.num_heads = heads;
    s.num_kv_heads = kv;
    s.head_dim = dim;
    s.block_size = bs;
    s.context_lens = {len, len + 3};
    s.max_model_len = 64;
    s.scale = 0.5;
    save_case(std::string(argv[1]) + "/seed" + std::to_string(i++) + ".safetensors", generate_case(s, 1));
  }
  return 0;
}
