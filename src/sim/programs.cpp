// Cube (QK-first) and vector (SF-first) programs of SPEC §3. The arithmetic follows the
// reference's order exactly (dot products over head_dim in order, P·V over tokens in order,
// the same SoftmaxState merge), so sim and reference agree bit for bit; the loops run over
// contiguous fp32 rows so the compiler vectorises them without reordering any sum.
#include "sim/programs.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/page_walk.h"
#include "core/softmax_state.h"
#include "mixpa/error.h"

namespace mixpa::sim {
namespace {

// The pages of a logical block's visible tokens, walked once per block by each program.
void walk_pages(const Problem& pr, std::int64_t batch, std::vector<PageSpan>& pages) {
  pages.clear();
  for (PageWalk w(pr, batch, pr.visible(batch)); w.is_valid(); ++w) pages.push_back(*w);
}

template <int kQTile>
class CubeProgram {
 public:
  CubeProgram(Worker& w, const ProgramArgs& a)
      : w_(w), pr_(*a.problem), plan_(*a.plan), dim_(pr_.shape.head_dim), bs_(pr_.shape.block_size),
        q_(kQTile * dim_), kt_{std::vector<float>(dim_ * bs_), std::vector<float>(dim_ * bs_)},
        v_{std::vector<float>(bs_ * dim_), std::vector<float>(bs_ * dim_)}, s_(kQTile * bs_), p_(kQTile * bs_),
        o_(kQTile * dim_) {}

  void run_block(const LogicalBlock& lb) {
    walk_pages(pr_, lb.batch, pages_);
    const auto n = static_cast<std::int64_t>(pages_.size());
    if (n == 0) return;  // no visible token: the vectors write zeros, no pipe is touched
    lb_ = lb;
    w_.stage(Stage::kLoad, lb.index, -1);
    load_q();
    // QK-first: K pages double-buffered (page i+1 loaded before page i is multiplied);
    // V page i loaded while the vectors work on SF[i], before PV[i].
    load_k(0);
    for (std::int64_t i = 0; i < n; ++i) {
      if (i + 1 < n) load_k(i + 1);
      qk(i);
      w_.tpush(*w_.pipes().sij, s_.data(), s_.size() * sizeof(float));
      if (i > 0) pv_step_and_free(i - 1);
    }
    pv_step_and_free(n - 1);
  }

  // pv_step with its explicit free (a no-op when the pipes free at pop): pij[i] is dead once
  // PV[i] is pushed.
  void pv_step_and_free(std::int64_t i) {
    pv_step(i);
    w_.tfree(*w_.pipes().pij);
  }

 private:
  void load_q() {
    std::fill(q_.begin(), q_.end(), 0.0f);  // rows past the tile's valid rows stay zero (masked)
    for (int r = 0; r < lb_.rows; ++r) {
      const bf16* q = pr_.query_row(lb_.batch, lb_.head_begin + r);
      for (std::int64_t d = 0; d < dim_; ++d) q_[r * dim_ + d] = q[d].to_float();
    }
  }

  // K^T of page i as fp32 [head_dim][block_size]; rows outside the visible span are never read.
  void load_k(std::int64_t i) {
    w_.stage(Stage::kLoad, lb_.index, i);
    std::vector<float>& kt = kt_[i % 2];
    const PageSpan& pg = pages_[i];
    std::fill(kt.begin(), kt.end(), 0.0f);
    for (std::int64_t j = pg.begin; j < pg.end; ++j) {
      const bf16* k = pr_.key_row(pg.page, j, lb_.kv_head);
      for (std::int64_t d = 0; d < dim_; ++d) kt[d * bs_ + j] = k[d].to_float();
    }
  }

  void load_v(std::int64_t i) {
    w_.stage(Stage::kLoad, lb_.index, i);
    std::vector<float>& v = v_[i % 2];
    const PageSpan& pg = pages_[i];
    for (std::int64_t j = pg.begin; j < pg.end; ++j) {
      const bf16* src = pr_.value_row(pg.page, j, lb_.kv_head);
      for (std::int64_t d = 0; d < dim_; ++d) v[j * dim_ + d] = src[d].to_float();
    }
  }

