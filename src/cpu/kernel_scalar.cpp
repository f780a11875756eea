// Portable scalar flavour of the chunk kernel: plain C++ with no target assumptions, so any
// CPU runs it (and tests force it on this machine so it never rots). Page-major like the SIMD
// flavours: each K/V row is decoded once (every cache dtype, exactly) and used for every row of
// the head tile; rows are (new token, head) pairs with their own causal limit and window. The
// page loop is the chunk driver's (chunk_driver.h). Computes every problem validate() accepts.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/element.h"
#include "core/softmax_state.h"
#include "cpu/chunk_driver.h"
#include "cpu/chunk_kernel.h"

namespace mixpa::cpu {
namespace {

struct ScalarTile {
  const ChunkJob& job;
  const Problem& pr;
  std::int64_t dim, bs;
  Variant score;  // the call's variant with scale * k_scale (fp8: k_t = k_scale * float(K[t]))
  struct Scratch {
    std::vector<float> q, krow, s, p, oi;  // q[rows][dim], s/p[rows][bs], oi[rows][dim]
    std::vector<SoftmaxState> st;
    std::vector<float> o;  // [rows][dim] running O
    std::vector<JobRow> rows;
  };
  Scratch& w;
  float m_i[64], l_i[64];

  static Scratch& scratch_for_thread() {
    thread_local Scratch w;
    return w;
  }

  explicit ScalarTile(const ChunkJob& j)
      : job(j), pr(*j.problem), dim(pr.shape.head_dim), bs(pr.shape.block_size), score(pr.variant),
        w(scratch_for_thread()) {
    score.scale = pr.variant.scale * pr.k_scale;
    w.q.resize(job.rows * dim);
    w.krow.resize(dim);
    w.s.resize(job.rows * bs);
    w.p.resize(job.rows * bs);
    w.oi.resize(job.rows * dim);
    w.o.assign(job.rows * dim, 0.0f);
    w.st.assign(job.rows, SoftmaxState{});
    w.rows.resize(job.rows);
    for (int r = 0; r < job.rows; ++r) {
      const JobRow row = job_row(job, r);
      w.rows[r] = row;
      query_floats(pr, job.batch, row.token, row.head, &w.q[r * dim]);
    }
  }

  // QK: s[r][j] = the logit of q_r . k_j (Variant::logit: scale, soft-cap, ALiBi) for the rows j
  // of the span; -inf for tokens row r does not see (past its position, before its window).
  void qk(const PageSpan& span) {
    for (std::int64_t j = span.begin; j < span.end; ++j) {
      key_floats(pr, span.page, j, job.kv_head, w.krow.data());
      const std::int64_t t = span.token0 + j;
      for (int r = 0; r < job.rows; ++r) {
        const JobRow& row = w.rows[r];
        if (t > row.pos || t < row.first_visible) {
          w.s[r * bs + j] = -std::numeric_limits<float>::infinity();
          continue;
        }
        const float* q = &w.q[r * dim];
        float acc = 0.0f;
        for (std::int64_t d = 0; d < dim; ++d) acc += q[d] * w.krow[d];
        w.s[r * bs + j] = score.logit(acc, row.head, t, row.pos);
      }
    }
  }

  // SF: running max, P = bf16(exp(s - M)) (fp16 for F16 caches), l_i = sum of rounded P; M_i per
  // row in m_i. A row that sees none of the span's tokens (M = -inf) gets P = 0.
  void softmax(const PageSpan& span) {
    for (int r = 0; r < job.rows; ++r) {
      float mx = w.st[r].m;
      for (std::int64_t j = span.begin; j < span.end; ++j) mx = std::max(mx, w.s[r * bs + j]);
      float sum = 0.0f;
      for (std::int64_t j = span.begin; j < span.end; ++j) {
        const float e = mx == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(w.s[r * bs + j] - mx);
        const float p = round_p(pr.kv_dtype, e);
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
      value_floats(pr, span.page, j, job.kv_head, w.krow.data());
      for (int r = 0; r < job.rows; ++r) {
        const float p = w.p[r * bs + j];
        float* oi = &w.oi[r * dim];
        for (std::int64_t d = 0; d < dim; ++d) oi[d] += p * w.krow[d];
      }
    }
    for (int r = 0; r < job.rows; ++r) w.st[r].merge(&w.o[r * dim], &w.oi[r * dim], m_i[r], l_i[r], dim);
  }

  // o = v_scale * sum P V (fp8: v_t = v_scale * float(V[t]); 1 otherwise).
  void finish(const ChunkOut& o) {
    for (std::size_t i = 0; i < w.o.size(); ++i) o.o[i] = w.o[i] * pr.v_scale;
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
