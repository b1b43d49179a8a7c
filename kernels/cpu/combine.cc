// scatterbrain/kernels/cpu/combine.cc — Scatterbrain's combination of the
// exact values on the sparse support S_i with the low-rank estimate of the
// rest of the row.
//
// Textbook (Estimator::kUnbiased): O_i = (E_v + L_v) / (E_1 + L_1), where E
// is the exact sum over S_i and L = phi(q_i) . sum_{j not in S_i} phi(k_j)
// [v_j, 1] (the low-rank total minus its value on S_i). Unbiased numerator
// and denominator, but positive random features are heavy-tailed: their
// per-row scale error cancels in Performer's ratio and no longer cancels once
// part of the row is exact, so the mass given to the low-rank part is
// typically far off and the output blows up (the authors' code: error 5.3 at
// logit std 1 where Performer alone had 0.8).
//
// Calibrated (default): write the row as a mix of two directions,
//   O_i = (1 - w_i) E_dir + w_i D_i,  E_dir = E_v / E_1,
//   D_i = vbar_i + lambda (L_dir - vbar_i),  L_dir = L_v / L_1,
// where w_i is the share of the row's mass outside S_i and vbar_i the mean of
// the visible values (shrinking the noisy low-rank direction towards it).
// Candidates for w_i: w_t (textbook: exact vs low-rank mass), w_r (ratio
// estimator: the low-rank's own split between S_i and the rest, in which the
// row's scale error cancels) and their geometric mean; lambda in {0, 1/8,
// 1/4, 3/8, 1/2, 3/4, 1}; plus vbar alone. Each candidate also gets the least-squares
// shrink factor alpha in [0, 1]. Per (batch, head) the candidate with the
// smallest error on `calibration_rows` rows computed exactly is used. The
// result is biased (it is a selected, shrunken estimator) and never worse on
// the sampled rows than answering zeros (alpha = 0 is a candidate).
#include <cmath>
#include <limits>

#include "kernels/cpu/ops.h"
#include "kernels/random_draws.h"

namespace scatterbrain {
namespace cpu {
namespace {

constexpr double kLambdas[] = {0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0};
constexpr int kNumW = 3;
constexpr int kNumLambda = sizeof(kLambdas) / sizeof(kLambdas[0]);
constexpr int kMeanCandidate = kNumW * kNumLambda;
constexpr int kSparseCandidate = kMeanCandidate + 1;  // exact part alone
constexpr int kNumCandidates = kSparseCandidate + 1;
// Used without calibration rows: the ratio estimator, mildly shrunk (the
// most often selected candidate on our measured families).
constexpr int kDefaultCandidate = 1 * kNumLambda + 2;

// Below this share of the row's low-rank total, what is left after taking
// out the support is float rounding, not signal.
constexpr double kCancellation = 1e-5;

// Per-row pieces of the calibrated estimator.
struct RowParts {
  bool empty = false;     // the row sees no key: output zeros
  bool has_e = false, has_l = false;
  double wt = 0, wr = 0;  // mass share outside S_i, two estimates
  const float* ev = nullptr;
  double e1 = 0;
  const float* lv = nullptr;  // low-rank numerator off S_i
  double l1 = 0;
  bool guard = false;
};

class MeanValues {
 public:
  MeanValues(const Slice& s, WorkspaceMeter* meter) : s_(s) {
    if (!s.causal) {
      // Every row sees the same keys: one mean.
      whole_.assign(s.dv, 0.0);
      MeanValue(s, 0, whole_.data());
      return;
    }
    prefix_.ResetZero(meter, static_cast<size_t>(s.nk + 1) * s.dv);
    for (int64_t j = 0; j < s.nk; ++j) {
      const float* v = s.vrow(j);
      const double* prev = prefix_.data() + j * s.dv;
      double* cur = prefix_.data() + (j + 1) * s.dv;
      for (int64_t c = 0; c < s.dv; ++c) cur[c] = prev[c] + v[c];
    }
  }
  void Get(int64_t i, double* out) const {
    if (!s_.causal) {
      std::copy(whole_.begin(), whole_.end(), out);
      return;
    }
    const int64_t lim = s_.KeyLimit(i);
    const double* p = prefix_.data() + lim * s_.dv;
    for (int64_t c = 0; c < s_.dv; ++c)
      out[c] = lim > 0 ? p[c] / static_cast<double>(lim) : 0.0;
  }

