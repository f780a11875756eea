// Portable scalar flavour of the chunk kernel: plain C++ with no target assumptions, so any
// CPU runs it (and tests force it on this machine so it never rots). Page-major like the SIMD
// flavours: each K/V row is converted once and used for every row of the head tile. The page
// loop is the chunk driver's (chunk_driver.h).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/softmax_state.h"
#include "cpu/chunk_driver.h"
#include "cpu/chunk_kernel.h"

namespace mixpa::cpu {
namespace {

struct ScalarTile {
  const ChunkJob& job;
  const Problem& pr;
  std::int64_t dim, bs;
  struct Scratch {
    std::vector<float> q, krow, s, p, oi;  // q[rows][dim], s/p[rows][bs], oi[rows][dim]
    std::vector<SoftmaxState> st;
    std::vector<float> o;  // [rows][dim] running O
  };
  Scratch& w;
  float m_i[64], l_i[64];

  static Scratch& scratch_for_thread() {
    thread_local Scratch w;
    return w;
  }

  explicit ScalarTile(const ChunkJob& j)
      : job(j), pr(*j.problem), dim(pr.shape.head_dim), bs(pr.shape.block_size), w(scratch_for_thread()) {
    w.q.resize(job.rows * dim);
    w.krow.resize(dim);
    w.s.resize(job.rows * bs);
    w.p.resize(job.rows * bs);
    w.oi.resize(job.rows * dim);
    w.o.assign(job.rows * dim, 0.0f);
    w.st.assign(job.rows, SoftmaxState{});
    for (int r = 0; r < job.rows; ++r)
      for (std::int64_t d = 0; d < dim; ++d) w.q[r * dim + d] = pr.query_row(job.batch, job.head_begin + r)[d].to_float();
  }

  // QK: s[r][j] = the logit of q_r . k_j (Variant::logit: scale, soft-cap, ALiBi) for the rows j
  // of the span.
  void qk(const PageSpan& span) {
    const std::int64_t pos = pr.position(job.batch);
    for (std::int64_t j = span.begin; j < span.end; ++j) {
      const bf16* k = pr.key_row(span.page, j, job.kv_head);
      for (std::int64_t d = 0; d < dim; ++d) w.krow[d] = k[d].to_float();
      for (int r = 0; r < job.rows; ++r) {
        const float* q = &w.q[r * dim];
        float acc = 0.0f;
        for (std::int64_t d = 0; d < dim; ++d) acc += q[d] * w.krow[d];
        w.s[r * bs + j] = pr.variant.logit(acc, job.head_begin + r, span.token0 + j, pos);
      }
    }
  }

  // SF: running max, P = bf16(exp(s - M)), l_i = sum of rounded P; M_i per row in m_i.
  void softmax(const PageSpan& span) {
    for (int r = 0; r < job.rows; ++r) {
      float mx = w.st[r].m;
      for (std::int64_t j = span.begin; j < span.end; ++j) mx = std::max(mx, w.s[r * bs + j]);
      float sum = 0.0f;
      for (std::int64_t j = span.begin; j < span.end; ++j) {
        const float p = round_to_bf16(std::exp(w.s[r * bs + j] - mx));
        w.p[r * bs + j] = p;
        sum += p;
      }
      m_i[r] = mx;
      l_i[r] = sum;
    }
  }

  // PV: oi[r] = sum_j p[r][j] * v_j over the span's rows only (others are never loaded); then UP.
  void pv(const PageSpan& span) {
    std::fill(w.oi.begin(), w.oi.end(), 0.0f);
    for (std::int64_t j = span.begin; j < span.end; ++j) {
      const bf16* v = pr.value_row(span.page, j, job.kv_head);
      for (std::int64_t d = 0; d < dim; ++d) w.krow[d] = v[d].to_float();
      for (int r = 0; r < job.rows; ++r) {
        const float p = w.p[r * bs + j];
        float* oi = &w.oi[r * dim];
        for (std::int64_t d = 0; d < dim; ++d) oi[d] += p * w.krow[d];
      }
    }
    for (int r = 0; r < job.rows; ++r) w.st[r].merge(&w.o[r * dim], &w.oi[r * dim], m_i[r], l_i[r], dim);
  }

  void finish(const ChunkOut& o) {
    std::copy(w.o.begin(), w.o.end(), o.o);
    for (int r = 0; r < job.rows; ++r) {
      o.m[r] = w.st[r].m;
      o.l[r] = w.st[r].l;
    }
  }
};

}  // namespace

void attend_chunk_scalar(const ChunkJob& job, const ChunkOut& out) {
  ScalarTile tile(job);
  drive_chunk(tile, job, out);
}

}  // namespace mixpa::cpu
