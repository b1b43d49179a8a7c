// scatterbrain/kernels/session/incremental.cc — see incremental.h.
//
// A decode row of (b, h) at position pos, seeing keys [0, lim):
//  - its support S: the local window [pos - window/2, pos + window/2] and,
//    per LSH round, the bucket_size keys nearest it in the round's hash
//    order (LshIndex), all below lim, each key once;
//  - the exact part on S (emax, e1, ev) as the one-shot support pass;
//  - the low-rank part from the running sums Z = sum phi(k) v^T and
//    z1 = sum phi(k) kept in one running log-scale (kscale), less the keys
//    the row does not see (the newest ones of a multi-row step) and, for
//    Scatterbrain, less phi(q).phi(k_j) v_j on S (lv) with f1 its mass on S;
//  - combined by the one-shot rules (kernels/cuda/sparse_math.h), with the
//    calibrated estimator's choice made on exact rows of recent queries.
// Features are the one-shot call's (DrawCache, same seed and head), so a
// performer session equals a one-shot causal call.
#include "kernels/session/incremental.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/vmath.h"
#include "kernels/cuda/sparse_math.h"
#include "kernels/random_draws.h"
#include "kernels/session/lsh_index.h"
#include "kernels/session/paged_exact.h"

namespace scatterbrain {
namespace session {
namespace {

namespace sm = cuda::sparse;

// Rows of an append processed at once into the running sums.
constexpr int64_t kAppendChunk = 4096;
// Appends of at least this many tokens per sequence run their heads in
// parallel.
constexpr int64_t kParallelAppendTokens = 256;
// Recent queries a head needs before its calibrated choice is trusted;
// until then its rows are computed exactly (as one-shot calibration rows).
constexpr int64_t kMinCalibrationRows = 4;

// Keys and values [j0, j1) of (b, h) as float32 rows.
void ReadRows(const PagedKv& kv, int64_t b, int64_t h, int64_t j0, int64_t j1,
              float* keys, float* values) {
  const int64_t d = kv.dim(), dv = kv.dim_v(), T = kv.block_tokens();
  std::vector<float> scratch(static_cast<size_t>(T * std::max(d, dv)));
  for (int64_t j = j0; j < j1;) {
    const int64_t end = std::min(j1, (j / T + 1) * T);
    if (keys != nullptr)
      std::memcpy(keys + (j - j0) * d, kv.KeyRows(b, h, j, end, scratch.data()),
                  (end - j) * d * sizeof(float));
    if (values != nullptr)
      std::memcpy(values + (j - j0) * dv,
                  kv.ValueRows(b, h, j, end, scratch.data()),
                  (end - j) * dv * sizeof(float));
    j = end;
  }
}

class State final : public IncrementalState {
 public:
  explicit State(const SessionConfig& c)
      : c_(c),
        p_(c.settings),
        method_(c.settings.method),
        m_(c.settings.num_features),
        r_(c.settings.num_features / 2),
        d_(c.dim),
        dv_(c.dim_v) {
    AttentionParams p = c.settings;
    p.dim = c.dim;
    tau_ = EffectiveScale(p);
    sqrt_tau_ = std::sqrt(tau_);
    const bool sb = method_ == Method::kScatterbrain;
    lowrank_ = method_ == Method::kPerformer || sb;
    lsh_ = method_ == Method::kLsh ||
           (sb && c.settings.sparse != SparseSupport::kLocal);
    local_ = method_ == Method::kLocal ||
             (sb && c.settings.sparse != SparseSupport::kLsh);
    calibrate_ = sb && c.settings.estimator == Estimator::kCalibrated &&
                 c.settings.calibration_rows > 0;
    if (lowrank_)
      for (int64_t h = 0; h < c.heads; ++h)
        w_.push_back(
            DrawCache::Global().FeatureProjections(p_.seed, h, r_, d_));
    heads_.resize(c.batch * c.heads);
    for (int64_t bh = 0; bh < c.batch * c.heads; ++bh) {
      Head& hd = heads_[bh];
      hd.vsum.assign(dv_, 0.0);
      if (lowrank_) {
        hd.z.assign(static_cast<size_t>(m_) * dv_, 0.0);
        hd.z1.assign(m_, 0.0);
      }
      if (lsh_)
        for (int round = 0; round < p_.num_hashes; ++round)
          hd.rounds.emplace_back(p_, bh % c.heads, round, d_);
      if (calibrate_) {
        hd.co.assign(p_.calibration_rows * sm::kNumCandidates, 0.0);
        hd.cc.assign(p_.calibration_rows * sm::kNumCandidates, 0.0);
        hd.oo.assign(p_.calibration_rows, 0.0);
        hd.used.assign(p_.calibration_rows, 0);
      }
    }
  }

