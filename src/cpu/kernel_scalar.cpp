// Portable scalar flavour of the chunk kernel: plain C++ with no target assumptions, so any
// CPU runs it (and tests force it on this machine so it never rots). Page-major like the SIMD
// flavours: each K/V row is converted once and used for every row of the head tile.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/softmax_state.h"
#include "cpu/chunk_kernel.h"

namespace mixpa::cpu {
namespace {

struct Scratch {
  std::vector<float> q, krow, s, p, oi;  // q[rows][dim], s/p[rows][bs], oi[rows][dim]
};

// QK: s[r][j] = scale * q_r . k_j for the valid rows j of the page.
void qk_page(const ChunkJob& job, std::int64_t page, std::int64_t valid, Scratch& w) {
  const Problem& pr = *job.problem;
  const std::int64_t dim = pr.shape.head_dim, bs = pr.shape.block_size;
  for (std::int64_t j = 0; j < valid; ++j) {
    const bf16* k = pr.key_row(page, j, job.kv_head);
    for (std::int64_t d = 0; d < dim; ++d) w.krow[d] = k[d].to_float();
    for (int r = 0; r < job.rows; ++r) {
      const float* q = &w.q[r * dim];
      float acc = 0.0f;
      for (std::int64_t d = 0; d < dim; ++d) acc += q[d] * w.krow[d];
      w.s[r * bs + j] = acc * pr.scale;
    }
  }
}

// SF: running max, P = bf16(exp(s - M)), l_i = sum of rounded P. Returns M_i per row in m_i.
void softmax_page(const ChunkJob& job, std::int64_t valid, const float* m_prev, float* m_i, float* l_i, Scratch& w) {
  const std::int64_t bs = job.problem->shape.block_size;
  for (int r = 0; r < job.rows; ++r) {
    float mx = m_prev[r];
    for (std::int64_t j = 0; j < valid; ++j) mx = std::max(mx, w.s[r * bs + j]);
    float sum = 0.0f;
    for (std::int64_t j = 0; j < valid; ++j) {
      const float p = round_to_bf16(std::exp(w.s[r * bs + j] - mx));
      w.p[r * bs + j] = p;
      sum += p;
    }
    m_i[r] = mx;
    l_i[r] = sum;
  }
}

// PV: oi[r] = sum_j p[r][j] * v_j over the valid rows only (masked rows are never loaded).
void pv_page(const ChunkJob& job, std::int64_t page, std::int64_t valid, Scratch& w) {
  const Problem& pr = *job.problem;
  const std::int64_t dim = pr.shape.head_dim, bs = pr.shape.block_size;
  std::fill(w.oi.begin(), w.oi.end(), 0.0f);
  for (std::int64_t j = 0; j < valid; ++j) {
    const bf16* v = pr.value_row(page, j, job.kv_head);
    for (std::int64_t d = 0; d < dim; ++d) w.krow[d] = v[d].to_float();
    for (int r = 0; r < job.rows; ++r) {
      const float p = w.p[r * bs + j];
      float* oi = &w.oi[r * dim];
      for (std::int64_t d = 0; d < dim; ++d) oi[d] += p * w.krow[d];
    }
  }
}

// UP: fold the page into the running (o, m, l) of each row.
void update(const ChunkJob& job, const float* m_i, const float* l_i, std::vector<SoftmaxState>& st,
            const ChunkOut& out, Scratch& w) {
  const std::int64_t dim = job.problem->shape.head_dim;
  for (int r = 0; r < job.rows; ++r) st[r].merge(out.o + r * dim, &w.oi[r * dim], m_i[r], l_i[r], dim);
}

}  // namespace

void attend_chunk_scalar(const ChunkJob& job, const ChunkOut& out) {
  const Problem& pr = *job.problem;
  const std::int64_t dim = pr.shape.head_dim, bs = pr.shape.block_size;
  thread_local Scratch w;
  w.q.resize(job.rows * dim);
  w.krow.resize(dim);
  w.s.resize(job.rows * bs);
  w.p.resize(job.rows * bs);
  w.oi.resize(job.rows * dim);
  for (int r = 0; r < job.rows; ++r)
    for (std::int64_t d = 0; d < dim; ++d) w.q[r * dim + d] = pr.query_row(job.batch, job.head_begin + r)[d].to_float();
  std::vector<SoftmaxState> st(job.rows);
  std::fill(out.o, out.o + job.rows * dim, 0.0f);
  float m_prev[64], m_i[64], l_i[64];
  const std::int64_t len = pr.context_len(job.batch);
  for (std::int64_t i = job.page_begin; i < job.page_end; ++i) {
    const std::int64_t page = pr.page(job.batch, i);
    const std::int64_t valid = std::min(bs, len - i * bs);
    for (int r = 0; r < job.rows; ++r) m_prev[r] = st[r].m;
    qk_page(job, page, valid, w);
    softmax_page(job, valid, m_prev, m_i, l_i, w);
    pv_page(job, page, valid, w);
    update(job, m_i, l_i, st, out, w);
  }
  for (int r = 0; r < job.rows; ++r) {
    out.m[r] = st[r].m;
    out.l[r] = st[r].l;
  }
}

}  // namespace mixpa::cpu
