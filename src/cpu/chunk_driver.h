// The chunk driver: the one per-page loop of the cpu kernels. A flavour is a stage struct for
// one head tile, or for a group of tiles that share the pages (its layout, its matmuls, its
// prefetch); the driver owns the order of SPEC §3 and the page walk:
//
//   flavour f(job)                     state init: Q in the flavour's layout, O = 0, m = -inf, l = 0
//   f.first(span)                      optional: the walk's first page, before any stage (prefetch)
//   for each page span of job.tokens   (core's PageWalk: page id, rows [begin, end), next page)
//     f.qk(span)                       cube QK, scores of rows [begin, end) through the score
//                                      epilogue (scale -> soft-cap -> ALiBi, simd.h)
//     f.softmax(span)                  vector SF: running max, P = bf16(exp(s - M)), l_i, alpha
//     f.pv(span)                       cube PV, vector UP: O = alpha * O + P V, L = alpha * L + l_i
//   f.finish(out)                      write-back of o (dim order), m, l
//
// Rows outside [begin, end) (before a window, past the context) are never loaded into a product.
// A group flavour (the narrow avx512 kernel: the kv heads of one request, page by page) runs each
// stage for all its tiles, so every page is read once for the group; its `out` is a GroupOut.
#pragma once

#include <concepts>

#include "core/page_walk.h"
#include "cpu/chunk_kernel.h"

namespace mixpa::cpu {

// The outputs of a group flavour: outs[h] for its tile h (h < n).
struct GroupOut {
  const ChunkOut* outs = nullptr;
  int n = 0;
};

template <class F, class Out = ChunkOut>
concept ChunkFlavour = requires(F& f, const PageSpan& span, const Out& out) {
  f.qk(span);
  f.softmax(span);
  f.pv(span);
  f.finish(out);
};

// A flavour that wants the walk's first page before the first stage (to prefetch it).
template <class F>
concept SeesFirstPage = requires(F& f, const PageSpan& span) { f.first(span); };

// Runs flavour f over the tokens of job (its batch and token range; a group's tiles share them).
template <class F, class Out>
inline void drive_chunk(F& f, const ChunkJob& job, const Out& out) {
  static_assert(ChunkFlavour<F, Out>, "a chunk flavour needs qk(span), softmax(span), pv(span) and finish(out)");
  PageWalk w(*job.problem, job.batch, job.tokens);
  if constexpr (SeesFirstPage<F>)
    if (w.is_valid()) f.first(*w);
  for (; w.is_valid(); ++w) {
    f.qk(*w);
    f.softmax(*w);
    f.pv(*w);
  }
  f.finish(out);
}

}  // namespace mixpa::cpu
