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
// 1/4, 3/8, 1/2, 3/4, 1}; plus vbar alone. Each candidate also gets the
// least-squares shrink factor alpha in [0, 1]. Per (batch, head) the candidate
// with the smallest error on `calibration_rows` rows computed exactly is used.
// The result is biased (it is a selected, shrunken estimator) and never worse
// on the sampled rows than answering zeros (alpha = 0 is a candidate).
#include <cmath>
#include <limits>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/profile.h"
#include "kernels/cuda/sparse_math.h"
#include "kernels/random_draws.h"

namespace scatterbrain {
namespace cpu {
namespace {

namespace sm = cuda::sparse;

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

// Row i's inputs to the combination (sparse_math.h, shared with the CUDA
// backend); acc.lv already holds the low-rank numerator off S_i.
sm::RowInputs Inputs(const Slice& s, const Features& f, const LowRank& lr,
                     const SparseAcc& acc, int64_t i) {
  sm::RowInputs in;
  in.lim = s.KeyLimit(i);
  if (in.lim <= 0) return in;  // the row sees no key: nothing else is read
  in.count = acc.count[i];
  in.emax = acc.emax[i];
  in.e1 = acc.e1[i];
  in.f1 = acc.f1[i];
  in.den = lr.den[i];
  in.qscale = f.qscale[i];
  in.kscale = f.kscale;
  return in;
}
sm::RowParts Parts(const Slice& s, const Features& f, const LowRank& lr,
                   const SparseAcc& acc, int64_t i) {
  return sm::MakeRowParts(Inputs(s, f, lr, acc, i));
}

// Writes candidate `k` of row i (before the alpha shrink) into out[dv].
void Candidate(const Slice& s, const SparseAcc& acc, int64_t i,
               const sm::RowParts& p, const double* vbar, int k, double* out) {
  const sm::Candidate cand = sm::MakeCandidate(p, k);
  const float* ev = acc.ev.data() + i * s.dv;
  const float* lv = acc.lv.data() + i * s.dv;
  for (int64_t c = 0; c < s.dv; ++c)
    out[c] = sm::CandidateValue(cand, vbar[c], ev[c], lv[c]);
}

void WriteUnbiased(const Slice& s, const Features& f, const LowRank& lr,
                   const SparseAcc& acc, const MeanValues& means,
                   SliceStats* st) {
  std::vector<double> vbar(s.dv);
  for (int64_t i = 0; i < s.nq; ++i) {
    float* o = s.orow(i);
    const sm::RowInputs in = Inputs(s, f, lr, acc, i);
    const sm::RowParts p = sm::MakeRowParts(in);
    if (p.empty) {
      std::fill(o, o + s.dv, 0.0f);
      continue;
    }
    if (p.guard) ++st->guards;
    const sm::UnbiasedRow u = sm::MakeUnbiased(p, in);
    if (!u.ok) {
      ++st->guards;
      means.Get(i, vbar.data());
      for (int64_t c = 0; c < s.dv; ++c) o[c] = static_cast<float>(vbar[c]);
      continue;
    }
    const float* ev = acc.ev.data() + i * s.dv;
    const float* lv = acc.lv.data() + i * s.dv;
    for (int64_t c = 0; c < s.dv; ++c)
      o[c] = sm::UnbiasedValue(u, p.has_l, ev[c], lv[c]);
  }
}

}  // namespace

void WriteScatterbrain(const Slice& s, const Features& f, const LowRank& lr,
                       const SparseAcc& acc, Estimator est,
                       const ExactSample* cal, WorkspaceMeter* meter,
                       SliceStats* st) {
  PhaseScope scope(Phase::kCombine);
  MeanValues means(s, meter);
  if (est == Estimator::kUnbiased) {
    WriteUnbiased(s, f, lr, acc, means, st);
    return;
  }
  const int64_t dv = s.dv;
  std::vector<double> vbar(dv), cand(dv);

  // Choose the candidate and its shrink factor on rows computed exactly.
  sm::CalibrationChoice choice;
  if (cal != nullptr && !cal->rows.empty()) {
    // Per sampled row and candidate: <c, O> and <c, c>; per row <O, O>.
    const size_t n = cal->rows.size();
    std::vector<double> co(n * sm::kNumCandidates), cc(n * sm::kNumCandidates),
        oo(n, 0.0);
    std::vector<uint8_t> used(n, 0);
    for (size_t r = 0; r < n; ++r) {
      const int64_t i = cal->rows[r];
      const sm::RowParts p = Parts(s, f, lr, acc, i);
      const double* ex = cal->out.data() + r * dv;
      if (p.empty || !cal->used[r]) continue;
      used[r] = 1;
      means.Get(i, vbar.data());
      for (int64_t c = 0; c < dv; ++c) oo[r] += ex[c] * ex[c];
      for (int k = 0; k < sm::kNumCandidates; ++k) {
        Candidate(s, acc, i, p, vbar.data(), k, cand.data());
        double a = 0, b = 0;
        for (int64_t c = 0; c < dv; ++c) {
          a += cand[c] * ex[c];
          b += cand[c] * cand[c];
        }
        co[r * sm::kNumCandidates + k] = a;
        cc[r * sm::kNumCandidates + k] = b;
      }
    }
    choice = sm::SelectCandidate(co.data(), cc.data(), oo.data(), used.data(),
                                 static_cast<int64_t>(n));
    if (choice.fallback) ++st->fallbacks;
  }

  for (int64_t i = 0; i < s.nq; ++i) {
    float* o = s.orow(i);
    const sm::RowParts p = Parts(s, f, lr, acc, i);
    if (p.empty) {
      std::fill(o, o + dv, 0.0f);
      continue;
    }
    if (sm::CalibratedGuard(p)) ++st->guards;
    means.Get(i, vbar.data());
    Candidate(s, acc, i, p, vbar.data(), choice.candidate, cand.data());
    for (int64_t c = 0; c < dv; ++c)
      o[c] = static_cast<float>(choice.alpha * cand[c]);
  }
  // The calibration rows were computed exactly: use them.
  if (cal == nullptr) return;
  for (size_t r = 0; r < cal->rows.size(); ++r) {
    if (!cal->used[r]) continue;
    float* o = s.orow(cal->rows[r]);
    for (int64_t c = 0; c < dv; ++c)
      o[c] = static_cast<float>(cal->out[r * dv + c]);
  }
}

}  // namespace cpu
}  // namespace scatterbrain
