// The chunk driver: the one per-page loop of the cpu kernels. A flavour is a stage struct for
// one head tile (its layout, its matmuls, its prefetch); the driver owns the order of SPEC §3
// and the page walk:
//
//   flavour f(job)                     state init: Q in the flavour's layout, O = 0, m = -inf, l = 0
//   for each page span of job.tokens   (core's PageWalk: page id, rows [begin, end), next page)
//     f.qk(span)                       cube QK, scores of rows [begin, end) through the score
//                                      epilogue (scale -> soft-cap -> ALiBi, simd.h)
//     f.softmax(span)                  vector SF: running max, P = bf16(exp(s - M)), l_i, alpha
//     f.pv(span)                       cube PV, vector UP: O = alpha * O + P V, L = alpha * L + l_i
//   f.finish(out)                      write-back of o (dim order), m, l
//
// Rows outside [begin, end) (before a window, past the context) are never loaded into a product.
// The group kernel of the narrow avx512 flavour (kv heads of a request page by page) walks the
// same PageWalk with several tiles per span.
#pragma once

#include <concepts>

#include "core/page_walk.h"
#include "cpu/chunk_kernel.h"

namespace mixpa::cpu {

template <class F>
concept ChunkFlavour = requires(F& f, const PageSpan& span, const ChunkOut& out) {
  f.qk(span);
  f.softmax(span);
  f.pv(span);
  f.finish(out);
};

template <class F>
inline void drive_chunk(F& f, const ChunkJob& job, const ChunkOut& out) {
  static_assert(ChunkFlavour<F>, "a chunk flavour needs qk(span), softmax(span), pv(span) and finish(out)");
  for (PageWalk w(*job.problem, job.batch, job.tokens); w.is_valid(); ++w) {
    f.qk(*w);
    f.softmax(*w);
    f.pv(*w);
  }
  f.finish(out);
}

}  // namespace mixpa::cpu