  // S = Q · K_page^T  (q_tile, block_size); columns outside the span are left 0 (masked by SF).
  void qk(std::int64_t i) {
    w_.stage(Stage::kQK, lb_.index, i);
    const std::vector<float>& kt = kt_[i % 2];
    const PageSpan& pg = pages_[i];
    std::fill(s_.begin(), s_.end(), 0.0f);
    for (int r = 0; r < kQTile; ++r) {
      float* s = s_.data() + r * bs_;
      for (std::int64_t d = 0; d < dim_; ++d) {
        const float q = q_[r * dim_ + d];
        const float* k = kt.data() + d * bs_;
        for (std::int64_t j = pg.begin; j < pg.end; ++j) s[j] += q * k[j];
      }
    }
  }

  // pop pij[i]; O_i = P_i · V_page(i)  (q_tile, head_dim); push oi.
  void pv_step(std::int64_t i) {
    load_v(i);
    w_.tpop(*w_.pipes().pij, p_.data(), p_.size() * sizeof(bf16));
    w_.stage(Stage::kPV, lb_.index, i);
    const std::vector<float>& v = v_[i % 2];
    const PageSpan& pg = pages_[i];
    std::fill(o_.begin(), o_.end(), 0.0f);
    for (int r = 0; r < kQTile; ++r) {
      float* o = o_.data() + r * dim_;
      for (std::int64_t j = pg.begin; j < pg.end; ++j) {
        const float p = p_[r * bs_ + j].to_float();
        const float* vj = v.data() + j * dim_;
        for (std::int64_t d = 0; d < dim_; ++d) o[d] += p * vj[d];
      }
    }
    w_.tpush(*w_.pipes().oi, o_.data(), o_.size() * sizeof(float));
  }

  Worker& w_;
  const Problem& pr_;
  const Plan& plan_;
  const std::int64_t dim_, bs_;
  LogicalBlock lb_;
  std::vector<PageSpan> pages_;  // the visible pages of the current logical block
  std::vector<float> q_;       // (q_tile, head_dim)
  std::vector<float> kt_[2];   // (head_dim, block_size) x 2 buffers
  std::vector<float> v_[2];    // (block_size, head_dim) x 2 buffers
  std::vector<float> s_;       // (q_tile, block_size)
  std::vector<bf16> p_;        // (q_tile, block_size)
  std::vector<float> o_;       // (q_tile, head_dim)
};

template <int kQTile>
class VectorProgram {
  static constexpr int kRows = kQTile / 2;  // TILE_UP_DOWN: this lane's half of the rows

 public:
  VectorProgram(Worker& w, const ProgramArgs& a)
      : w_(w), pr_(*a.problem), out_(a.out), lse_(a.lse), dim_(pr_.shape.head_dim), bs_(pr_.shape.block_size),
        lane_(w.ctx().sub_block_id), s_(kRows * bs_), p_(kRows * bs_), oi_(kRows * dim_), o_(kRows * dim_) {}

  void run_block(const LogicalBlock& lb) {
    lb_ = lb;
    walk_pages(pr_, lb.batch, pages_);
    const auto n = static_cast<std::int64_t>(pages_.size());
    for (int r = 0; r < kRows; ++r) {
      state_[r] = SoftmaxState{};
      running_max_[r] = -std::numeric_limits<float>::infinity();
    }
    // SF-first: SF[0]; SF[i], UP[i-1]; ...; UP[n-1]. No visible token touches no pipe.
    // Explicit frees (no-ops when the pipes free at pop): a tile is dead once its stage ends.
    for (std::int64_t i = 0; i < n; ++i) {
      sf(i);
      w_.tfree(*w_.pipes().sij, lane_);
      if (i > 0) {
        up(i - 1);
        w_.tfree(*w_.pipes().oi, lane_);
      }
    }
    if (n > 0) {
      up(n - 1);
      w_.tfree(*w_.pipes().oi, lane_);
    }
    finalize();
  }

