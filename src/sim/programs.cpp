// Cube (QK-first) and vector (SF-first) programs of SPEC §3. The arithmetic follows the
// reference's order exactly (dot products over head_dim in order, P·V over tokens in order,
// the same SoftmaxState merge), so sim and reference agree bit for bit; the loops run over
// contiguous fp32 rows so the compiler vectorises them without reordering any sum.
// SPEC §6: the rows of a tile are (new token, head) pairs (Plan::tile_row); the pages walked
// are the union of the rows' visible tokens, and each row keeps its own causal limit and
// window inside them (a page a row does not see is an empty partial for it). Elements of every
// dtype are widened on load (core/element.h); P travels the pij pipe as bf16 (fp16 for an F16
// cache); k_scale joins the logit, v_scale the finalize, as in the reference.
#include "sim/programs.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/element.h"
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

// The rows [begin, end) of page `pg` a tile row sees: its own visible tokens (causal limit and
// window of its position) inside the page's span; empty when it sees none of them.
struct RowSpan {
  std::int64_t begin = 0, end = 0;
  bool empty() const { return end <= begin; }
};
RowSpan row_span(const PageSpan& pg, const TokenRange& seen) {
  RowSpan r;
  r.begin = std::max(pg.begin, seen.begin - pg.token0);
  r.end = std::min(pg.end, seen.end - pg.token0);
  return r;
}

// The pij pipe's 16-bit elements: P rounded to bf16, or to fp16 for an F16 cache (SPEC §6).
struct PCodec {
  bool f16 = false;
  std::uint16_t encode(float x) const { return f16 ? f16::from_float(x).bits : bf16::from_float(x).bits; }
  float decode(std::uint16_t b) const { return f16 ? f16::from_bits(b).to_float() : bf16::from_bits(b).to_float(); }
};

template <int kQTile>
class CubeProgram {
 public:
  CubeProgram(Worker& w, const ProgramArgs& a)
      : w_(w), pr_(*a.problem), plan_(*a.plan), dim_(pr_.shape.head_dim), bs_(pr_.shape.block_size),
        q_(kQTile * dim_), kt_{std::vector<float>(dim_ * bs_), std::vector<float>(dim_ * bs_)},
        v_{std::vector<float>(bs_ * dim_), std::vector<float>(bs_ * dim_)}, s_(kQTile * bs_), p_(kQTile * bs_),
        o_(kQTile * dim_), row_(dim_), codec_{pr_.kv_dtype == DType::kF16} {}

