// The cpu executor's micro-kernel interface: one work item = a head tile of one request over a
// range of its tokens. Each instruction-set flavour (avx512bf16, avx2, scalar) implements it in
// its own translation unit compiled for that target; dispatch picks one at run time.
// (avx512 = AVX-512F without BF16: bf16 widened to fp32; the others as named.)
//
// Per page every flavour runs the MIX stages in the origin's order (chunk_driver.h):
//   qk (cube QK + score epilogue) -> softmax (vector SF) -> pv (cube PV + vector UP).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "core/problem.h"

namespace mixpa::cpu {

struct ChunkJob {
  const Problem* problem = nullptr;
  std::int64_t batch = 0;
  std::int64_t kv_head = 0;
  std::int64_t head_begin = 0;  // first query head of the tile (q_len 1)
  int rows = 0;                 // rows in the tile (<= 64)
  TokenRange tokens;            // tokens [begin, end) of the request: a split-KV chunk, starting
                                // mid-page where a window starts; the chunk driver walks it (PageWalk)
  std::int64_t row_begin = 0;   // first (new token, group head) pair of the tile (LogicalBlock::row_begin)
};

// Row r of a job's tile: new token p and query head h (Plan::tile_row's numbering), its
// position n - q_len + p and the first token it sees (SPEC §6). q_len 1: head head_begin + r.
struct JobRow {
  std::int64_t token = 0, head = 0, pos = 0, first_visible = 0;
};
inline JobRow job_row(const ChunkJob& job, std::int64_t r) {
  const Problem& pr = *job.problem;
  const std::int64_t group = pr.shape.group(), k = job.row_begin + r;
  JobRow row;
  row.token = k / group;
  row.head = job.kv_head * group + k % group;
  row.pos = pr.position(job.batch, row.token);
  row.first_visible = pr.variant.first_visible(row.pos);
  return row;
}

// Unnormalised partial result: o[rows][head_dim] row-major, and per row the softmax state
// (m = running max, l = sum of bf16-rounded P). An empty token range gives m = -inf, l = 0.
struct ChunkOut {
  float* o = nullptr;
  float* m = nullptr;
  float* l = nullptr;
};

using ChunkKernel = void (*)(const ChunkJob& job, const ChunkOut& out);

// Chunks of one request over the same page range for several kv heads (jobs[h] -> outs[h]),
// computed page by page together so each page is read once, contiguously. Each chunk's result
// is bitwise what ChunkKernel gives for it alone.
using GroupKernel = void (*)(std::span<const ChunkJob> jobs, std::span<const ChunkOut> outs);

enum class Isa { kScalar, kAvx2, kAvx512, kAvx512Bf16, kAmx };

std::string_view isa_name(Isa isa);
// Parses "scalar" / "avx2" / "avx512" / "avx512bf16" / "amx"; throws mixpa::Error otherwise.
Isa parse_isa(std::string_view name);
// Whether this CPU (and OS) can run the flavour: cpuid, and for AMX the kernel's permission.
bool isa_supported(Isa isa);
// The best flavour this CPU runs, unless MIXPA_CPU_ISA names another (which must be supported).
Isa default_isa();
ChunkKernel chunk_kernel(Isa isa);
// The flavour's group kernel, or nullptr when it has none (the chunks then run one by one).
GroupKernel group_kernel(Isa isa);

// The flavours (defined in kernel_<isa>.cpp); amx = AMX-BF16 tiles + AVX-512 BF16. The test-only
// emulated build (MIXPA_CPU_EMULATED: SIMDe intrinsics, x86_intrinsics.h) declares and defines
// them in namespace mixpa::cpu::emulated, so they link next to the native ones.
#if defined(MIXPA_CPU_EMULATED)
#define MIXPA_CPU_FLAVOURS_BEGIN namespace emulated {
#define MIXPA_CPU_FLAVOURS_END }
#else
#define MIXPA_CPU_FLAVOURS_BEGIN
#define MIXPA_CPU_FLAVOURS_END
#endif
MIXPA_CPU_FLAVOURS_BEGIN
void attend_chunk_amx(const ChunkJob& job, const ChunkOut& out);
void attend_chunk_scalar(const ChunkJob& job, const ChunkOut& out);
void attend_chunk_avx2(const ChunkJob& job, const ChunkOut& out);
// The kv heads of one request over the same pages, page by page (tiles of <= 8 rows; wider
// ones run one by one): bitwise attend_chunk_avx2 per chunk.
void attend_group_avx2(std::span<const ChunkJob> jobs, std::span<const ChunkOut> outs);
// The SIMD layer's tanh (soft-cap) in ymm / zmm, for tests (n a multiple of 8 / 16).
void tanh_avx2(const float* x, float* y, std::int64_t n);
void tanh_avx512(const float* x, float* y, std::int64_t n);
// The avx2 flavour's P = bf16(exp(x)) for x <= 0, as fp32 (for tests; n a multiple of 8).
void exp_bf16_avx2(const float* x, float* p, std::int64_t n);
// The avx2 flavour's P = fp16(exp(x)) for x <= 0 (F16 caches), as fp32 (for tests; n a multiple of 8).
void exp_f16_avx2(const float* x, float* p, std::int64_t n);
// AVX-512F with fp32 FMAs (no BF16 instructions); tiles of <= 8 rows go to the narrow kernel.
void attend_chunk_avx512(const ChunkJob& job, const ChunkOut& out);
void attend_chunk_avx512_narrow(const ChunkJob& job, const ChunkOut& out);
void attend_group_avx512(std::span<const ChunkJob> jobs, std::span<const ChunkOut> outs);
// The avx512 flavour's softmax weights p[i] = bf16(exp(x[i])) for x[i] <= 0, as fp32 (for tests;
// n a multiple of 16).
void exp_bf16_avx512(const float* x, float* p, std::int64_t n);
void attend_chunk_avx512bf16(const ChunkJob& job, const ChunkOut& out);
// The AVX-512 BF16 kernel for tiles of <= 8 rows (called by attend_chunk_avx512bf16).
void attend_chunk_avx512bf16_narrow(const ChunkJob& job, const ChunkOut& out);
MIXPA_CPU_FLAVOURS_END

}  // namespace mixpa::cpu