 private:
  const Slice& s_;
  std::vector<double> whole_;
  Scratch<double> prefix_;
};

RowParts Parts(const Slice& s, const Features& f, const LowRank& lr,
               const SparseAcc& acc, int64_t i) {
  RowParts p;
  const int64_t lim = s.KeyLimit(i);
  if (lim <= 0) {
    p.empty = true;
    return p;
  }
  p.e1 = acc.e1[i];
  p.has_e = acc.count[i] > 0 && p.e1 > 0.0;
  p.ev = acc.ev.data() + i * s.dv;
  p.lv = acc.lv.data() + i * s.dv;
  const double f1 = acc.f1[i];
  double l1 = static_cast<double>(lr.den[i]) - f1;
  if (acc.count[i] >= lim) {
    l1 = 0.0;  // S_i covers the row: nothing is left to estimate.
  } else if (!(l1 > kCancellation * lr.den[i]) || !std::isfinite(l1)) {
    // Rounding (or underflow) left no positive low-rank mass for keys that
    // exist: clamp it, and count the guard.
    p.guard = true;
    l1 = 0.0;
  }
  p.l1 = l1;
  p.has_l = l1 > 0.0;
  if (!p.has_e) {
    p.wt = p.wr = 1.0;
  } else if (!p.has_l) {
    p.wt = p.wr = 0.0;
  } else {
    const double log_l = f.qscale[i] + f.kscale + std::log(l1);
    const double log_e = acc.emax[i] + std::log(p.e1);
    p.wt = 1.0 / (1.0 + std::exp(log_e - log_l));
    p.wr = l1 / (l1 + std::max(f1, 0.0));
  }
  return p;
}

// Writes candidate `k` of row i (before the alpha shrink) into out[dv].
void Candidate(const Slice& s, const RowParts& p, const double* vbar, int k,
               double* out) {
  const int64_t dv = s.dv;
  if (k == kMeanCandidate || (!p.has_e && !p.has_l)) {
    for (int64_t c = 0; c < dv; ++c) out[c] = vbar[c];
    return;
  }
  const int wi = k / kNumLambda;
  const double lambda = k == kSparseCandidate ? 0.0 : kLambdas[k % kNumLambda];
  double w = k == kSparseCandidate ? 0.0
             : wi == 0             ? p.wt
             : wi == 1             ? p.wr
                                   : std::sqrt(p.wt * p.wr);
  if (!p.has_e) w = 1.0;
  if (!p.has_l) w = 0.0;
  const double inv_e = p.has_e ? 1.0 / p.e1 : 0.0;
  const double inv_l = p.has_l ? 1.0 / p.l1 : 0.0;
  for (int64_t c = 0; c < dv; ++c) {
    const double edir = p.ev[c] * inv_e;
    const double ldir =
        p.has_l ? static_cast<double>(p.lv[c]) * inv_l : 0.0;
    const double dir = vbar[c] + lambda * (ldir - vbar[c]);
    out[c] = (1.0 - w) * edir + w * dir;
  }
}

void WriteUnbiased(const Slice& s, const Features& f, const LowRank& lr,
                   const SparseAcc& acc, const MeanValues& means,
                   SliceStats* st) {
  std::vector<double> vbar(s.dv);
  for (int64_t i = 0; i < s.nq; ++i) {
    float* o = s.orow(i);
    RowParts p = Parts(s, f, lr, acc, i);
    if (p.empty) {
      std::fill(o, o + s.dv, 0.0f);
      continue;
    }
    if (p.guard) ++st->guards;
    const double ls = f.qscale[i] + f.kscale;
    const double emax = p.has_e ? acc.emax[i] : -1e300;
    const double ref = std::max(emax, p.has_l ? ls : -1e300);
    const double a = p.has_e ? std::exp(emax - ref) : 0.0;
    const double b = p.has_l ? std::exp(ls - ref) : 0.0;
    const double den = p.e1 * a + p.l1 * b;
    if (!(den > 0.0) || !std::isfinite(den)) {
      ++st->guards;
      means.Get(i, vbar.data());
      for (int64_t c = 0; c < s.dv; ++c) o[c] = static_cast<float>(vbar[c]);
      continue;
    }
    for (int64_t c = 0; c < s.dv; ++c) {
      const double lv =
          p.has_l ? static_cast<double>(p.lv[c]) : 0.0;
      o[c] = static_cast<float>((p.ev[c] * a + lv * b) / den);
    }
  }
}

}  // namespace

void WriteScatterbrain(const Slice& s, const Features& f, const LowRank& lr,
                       const SparseAcc& acc, Estimator est,
                       int calibration_rows, uint64_t seed,
                       WorkspaceMeter* meter, SliceStats* st) {
  MeanValues means(s, meter);
  if (est == Estimator::kUnbiased) {
    WriteUnbiased(s, f, lr, acc, means, st);
    return;
  }
  const int64_t dv = s.dv;
  std::vector<double> vbar(dv), cand(dv), exact(dv);

  // Choose the candidate and its shrink factor on rows computed exactly.
  int best = kDefaultCandidate;
  double best_alpha = 1.0;
  std::vector<int64_t> rows;
  std::vector<double> exact_rows;
  if (calibration_rows > 0) {
    rows = SampleRows(seed, DrawPurpose::kCalibration, s.b, s.h, s.nq,
                      calibration_rows);
    // Per sampled row and candidate: <c, O> and <c, c>; per row <O, O>.
    const size_t n = rows.size();
    std::vector<double> co(n * kNumCandidates), cc(n * kNumCandidates),
        oo(n, 0.0);
    exact_rows.assign(n * dv, 0.0);
    std::vector<bool> used(n, false);
    for (size_t r = 0; r < n; ++r) {
      const int64_t i = rows[r];
      RowParts p = Parts(s, f, lr, acc, i);
      double* ex = exact_rows.data() + r * dv;
      if (p.empty || !ExactRow(s, i, ex)) continue;
      used[r] = true;
      means.Get(i, vbar.data());
      for (int64_t c = 0; c < dv; ++c) oo[r] += ex[c] * ex[c];
      for (int k = 0; k < kNumCandidates; ++k) {
        Candidate(s, p, vbar.data(), k, cand.data());
        double a = 0, b = 0;
        for (int64_t c = 0; c < dv; ++c) {
          a += cand[c] * ex[c];
          b += cand[c] * cand[c];
        }
        co[r * kNumCandidates + k] = a;
        cc[r * kNumCandidates + k] = b;
      }
    }
    double oo_total = 0;
    for (size_t r = 0; r < n; ++r) oo_total += oo[r];
    auto fit = [](double a, double b) {
      return b > 0 ? std::clamp(a / b, 0.0, 1.0) : 0.0;
    };
    if (oo_total > 0) {
      // Zeros (alpha = 0) is the baseline every candidate must beat.
      double best_loo = oo_total;
      best = kMeanCandidate;
      best_alpha = 0.0;
      for (int k = 0; k < kNumCandidates; ++k) {
        double co_all = 0, cc_all = 0;
        for (size_t r = 0; r < n; ++r) {
          co_all += co[r * kNumCandidates + k];
          cc_all += cc[r * kNumCandidates + k];
        }
        double loo = 0, alpha_sum = 0, alpha_sq = 0;
        int n_used = 0;
        for (size_t r = 0; r < n; ++r) {
          if (!used[r]) continue;
          const double a = co[r * kNumCandidates + k];
          const double b = cc[r * kNumCandidates + k];
          const double alpha = fit(co_all - a, cc_all - b);
          loo += alpha * alpha * b - 2 * alpha * a + oo[r];
          alpha_sum += alpha;
          alpha_sq += alpha * alpha;
          ++n_used;
        }
        if (loo < best_loo - 1e-12 * oo_total) {
          best_loo = loo;
          best = k;
          // Shrink alpha by its jackknife standard error: an alpha fitted to
          // noise then lands at 0 (answering zeros) instead of adding the
          // noise to every row; a well-determined alpha moves very little.
          double se = 0;
          if (n_used > 1) {
            const double mean = alpha_sum / n_used;
            const double var = std::max(0.0, alpha_sq / n_used - mean * mean);
            se = std::sqrt((n_used - 1) * var);
          }
          best_alpha = std::max(0.0, fit(co_all, cc_all) - se);
        }
      }
    }
    if (best == kMeanCandidate || best_alpha < 0.5) ++st->fallbacks;
  }

  for (int64_t i = 0; i < s.nq; ++i) {
    float* o = s.orow(i);
    RowParts p = Parts(s, f, lr, acc, i);
    if (p.empty) {
      std::fill(o, o + dv, 0.0f);
      continue;
    }
    if (p.guard || (!p.has_e && !p.has_l)) ++st->guards;
    means.Get(i, vbar.data());
    Candidate(s, p, vbar.data(), best, cand.data());
    for (int64_t c = 0; c < dv; ++c)
      o[c] = static_cast<float>(best_alpha * cand[c]);
  }
  // The calibration rows were computed exactly: use them.
  for (size_t r = 0; r < rows.size(); ++r) {
    if (s.KeyLimit(rows[r]) <= 0) continue;
    float* o = s.orow(rows[r]);
    for (int64_t c = 0; c < dv; ++c)
      o[c] = static_cast<float>(exact_rows[r * dv + c]);
  }
}

}  // namespace cpu
}  // namespace scatterbrain