  void run_block(const LogicalBlock& lb) {
    walk_pages(pr_, lb.batch, pages_);
    const auto n = static_cast<std::int64_t>(pages_.size());
    if (n == 0) return;  // no visible token: the vectors write zeros, no pipe is touched
    lb_ = lb;
    // Each row's own visible tokens (rows past the tile's valid rows see none).
    for (int r = 0; r < kQTile; ++r)
      seen_[r] = r < lb.rows ? pr_.row_visible(lb.batch, plan_.tile_row(lb, r).token) : TokenRange{};
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
      const TileRow row = plan_.tile_row(lb_, r);
      query_floats(pr_, lb_.batch, row.token, row.head, q_.data() + r * dim_);
    }
  }

  // K^T of page i as fp32 [head_dim][block_size]; rows outside the visible span are never read.
  void load_k(std::int64_t i) {
    w_.stage(Stage::kLoad, lb_.index, i);
    std::vector<float>& kt = kt_[i % 2];
    const PageSpan& pg = pages_[i];
    std::fill(kt.begin(), kt.end(), 0.0f);
    for (std::int64_t j = pg.begin; j < pg.end; ++j) {
      key_floats(pr_, pg.page, j, lb_.kv_head, row_.data());  // fp8: raw values; k_scale joins the logit
      for (std::int64_t d = 0; d < dim_; ++d) kt[d * bs_ + j] = row_[d];
    }
  }

  void load_v(std::int64_t i) {
    w_.stage(Stage::kLoad, lb_.index, i);
    std::vector<float>& v = v_[i % 2];
    const PageSpan& pg = pages_[i];
    for (std::int64_t j = pg.begin; j < pg.end; ++j)
      value_floats(pr_, pg.page, j, lb_.kv_head, v.data() + j * dim_);  // fp8: v_scale joins the finalize
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

  // pop pij[i]; O_i = P_i · V_page(i)  (q_tile, head_dim); push oi. Each row sums over the
  // tokens it sees only: its masked columns take no part (not even 0 * NaN), as in the reference.
  void pv_step(std::int64_t i) {
    load_v(i);
    w_.tpop(*w_.pipes().pij, p_.data(), p_.size() * sizeof(std::uint16_t));
    w_.stage(Stage::kPV, lb_.index, i);
    const std::vector<float>& v = v_[i % 2];
    const PageSpan& pg = pages_[i];
    std::fill(o_.begin(), o_.end(), 0.0f);
    for (int r = 0; r < kQTile; ++r) {
      float* o = o_.data() + r * dim_;
      const RowSpan span = row_span(pg, seen_[r]);
      for (std::int64_t j = span.begin; j < span.end; ++j) {
        const float p = codec_.decode(p_[r * bs_ + j]);
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
  std::vector<std::uint16_t> p_;  // (q_tile, block_size), bf16 or fp16 bits (codec_)
  std::vector<float> o_;       // (q_tile, head_dim)
  std::vector<float> row_;     // one widened K row
  PCodec codec_;
  TokenRange seen_[kQTile];    // each tile row's visible tokens
};

template <int kQTile>
class VectorProgram {
  static constexpr int kRows = kQTile / 2;  // TILE_UP_DOWN: this lane's half of the rows

 public:
  VectorProgram(Worker& w, const ProgramArgs& a)
      : w_(w), pr_(*a.problem), plan_(*a.plan), out_(a.out), lse_(a.lse), dim_(pr_.shape.head_dim),
        bs_(pr_.shape.block_size), lane_(w.ctx().sub_block_id), s_(kRows * bs_), p_(kRows * bs_), oi_(kRows * dim_),
        o_(kRows * dim_), codec_{pr_.kv_dtype == DType::kF16} {}

  void run_block(const LogicalBlock& lb) {
    lb_ = lb;
    walk_pages(pr_, lb.batch, pages_);
    const auto n = static_cast<std::int64_t>(pages_.size());
    for (int r = 0; r < kRows; ++r) {
      state_[r] = SoftmaxState{};
      running_max_[r] = -std::numeric_limits<float>::infinity();
      // This lane's row r: its (token, head), position and visible tokens; rows past the tile's
      // valid rows are masked (they see nothing and are never written).
      const int row = lane_ * kRows + r;
      if (row < lb.rows) {
        const TileRow tr = plan_.tile_row(lb, row);
        head_[r] = tr.head;
        token_[r] = tr.token;
        pos_[r] = pr_.position(lb.batch, tr.token);
        seen_[r] = pr_.row_visible(lb.batch, tr.token);
      } else {
        head_[r] = token_[r] = pos_[r] = 0;
        seen_[r] = TokenRange{};
      }
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
    const PageSpan& pg = pages_[i];
    const Variant& var = pr_.variant;
    const float k_scale = pr_.k_scale;
    for (int r = 0; r < kRows; ++r) {
      float* s = s_.data() + r * bs_;
      std::uint16_t* p = p_.data() + r * bs_;
      std::fill(p, p + bs_, std::uint16_t{0});  // columns outside the row's span are masked (P = 0)
      const RowSpan span = row_span(pg, seen_[r]);
      if (span.empty()) {  // the row sees nothing of this page: an empty partial for UP
        pending_[i % 2][r] = {-std::numeric_limits<float>::infinity(), 0.0f};
        continue;
      }
      float row_max = -std::numeric_limits<float>::infinity();
      for (std::int64_t j = span.begin; j < span.end; ++j) {
        s[j] = var.logit(s[j] * k_scale, head_[r], pg.token0 + j, pos_[r]);
        row_max = std::max(row_max, s[j]);
      }
      // Running max M_i = max(M_{i-1}, m): SF[i] runs before UP[i-1], so SF keeps its own.
      const float m_i = std::max(running_max_[r], row_max);
      running_max_[r] = m_i;
      float l_i = 0.0f;
      for (std::int64_t j = span.begin; j < span.end; ++j) {
        const float pj = round_p(pr_.kv_dtype, std::exp(s[j] - m_i));  // P rounded to bf16 (fp16: F16 cache)
        p[j] = codec_.encode(pj);                                         // exact: pj is representable
        l_i += pj;                                                         // l = sum of the rounded P
      }
      pending_[i % 2][r] = {m_i, l_i};
    }
    w_.tpush(*w_.pipes().pij, p_.data(), p_.size() * sizeof(std::uint16_t), lane_);
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
      if (row >= lb_.rows) break;  // rows past the kv head's (token, head) pairs are masked
      const std::int64_t flat = pr_.out_row(lb_.batch, token_[r], head_[r]);
      float* dst = out_ + flat * dim_;
      state_[r].finalize(o_.data() + r * dim_, dst, dim_, pr_.variant.sink(head_[r]));
      if (pr_.v_scale != 1.0f)
        for (std::int64_t d = 0; d < dim_; ++d) dst[d] *= pr_.v_scale;  // fp8 V = v_scale * float(V)
      if (lse_) lse_[flat] = state_[r].lse();
    }
  }

  Worker& w_;
  const Problem& pr_;
  const Plan& plan_;
  float* out_;
  float* lse_;
  const std::int64_t dim_, bs_;
  const int lane_;
  LogicalBlock lb_;
  std::vector<PageSpan> pages_;  // the visible pages of the current logical block
  std::vector<float> s_;   // (q_tile/2, block_size)
  std::vector<std::uint16_t> p_;  // (q_tile/2, block_size), bf16 or fp16 bits (codec_)
  std::vector<float> oi_;  // (q_tile/2, head_dim)
  std::vector<float> o_;   // (q_tile/2, head_dim)
  PCodec codec_;
  std::int64_t head_[kRows], token_[kRows], pos_[kRows];  // each row's query head, new token, position
  TokenRange seen_[kRows];                                // and visible tokens
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