  int64_t bytes() const override {
    int64_t n = 0;
    for (const Head& hd : heads_) {
      n += static_cast<int64_t>(
          (hd.z.size() + hd.z1.size() + hd.vsum.size()) * sizeof(double) +
          (hd.co.size() + hd.cc.size() + hd.oo.size()) * sizeof(double));
      for (const LshIndex& idx : hd.rounds) n += idx.bytes();
    }
    for (const auto& w : w_) n += static_cast<int64_t>(w->size() * 4);
    return n;
  }

  int64_t BytesPerToken() const override {
    if (heads_.empty() || heads_[0].rounds.empty()) return 0;
    return c_.heads * p_.num_hashes * heads_[0].rounds[0].BytesPerKey();
  }

  void Append(const PagedKv& kv, int64_t b, int64_t old_len, int64_t new_len,
              int threads) override {
    // A decode step's token is microseconds of work per head: threads
    // would cost more than they save.
    const int t = new_len - old_len >= kParallelAppendTokens
                      ? cpu::ResolveThreads(threads)
                      : 1;
    cpu::ParallelFor(c_.heads, t, [&](int64_t h) {
      AppendHead(kv, b, h, old_len, new_len);
    });
  }

  void Observe(const PagedKv& kv, int64_t b, int64_t h, int64_t length,
               const float* q, int64_t n, const int64_t* lims,
               AttentionStats* stats) override {
    if (!calibrate_ || length == 0) return;
    // The prefill's last rows (their unseen tails are short).
    for (int64_t r = std::max<int64_t>(0, n - kMinCalibrationRows); r < n; ++r)
      Remember(kv, b, h, length, q + r * d_, lims[r], length - n + r, nullptr,
               stats);
  }

  void Attend(const PagedKv& kv, int64_t b, int64_t h, int64_t length,
              const float* q, int64_t n, const int64_t* lims, float* out,
              AttentionStats* stats) override;

  IncrementalCounters counters() const override {
    IncrementalCounters c;
    c.refits = refits_.load();
    c.refit_seconds = refit_us_.load() * 1e-6;
    c.calibrations = calibrations_.load();
    return c;
  }

 private:
  struct Head {
    // Low-rank running sums in units of exp(kscale).
    float kscale = -std::numeric_limits<float>::infinity();
    std::vector<double> z, z1;
    std::vector<double> vsum;  // sum of values: the mean-value fallback
    std::vector<LshIndex> rounds;
    // Calibration: a uniform sample (reservoir) of the queries the head has
    // seen, each scored when it was taken (its exact row against every
    // candidate, at its own position and length), and the choice made on
    // them.
    std::vector<double> co, cc, oo;  // [slot][candidate], [slot]
    std::vector<uint8_t> used;       // [slot]
    int64_t filled = 0, seen = 0;
    bool chosen = false;
    sm::CalibrationChoice choice;
  };

  // What a row's combination needs (sparse_math.h's RowInputs and the
  // per-column sums).
  struct RowWork {
    sm::RowInputs in;
    std::vector<float> ev, lv;
    std::vector<double> num, vbar;
    double den = 0;
    std::vector<int64_t> support;
    std::vector<float> ks, vs, proj, logit, fs;
    // Scratch reused row after row.
    std::vector<float> tail_k, tail_v, pq, fq, kproj, kbase, fk, ft;
  };

  // Offers one query row (seeing keys [0, lim), at position pos) to the
  // head's calibration sample: a uniform sample of every query seen
  // (reservoir sampling, seeded), which chooses better than the last few
  // rows (alike on smooth inputs). A row taken is scored now, at its own
  // position, and the choice re-made; its exact answer goes to `exact`
  // (when not null). Returns whether the row was taken.
  bool Remember(const PagedKv& kv, int64_t b, int64_t h, int64_t length,
                const float* q, int64_t lim, int64_t pos, float* exact,
                AttentionStats* stats);

