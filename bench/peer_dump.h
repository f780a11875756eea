// Writes a case for the torch peer: the query and the KV pages gathered into dense
// [batch, kv_heads, ctx, head_dim] tensors (raw little-endian bf16), mixpa's output (f32),
// and a small JSON header with the shapes and the scale.
#pragma once

#include <filesystem>
#include <vector>

#include "core/cases.h"

namespace mixpa::bench {

void write_peer_case(const Case& c, const std::vector<float>& mixpa_out, const std::filesystem::path& dir);

}  // namespace mixpa::bench
