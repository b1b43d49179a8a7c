// scatterbrain/kernels/cpu/lowrank.cc — positive random features and the
// low-rank sums (Performer). Everything stays in log-scaled units: features
// are stored relative to a per-query-row and a per-slice key log-scale, so
// huge norms neither overflow nor lose the ratio between keys.
#include <cmath>
#include <limits>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/profile.h"
#include "kernels/cpu/vmath.h"

namespace scatterbrain {
namespace cpu {
namespace {
constexpr int64_t kCausalBlock = 64;
// Rows between two cancellation checks of the per-row feature loops.
constexpr int64_t kCheckRows = 4096;
// Rows projected per GEMM in the feature maps: 256 rows of m = 128
// features (128 KiB) are still in L2 for the per-row pass.
constexpr int64_t kFeatureBlock = 256;
}  // namespace

void ComputeFeatures(const Slice& s, const std::vector<float>& w, int r,
                     WorkspaceMeter* meter, Features* f) {
  PhaseScope scope(Phase::kFeatures);
  const int m = 2 * r;
  f->m = m;
  const float sqrt_tau = std::sqrt(s.tau);
  // phi(q) . phi(k) carries 1/m; put all of it on the query side.
  const float log_norm = -std::log(static_cast<float>(m));
  // The projections are written straight into the first r columns of each
  // feature row (no separate buffer), a block of rows at a time so that the
  // per-row pass that mirrors them and takes the exponent reads them from
  // cache.
  auto project = [&](const float* x, int64_t ld, int64_t i0, int64_t i1,
                     float* out) {
    Gemm(false, true, i1 - i0, r, s.d, sqrt_tau, x + i0 * ld, ld, w.data(), s.d,
         0.0f, out + i0 * m, m);
  };

  // Queries: scale_i = max_l |p_il| - |q~_i|^2 / 2 - log(m).
  f->q.Reset(meter, static_cast<size_t>(s.nq) * m);
  f->qscale.Reset(meter, s.nq);
  for (int64_t i0 = 0; i0 < s.nq; i0 += kFeatureBlock) {
    if (s.stopped()) return;  // the slice is dropped
    const int64_t i1 = std::min(s.nq, i0 + kFeatureBlock);
    project(s.q, s.q_row, i0, i1, f->q.data());
    for (int64_t i = i0; i < i1; ++i) {
      float* out = f->q.data() + i * m;
      const double sq = SumSquares(s.qrow(i), s.d);
      const float pmax = MaxAbs(out, r);
      f->qscale[i] = pmax - static_cast<float>(0.5 * s.tau * sq) + log_norm;
      for (int l = 0; l < r; ++l) out[r + l] = -out[l];
      ExpInPlace(out, m, -pmax);
    }
  }

  if (s.stopped()) return;  // f->k unset: the caller abandons the slice
  // Keys: one log-scale for the slice, the largest log-feature of any key.
  f->k.Reset(meter, static_cast<size_t>(std::max<int64_t>(s.nk, 1)) * m);
  if (s.nk == 0) {
    f->kscale = 0.0f;
    return;
  }
  Scratch<float> base(meter, s.nk);
  float kmax = -std::numeric_limits<float>::infinity();
  for (int64_t j0 = 0; j0 < s.nk; j0 += kFeatureBlock) {
    if (s.stopped()) return;
    const int64_t j1 = std::min(s.nk, j0 + kFeatureBlock);
    project(s.k, s.k_row, j0, j1, f->k.data());
    for (int64_t j = j0; j < j1; ++j) {
      float* out = f->k.data() + j * m;
      const double sq = SumSquares(s.krow(j), s.d);
      const float pmax = MaxAbs(out, r);
      base[j] = -static_cast<float>(0.5 * s.tau * sq);
      kmax = std::max(kmax, pmax + base[j]);
      for (int l = 0; l < r; ++l) out[r + l] = -out[l];
    }
  }
  f->kscale = kmax;
  for (int64_t j = 0; j < s.nk; ++j) {
    if (j % kCheckRows == 0 && s.stopped()) return;
    ExpInPlace(f->k.data() + j * m, m, base[j] - kmax);
  }
}

void ComputeLowRank(const Slice& s, const Features& f, WorkspaceMeter* meter,
                    LowRank* lr) {
  PhaseScope scope(Phase::kLowRank);
  const int m = f.m;
  const int64_t dv = s.dv;
  lr->num.Reset(meter, static_cast<size_t>(s.nq) * dv);
  lr->den.Reset(meter, s.nq);
  Scratch<float> zv, z1;
  zv.ResetZero(meter, static_cast<size_t>(m) * dv);
  z1.ResetZero(meter, m);
  auto add_keys = [&](int64_t j0, int64_t j1) {
    if (j1 <= j0) return;
    // zv += phi_k[j0:j1]^T v[j0:j1]; z1 += column sums.
    Gemm(true, false, m, dv, j1 - j0, 1.0f, f.k.data() + j0 * m, m, s.vrow(j0),
         s.v_row, 1.0f, zv.data(), dv);
    for (int64_t j = j0; j < j1; ++j) {
      const float* fk = f.k.data() + j * m;
      for (int l = 0; l < m; ++l) z1[l] += fk[l];
    }
  };
  auto apply_state = [&](int64_t i0, int64_t i1) {
    Gemm(false, false, i1 - i0, dv, m, 1.0f, f.q.data() + i0 * m, m, zv.data(),
         dv, 0.0f, lr->num.data() + i0 * dv, dv);
    Gemm(false, false, i1 - i0, 1, m, 1.0f, f.q.data() + i0 * m, m, z1.data(),
         1, 0.0f, lr->den.data() + i0, 1);
  };
  if (!s.causal) {
    add_keys(0, s.nk);
    apply_state(0, s.nq);
    return;
  }
  // Causal: a running state over the keys every row of the block sees, plus
  // a masked block for the keys only some of its rows see.
  Scratch<float> blk(meter, static_cast<size_t>(kCausalBlock) * kCausalBlock);
  int64_t state_end = 0;
  for (int64_t i0 = 0; i0 < s.nq && !s.stopped(); i0 += kCausalBlock) {
    const int64_t i1 = std::min(s.nq, i0 + kCausalBlock);
    const int64_t full = s.KeyLimit(i0);  // keys all rows see
    add_keys(state_end, full);
    state_end = std::max(state_end, full);
    apply_state(i0, i1);
    const int64_t hi = s.KeyLimit(i1 - 1);
    const int64_t width = hi - state_end;
    if (width <= 0) continue;
    const int64_t rows = i1 - i0;
    Gemm(false, true, rows, width, m, 1.0f, f.q.data() + i0 * m, m,
         f.k.data() + state_end * m, m, 0.0f, blk.data(), width);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t lim = s.KeyLimit(i0 + r) - state_end;
      float* row = blk.data() + r * width;
      for (int64_t c = std::max<int64_t>(lim, 0); c < width; ++c) row[c] = 0.0f;
      lr->den[i0 + r] += Sum(row, width);
    }
    Gemm(false, false, rows, dv, width, 1.0f, blk.data(), width,
         s.vrow(state_end), s.v_row, 1.0f, lr->num.data() + i0 * dv, dv);
  }
}

void WritePerformer(const Slice& s, const LowRank& lr, SliceStats* st) {
  std::vector<double> mean(s.dv);
  for (int64_t i = 0; i < s.nq; ++i) {
    float* o = s.orow(i);
    if (s.KeyLimit(i) <= 0) {
      std::fill(o, o + s.dv, 0.0f);
      continue;
    }
    // Positive features make den > 0 unless every product underflowed; a
    // denormal den could still overflow the ratio, so check the result.
    const double den = lr.den[i];
    const float* n = lr.num.data() + i * s.dv;
    bool ok = den > 0.0 && std::isfinite(den);
    for (int64_t c = 0; ok && c < s.dv; ++c) {
      const double x = n[c] / den;
      ok = std::isfinite(x);
      o[c] = static_cast<float>(x);
      ok = ok && std::isfinite(o[c]);
    }
    if (!ok) {
      // No usable weight: answer the mean of the visible values (what
      // attention tends to with no information), and count it.
      ++st->guards;
      MeanValue(s, i, mean.data());
      for (int64_t c = 0; c < s.dv; ++c) o[c] = static_cast<float>(mean[c]);
    }
  }
}

}  // namespace cpu
}  // namespace scatterbrain