  // proj (n x r) = sqrt(tau) x W^T and base_j = -tau |x_j|^2 / 2.
  void Project(int64_t h, const float* x, int64_t n, float* proj,
               float* base) const {
    cpu::Gemm(false, true, n, r_, d_, sqrt_tau_, x, d_, w_[h]->data(), d_, 0.0f,
              proj, r_);
    for (int64_t j = 0; j < n; ++j) {
      double sq = 0;
      for (int64_t c = 0; c < d_; ++c)
        sq += static_cast<double>(x[j * d_ + c]) * x[j * d_ + c];
      base[j] = -static_cast<float>(0.5 * tau_ * sq);
    }
  }
  // Key features exp(+-p + base - kscale) of n projected rows (n x m).
  void KeyFeatures(const float* proj, const float* base, int64_t n,
                   float kscale, float* f) const {
    for (int64_t j = 0; j < n; ++j) {
      float* row = f + j * m_;
      for (int l = 0; l < r_; ++l) {
        row[l] = proj[j * r_ + l];
        row[r_ + l] = -proj[j * r_ + l];
      }
      cpu::ExpInPlace(row, m_, base[j] - kscale);
    }
  }

  void AppendHead(const PagedKv& kv, int64_t b, int64_t h, int64_t old_len,
                  int64_t new_len);
  void Row(const PagedKv& kv, int64_t b, int64_t h, int64_t length,
           const float* q, int64_t lim, int64_t pos, RowWork* w) const;