 private:
  void sf(std::int64_t i) {
    w_.stage(Stage::kSF, lb_.index, i);  // before the pop: the pop is SF[i]'s (for --check)
    w_.tpop(*w_.pipes().sij, s_.data(), s_.size() * sizeof(float), lane_);
    const PageSpan& pg = pages_[i];  // columns outside [begin, end) are masked (-inf)
    const Variant& var = pr_.variant;
    const std::int64_t pos = pr_.position(lb_.batch);
    for (int r = 0; r < kRows; ++r) {
      float* s = s_.data() + r * bs_;
      const std::int64_t head = lb_.head_begin + lane_ * kRows + r;  // rows past the group: any head
      float row_max = -std::numeric_limits<float>::infinity();
      for (std::int64_t j = pg.begin; j < pg.end; ++j) {
        s[j] = var.logit(s[j], std::min(head, pr_.shape.num_heads - 1), pg.token0 + j, pos);
        row_max = std::max(row_max, s[j]);
      }
      // Running max M_i = max(M_{i-1}, m): SF[i] runs before UP[i-1], so SF keeps its own.
      const float m_i = std::max(running_max_[r], row_max);
      running_max_[r] = m_i;
      float l_i = 0.0f;
      bf16* p = p_.data() + r * bs_;
      for (std::int64_t j = 0; j < pg.begin; ++j) p[j] = bf16{};
      for (std::int64_t j = pg.begin; j < pg.end; ++j) {
        p[j] = bf16::from_float(std::exp(s[j] - m_i));  // P rounded to bf16
        l_i += p[j].to_float();                          // l = sum of the rounded P
      }
      for (std::int64_t j = pg.end; j < bs_; ++j) p[j] = bf16{};
      pending_[i % 2][r] = {m_i, l_i};
    }
    w_.tpush(*w_.pipes().pij, p_.data(), p_.size() * sizeof(bf16), lane_);
  }

  void up(std::int64_t i) {
    w_.stage(Stage::kUP, lb_.index, i);
    w_.tpop(*w_.pipes().oi, oi_.data(), oi_.size() * sizeof(float), lane_);
    for (int r = 0; r < kRows; ++r) {
      const auto [m_i, l_i] = pending_[i % 2][r];
      state_[r].merge(o_.data() + r * dim_, oi_.data() + r * dim_, m_i, l_i, dim_);
    }
  }

  void finalize() {
    w_.stage(Stage::kFinalize, lb_.index, -1);
    for (int r = 0; r < kRows; ++r) {
      const int row = lane_ * kRows + r;
      if (row >= lb_.rows) break;  // rows past num_heads of this kv group are masked
      const std::int64_t head = lb_.head_begin + row, flat = lb_.batch * pr_.shape.num_heads + head;
      state_[r].finalize(o_.data() + r * dim_, out_ + flat * dim_, dim_, pr_.variant.sink(head));
      if (lse_) lse_[flat] = state_[r].lse();
    }
  }

  Worker& w_;
  const Problem& pr_;
  float* out_;
  float* lse_;
  const std::int64_t dim_, bs_;
  const int lane_;
  LogicalBlock lb_;
  std::vector<PageSpan> pages_;  // the visible pages of the current logical block
  std::vector<float> s_;   // (q_tile/2, block_size)
  std::vector<bf16> p_;    // (q_tile/2, block_size)
  std::vector<float> oi_;  // (q_tile/2, head_dim)
  std::vector<float> o_;   // (q_tile/2, head_dim)
  SoftmaxState state_[kRows];
  float running_max_[kRows];
  struct Pending { float m, l; };
  Pending pending_[2][kRows];  // (M_i, l_i) of SF[i] until UP[i]
};

// Throwing ends this worker; the launcher then closes the pipes, so the others unwind too.
void check_cancelled(const ProgramArgs& a) {
  if (a.cancelled && (*a.cancelled)()) throw Interrupted();
}

template <int kQTile>
void run_programs_for(Worker& w, const ProgramArgs& a) {
  const Plan& plan = *a.plan;
  if (w.ctx().role == CoreRole::kCube) {
    CubeProgram<kQTile> cube(w, a);
    for (BlockScheduler s(plan, w.ctx().block_idx); s.is_valid(); ++s) {
      check_cancelled(a);
      cube.run_block(s.block());
    }
  } else {
    VectorProgram<kQTile> vec(w, a);
    for (BlockScheduler s(plan, w.ctx().block_idx); s.is_valid(); ++s) {
      check_cancelled(a);
      vec.run_block(s.block());
    }
  }
}

}  // namespace

void run_programs(Worker& w, const ProgramArgs& a) {
  // q_tile is static in the programs: the one place a runtime value becomes a template.
  switch (a.plan->q_tile) {
    case kSmallQTile: return run_programs_for<kSmallQTile>(w, a);
    case kLargeQTile: return run_programs_for<kLargeQTile>(w, a);
  }
  throw Error("sim: q_tile " + std::to_string(a.plan->q_tile) + " is not supported, expected one of {16, 64}");
}

}  // namespace mixpa::sim