  const SessionConfig c_;
  const AttentionParams p_;
  const Method method_;
  const int m_, r_;
  const int64_t d_, dv_;
  float tau_ = 0, sqrt_tau_ = 0;
  bool lowrank_ = false, lsh_ = false, local_ = false, calibrate_ = false;
  std::vector<DrawCache::Draw> w_;  // per head: r x d feature projections
  std::vector<Head> heads_;         // batch * heads
  std::atomic<int64_t> refits_{0}, refit_us_{0}, calibrations_{0};
};

void State::AppendHead(const PagedKv& kv, int64_t b, int64_t h, int64_t old_len,
                       int64_t new_len) {
  Head& hd = heads_[b * c_.heads + h];
  std::vector<float> keys, values, proj, base, f, zc;
  for (int64_t j0 = old_len; j0 < new_len; j0 += kAppendChunk) {
    const int64_t j1 = std::min(new_len, j0 + kAppendChunk);
    const int64_t n = j1 - j0;
    keys.resize(static_cast<size_t>(n * d_));
    values.resize(static_cast<size_t>(n * dv_));
    ReadRows(kv, b, h, j0, j1, keys.data(), values.data());
    for (int64_t j = 0; j < n; ++j)
      for (int64_t c = 0; c < dv_; ++c) hd.vsum[c] += values[j * dv_ + c];
    if (!lowrank_) continue;
    proj.resize(static_cast<size_t>(n * r_));
    base.resize(n);
    Project(h, keys.data(), n, proj.data(), base.data());
    // The chunk's largest log-feature; a larger one rescales the sums.
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j) {
      float pmax = 0.0f;
      for (int l = 0; l < r_; ++l)
        pmax = std::max(pmax, std::fabs(proj[j * r_ + l]));
      top = std::max(top, pmax + base[j]);
    }
    if (top > hd.kscale) {
      if (std::isfinite(hd.kscale)) {
        const double s = std::exp(static_cast<double>(hd.kscale) - top);
        for (double& x : hd.z) x *= s;
        for (double& x : hd.z1) x *= s;
      }
      hd.kscale = top;
    }
    f.resize(static_cast<size_t>(n * m_));
    KeyFeatures(proj.data(), base.data(), n, hd.kscale, f.data());
    zc.resize(static_cast<size_t>(m_) * dv_);
    cpu::Gemm(true, false, m_, dv_, n, 1.0f, f.data(), m_, values.data(), dv_,
              0.0f, zc.data(), dv_);
    for (int64_t x = 0; x < m_ * dv_; ++x) hd.z[x] += zc[x];
    for (int64_t j = 0; j < n; ++j)
      for (int l = 0; l < m_; ++l) hd.z1[l] += f[j * m_ + l];
  }
  for (LshIndex& idx : hd.rounds) {
    const auto t0 = std::chrono::steady_clock::now();
    if (idx.Append(kv, b, old_len, new_len)) {
      ++refits_;
      refit_us_ += std::chrono::duration_cast<std::chrono::microseconds>(
                       std::chrono::steady_clock::now() - t0)
                       .count();
    }
  }
}

void State::Row(const PagedKv& kv, int64_t b, int64_t h, int64_t length,
                const float* q, int64_t lim, int64_t pos, RowWork* w) const {
  const Head& hd = heads_[b * c_.heads + h];
  w->in = sm::RowInputs();
  w->in.lim = lim;
  if (lim <= 0) return;
  // The mean visible value.
  w->vbar.assign(hd.vsum.begin(), hd.vsum.end());
  std::vector<float>& tail_k = w->tail_k;
  std::vector<float>& tail_v = w->tail_v;
  if (lim < length) {
    tail_k.resize(static_cast<size_t>((length - lim) * d_));
    tail_v.resize(static_cast<size_t>((length - lim) * dv_));
    ReadRows(kv, b, h, lim, length, tail_k.data(), tail_v.data());
    for (int64_t j = 0; j < length - lim; ++j)
      for (int64_t c = 0; c < dv_; ++c) w->vbar[c] -= tail_v[j * dv_ + c];
  }
  for (double& x : w->vbar) x /= static_cast<double>(lim);

  // The support.
  std::vector<int64_t>& S = w->support;
  S.clear();
  int64_t win_lo = 0, win_hi = -1;
  if (local_) {
    const int64_t half = p_.window / 2;
    win_lo = std::max<int64_t>(0, pos - half);
    win_hi = std::min(lim - 1, pos + half);
    for (int64_t j = win_lo; j <= win_hi; ++j) S.push_back(j);
  }
  if (lsh_)
    for (const LshIndex& idx : hd.rounds)
      idx.Neighbours(q, lim, win_lo, win_hi, p_.bucket_size, &S);
  std::sort(S.begin(), S.end());
  S.erase(std::unique(S.begin(), S.end()), S.end());
  const int64_t ns = static_cast<int64_t>(S.size());
  w->in.count = ns;

  // Exact part on S.
  w->ev.assign(dv_, 0.0f);
  w->in.emax = -std::numeric_limits<float>::infinity();
  w->in.e1 = 0.0f;
  w->ks.resize(static_cast<size_t>(std::max<int64_t>(ns, 1) * d_));
  w->vs.resize(static_cast<size_t>(std::max<int64_t>(ns, 1) * dv_));
  // The support is scattered over the whole context (cache misses to main
  // memory): ask for every row first so the misses overlap.
  for (int64_t a = 0; a < ns; ++a) kv.Prefetch(b, h, S[a]);
  for (int64_t a = 0; a < ns; ++a) {
    kv.ReadKey(b, h, S[a], w->ks.data() + a * d_);
    kv.ReadValue(b, h, S[a], w->vs.data() + a * dv_);
  }
  if (ns > 0) {
    w->logit.resize(ns);
    cpu::Gemm(false, true, 1, ns, d_, tau_, q, d_, w->ks.data(), d_, 0.0f,
              w->logit.data(), ns);
    const float mx = cpu::Max(w->logit.data(), ns);
    cpu::ExpInPlace(w->logit.data(), ns, -mx);
    w->in.emax = mx;
    w->in.e1 = cpu::Sum(w->logit.data(), ns);
    cpu::Gemm(false, false, 1, dv_, ns, 1.0f, w->logit.data(), ns, w->vs.data(),
              dv_, 0.0f, w->ev.data(), dv_);
  }
  if (!lowrank_) return;

  // Low-rank part: phi(q), then phi(q) . [Z, z1] less the unseen keys.
  std::vector<float>& pq = w->pq;
  std::vector<float>& fq = w->fq;
  pq.resize(r_);
  fq.resize(m_);
  float qbase = 0;
  Project(h, q, 1, pq.data(), &qbase);
  float pmax = 0.0f;
  for (int l = 0; l < r_; ++l) pmax = std::max(pmax, std::fabs(pq[l]));
  for (int l = 0; l < r_; ++l) {
    fq[l] = pq[l];
    fq[r_ + l] = -pq[l];
  }
  cpu::ExpInPlace(fq.data(), m_, -pmax);
  w->in.qscale = pmax + qbase - std::log(static_cast<float>(m_));
  w->in.kscale = hd.kscale;
  w->num.assign(dv_, 0.0);
  double den = 0;
  for (int l = 0; l < m_; ++l) {
    if (fq[l] == 0.0f) continue;
    den += fq[l] * hd.z1[l];
    const double* zr = hd.z.data() + static_cast<size_t>(l) * dv_;
    for (int64_t c = 0; c < dv_; ++c) w->num[c] += fq[l] * zr[c];
  }
  // phi(q) . phi(k_j) of n keys in `keys` (their values in `vals`), taken
  // from num/den (sign -1) or gathered into fs.
  auto pair_mass = [&](const float* keys, int64_t n, std::vector<float>* fs) {
    std::vector<float>& proj = w->kproj;
    std::vector<float>& base = w->kbase;
    std::vector<float>& fk = w->fk;
    proj.resize(static_cast<size_t>(n * r_));
    base.resize(n);
    fk.resize(static_cast<size_t>(n * m_));
    Project(h, keys, n, proj.data(), base.data());
    KeyFeatures(proj.data(), base.data(), n, hd.kscale, fk.data());
    fs->assign(n, 0.0f);
    cpu::Gemm(false, true, 1, n, m_, 1.0f, fq.data(), m_, fk.data(), m_, 0.0f,
              fs->data(), n);
  };
  if (lim < length) {
    std::vector<float>& ft = w->ft;
    pair_mass(tail_k.data(), length - lim, &ft);
    for (int64_t j = 0; j < length - lim; ++j) {
      den -= ft[j];
      for (int64_t c = 0; c < dv_; ++c)
        w->num[c] -= ft[j] * tail_v[j * dv_ + c];
    }
  }
  w->den = den;
  w->in.den = static_cast<float>(den);
  // Scatterbrain: the low-rank side on S, taken out of the total.
  w->lv.assign(dv_, 0.0f);
  w->in.f1 = 0.0f;
  if (method_ != Method::kScatterbrain) return;
  std::vector<double> lv(w->num);
  double f1 = 0;
  if (ns > 0) {
    pair_mass(w->ks.data(), ns, &w->fs);
    for (int64_t a = 0; a < ns; ++a) {
      f1 += w->fs[a];
      for (int64_t c = 0; c < dv_; ++c) lv[c] -= w->fs[a] * w->vs[a * dv_ + c];
    }
  }
  w->in.f1 = static_cast<float>(f1);
  for (int64_t c = 0; c < dv_; ++c) w->lv[c] = static_cast<float>(lv[c]);
}

bool State::Remember(const PagedKv& kv, int64_t b, int64_t h, int64_t length,
                     const float* q, int64_t lim, int64_t pos, float* exact,
                     AttentionStats* stats) {
  Head& hd = heads_[b * c_.heads + h];
  const int64_t C = p_.calibration_rows;
  int64_t slot = hd.seen;
  if (hd.seen >= C) {
    // The same draw for every head and sequence: a step scores all of them
    // or none, so the O(context) exact rows land on few steps.
    DrawRng rng(p_.seed, static_cast<uint64_t>(DrawPurpose::kCalibration),
                static_cast<uint64_t>(hd.seen), 0);
    slot = static_cast<int64_t>(rng.Below(static_cast<uint64_t>(hd.seen) + 1));
  }
  ++hd.seen;
  if (slot >= C || lim <= 0) return false;
  std::vector<float> ex(dv_);
  PagedExactRows(kv, b, h, q, 1, &lim, tau_, ex.data());
  if (exact != nullptr) std::copy(ex.begin(), ex.end(), exact);
  RowWork w;
  Row(kv, b, h, length, q, lim, pos, &w);
  const sm::RowParts parts = sm::MakeRowParts(w.in);
  double* co = hd.co.data() + slot * sm::kNumCandidates;
  double* cc = hd.cc.data() + slot * sm::kNumCandidates;
  hd.oo[slot] = 0;
  for (int64_t c = 0; c < dv_; ++c) hd.oo[slot] += double(ex[c]) * ex[c];
  for (int k = 0; k < sm::kNumCandidates; ++k) {
    const sm::Candidate cand = sm::MakeCandidate(parts, k);
    double a = 0, s2 = 0;
    for (int64_t c = 0; c < dv_; ++c) {
      const double x = sm::CandidateValue(cand, w.vbar[c], w.ev[c], w.lv[c]);
      a += x * ex[c];
      s2 += x * x;
    }
    co[k] = a;
    cc[k] = s2;
  }
  if (!hd.used[slot]) ++hd.filled;
  hd.used[slot] = 1;
  hd.choice = sm::SelectCandidate(hd.co.data(), hd.cc.data(), hd.oo.data(),
                                  hd.used.data(), C);
  hd.chosen = hd.filled >= std::min(kMinCalibrationRows, C);
  if (hd.chosen && hd.choice.fallback) ++stats->fallbacks;
  ++calibrations_;
  return true;
}

void State::Attend(const PagedKv& kv, int64_t b, int64_t h, int64_t length,
                   const float* q, int64_t n, const int64_t* lims, float* out,
                   AttentionStats* stats) {
  Head& hd = heads_[b * c_.heads + h];
  // Rows the calibration sample takes are computed exactly (as a one-shot
  // call's calibration rows), and so are rows before the head has enough
  // of them to trust a choice.
  std::vector<uint8_t> done(n, 0);
  if (calibrate_ && length > 0) {
    for (int64_t r = 0; r < n; ++r) {
      float* o = out + r * dv_;
      done[r] = Remember(kv, b, h, length, q + r * d_, lims[r], length - n + r,
                         o, stats);
      if (!done[r] && !hd.chosen) {
        PagedExactRows(kv, b, h, q + r * d_, 1, &lims[r], tau_, o);
        done[r] = 1;
      }
    }
  }
  const sm::CalibrationChoice choice =
      calibrate_ ? hd.choice : sm::CalibrationChoice();
  RowWork w;
  for (int64_t r = 0; r < n; ++r) {
    if (done[r]) continue;
    float* o = out + r * dv_;
    const int64_t lim = lims[r];
    Row(kv, b, h, length, q + r * d_, lim, length - n + r, &w);
    if (lim <= 0) {
      std::fill(o, o + dv_, 0.0f);
      continue;
    }
    if (method_ == Method::kPerformer) {
      bool ok = w.den > 0.0 && std::isfinite(w.den);
      for (int64_t c = 0; ok && c < dv_; ++c) {
        o[c] = static_cast<float>(w.num[c] / w.den);
        ok = std::isfinite(o[c]);
      }
      if (!ok) {
        ++stats->denominator_guards;
        for (int64_t c = 0; c < dv_; ++c) o[c] = static_cast<float>(w.vbar[c]);
      }
      continue;
    }
    if (method_ != Method::kScatterbrain) {  // lsh, local: the support alone
      bool guard = false;
      if (!sm::SparseOnlyRow(lim, w.in.count, w.in.e1, &guard)) {
        if (guard) ++stats->denominator_guards;
        std::fill(o, o + dv_, 0.0f);
        continue;
      }
      const float inv = 1.0f / w.in.e1;
      for (int64_t c = 0; c < dv_; ++c) o[c] = w.ev[c] * inv;
      continue;
    }
    const sm::RowParts parts = sm::MakeRowParts(w.in);
    if (p_.estimator == Estimator::kUnbiased) {
      if (parts.guard) ++stats->denominator_guards;
      const sm::UnbiasedRow u = sm::MakeUnbiased(parts, w.in);
      if (!u.ok) {
        ++stats->denominator_guards;
        for (int64_t c = 0; c < dv_; ++c) o[c] = static_cast<float>(w.vbar[c]);
        continue;
      }
      for (int64_t c = 0; c < dv_; ++c)
        o[c] = sm::UnbiasedValue(u, parts.has_l, w.ev[c], w.lv[c]);
      continue;
    }
    if (sm::CalibratedGuard(parts)) ++stats->denominator_guards;
    const sm::Candidate cand = sm::MakeCandidate(parts, choice.candidate);
    for (int64_t c = 0; c < dv_; ++c)
      o[c] = static_cast<float>(
          choice.alpha * sm::CandidateValue(cand, w.vbar[c], w.ev[c], w.lv[c]));
  }
}

}  // namespace

std::unique_ptr<IncrementalState> IncrementalState::Create(
    const SessionConfig& config) {
  if (config.settings.method == Method::kExact) return nullptr;
  return std::make_unique<State>(config);
}

}  // namespace session
}  // namespace scatterbrain
