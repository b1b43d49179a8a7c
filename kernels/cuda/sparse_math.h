// scatterbrain/kernels/cuda/sparse_math.h — the per-element and per-row math
// of the CUDA LSH and Scatterbrain launchers, as __host__ __device__ inline
// functions: the kernels call them on the device and
// tests/sparse_math_test.cc runs them on the CPU against the CPU backend
// (kernels/cpu/sparse.cc, combine.cc, random_draws.cc), which has the same
// math inline. Plain C++ (no CUDA types): compiles with g++ and nvcc.
//
// Discrete choices (a hash bucket, a k-means assignment, a calibration
// candidate) are made here by the CPU's rules and tie-breaks, so CPU and GPU
// differ only where their float inputs differ by rounding.
#ifndef SCATTERBRAIN_KERNELS_CUDA_SPARSE_MATH_H_
#define SCATTERBRAIN_KERNELS_CUDA_SPARSE_MATH_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/math.h"
#include "kernels/draw_rng.h"

#if defined(__CUDACC__)
#define SB_SPARSE_HD __host__ __device__ __forceinline__
#else
#define SB_SPARSE_HD inline
#endif

namespace scatterbrain {
namespace cuda {
namespace sparse {

// ---------------------------------------------------------------------------
// Scalars that behave the same on host and device: kernels/cuda/math.h's,
// plus the two double helpers only this file needs.
// ---------------------------------------------------------------------------
using devmath::FloatToBits;
using devmath::IsFiniteDouble;
using devmath::MaxI;
using devmath::MinI;
using devmath::NegInfinity;
SB_SPARSE_HD double DMax(double a, double b) { return a > b ? a : b; }
SB_SPARSE_HD double DMin(double a, double b) { return a < b ? a : b; }

// a * b and s + t rounded separately (never fused into an FMA), so that a
// sequential dot product gives the bits the CPU's `v += a * b` loop gives.
SB_SPARSE_HD float MulRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
SB_SPARSE_HD float AddRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
// sum_e a[e] * b[e], left to right, as kernels/cpu/sparse.cc's
// TreeAssign child loop and the k-means order value.
SB_SPARSE_HD float SequentialDot(const float* a, const float* b, int64_t n) {
  float v = 0.0f;
  for (int64_t e = 0; e < n; ++e) v = AddRn(v, MulRn(a[e], b[e]));
  return v;
}

// ---------------------------------------------------------------------------
// The draws' generator (kernels/draw_rng.h, which random_draws.cc's Rng
// wraps) and SampleRows' Floyd sampling, so that the device draws
// the rows the host would (calibration rows, k-means samples) without a
// host round trip for sizes only the device knows (key lengths).
// ---------------------------------------------------------------------------
using ::scatterbrain::DrawRng;

// A set of indices in [0, n) as n bits (zeroed by the caller).
struct BitSet {
  uint32_t* words;
  SB_SPARSE_HD bool Contains(int64_t t) const {
    return (words[t >> 5] >> (t & 31)) & 1u;
  }
  SB_SPARSE_HD void Insert(int64_t t) { words[t >> 5] |= 1u << (t & 31); }
};

// SampleRows(seed, purpose, a, b, n, count) for count < n: Floyd's
// algorithm inserts the `count` chosen indices into `set` (SampleRows
// returns them sorted; count >= n is every index, and draws nothing).
template <typename Set>
SB_SPARSE_HD void FloydSample(uint64_t seed, uint64_t purpose, uint64_t a,
                              uint64_t b, int64_t n, int64_t count, Set& set) {
  DrawRng rng(seed, purpose, a, b);
  for (int64_t j = n - count; j < n; ++j) {
    const int64_t t = static_cast<int64_t>(rng.Below(j + 1));
    set.Insert(set.Contains(t) ? j : t);
  }
}

// ---------------------------------------------------------------------------
// Hash codes and their sort order.
// ---------------------------------------------------------------------------
// An LSH order key: (bucket, value) compared lexicographically, as
// sparse.cc's HashKey.
struct HashCode {
  uint32_t bucket;
  float value;
};

// Two levels of cross-polytope buckets from 2P projections of one row:
// level 1 is p[0, P), level 2 p[P, 2P); each level's bucket is the argmax
// of +-p (first wins on ties); the value is level 2's winning |p|.
SB_SPARSE_HD HashCode CrossPolytopeCode(const float* p, int P) {
  uint32_t bucket = 0;
  float value = 0.0f;
  for (int level = 0; level < 2; ++level) {
    int best = 0;
    float best_v = NegInfinity();
    for (int l = 0; l < P; ++l) {
      const float v = p[level * P + l];
      if (v > best_v) {
        best_v = v;
        best = 2 * l;
      }
      if (-v > best_v) {
        best_v = -v;
        best = 2 * l + 1;
      }
    }
    bucket =
        bucket * static_cast<uint32_t>(2 * P) + static_cast<uint32_t>(best);
    value = best_v;
  }
  return HashCode{bucket, value};
}

// SMYRF's appended coordinate sqrt(M - |x|^2) (M = max|q|^2 + max|k|^2),
// from squared norms in double: queries get [0, pad], keys [pad, 0].
SB_SPARSE_HD float SmyrfPad(double norm2, double M) {
  return static_cast<float>(sqrt(DMax(0.0, M - norm2)));
}
// A projection of the transformed row: p (over the first d coordinates)
// plus the appended coordinates e0, e1 times the projection's w0, w1.
SB_SPARSE_HD float AddSmyrf(float p, float w0, float w1, float e0, float e1) {
  return p + (w0 * e0 + w1 * e1);
}

// Monotone map of a float to uint32 (-0 and +0 equal, as float compare).
SB_SPARSE_HD uint32_t OrderedBits(float v) {
  if (v == 0.0f) v = 0.0f;
  const uint32_t u = FloatToBits(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
// A 64-bit key whose unsigned order is HashKey's order (NaN excepted).
SB_SPARSE_HD uint64_t HashSortKey(HashCode c) {
  return (static_cast<uint64_t>(c.bucket) << 32) | OrderedBits(c.value);
}

// ---------------------------------------------------------------------------
// Equal-size chunks of the sorted keys (sparse.cc: c = min(bucket, nk),
// kstart[t] = t * nk / nchunks).
// ---------------------------------------------------------------------------
SB_SPARSE_HD int64_t NumChunks(int64_t nk, int64_t bucket) {
  if (nk <= 0) return 0;
  const int64_t c = MinI(bucket, nk);
  return (nk + c - 1) / c;
}
SB_SPARSE_HD int64_t ChunkStart(int64_t t, int64_t nk, int64_t nchunks) {
  return t * nk / nchunks;
}
// The chunk holding sorted position pos: the largest t with
// ChunkStart(t) <= pos.
SB_SPARSE_HD int64_t ChunkOfPosition(int64_t pos, int64_t nk, int64_t nchunks) {
  return ((pos + 1) * nchunks - 1) / nk;
}
// A query's chunk: the last chunk whose first key's order key is <= the
// query's (chunk 0 when it is below them all). `sorted[pos]` is the order
// key of sorted key position pos.
template <typename Keys>
SB_SPARSE_HD int64_t QueryChunk(uint64_t qkey, const Keys& sorted, int64_t nk,
                                int64_t nchunks) {
  int64_t lo = 1, hi = nchunks;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (qkey < sorted[ChunkStart(mid, nk, nchunks)]) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo - 1;
}

// ---------------------------------------------------------------------------
// k-means hash shape (sparse.cc's KMeansHash): K centroids, flat up to 256,
// else a tree of K1 tops with K2 children each; trained on S sampled keys.
// ---------------------------------------------------------------------------
constexpr int64_t kMaxFlatCentroids = 256;
constexpr int64_t kKMeansSamplesPerCentroid = 32;
struct KMeansShape {
  int64_t k = 0, k1 = 0, k2 = 0, samples = 0;
};
SB_SPARSE_HD KMeansShape MakeKMeansShape(int64_t nk, int64_t bucket) {
  KMeansShape s;
  s.k = MaxI(1, MinI(NumChunks(nk, bucket), nk));
  s.k1 = s.k <= kMaxFlatCentroids
             ? s.k
             : static_cast<int64_t>(ceil(sqrt(static_cast<double>(s.k))));
  s.k2 = (s.k + s.k1 - 1) / s.k1;
  s.samples = MinI(nk, s.k * kKMeansSamplesPerCentroid);
  return s;
}
// Whether candidate (v, i) beats (best_v, best_i) for "largest value, first
// index on ties" — the CPU's argmax rule (Max, then the first equal entry),
// and associative, so lanes can reduce in any order.
SB_SPARSE_HD bool BeatsFirstMax(float v, int64_t i, float best_v,
                                int64_t best_i) {
  return v > best_v || (v == best_v && i < best_i);
}

// ---------------------------------------------------------------------------
// Masks (cpu::Slice::KeyLimit and sparse.cc's window and causal tests);
// offset = seq_k - seq_q.
// ---------------------------------------------------------------------------
SB_SPARSE_HD int64_t KeyLimit(int64_t i, int64_t nk, int64_t offset,
                              bool causal) {
  if (!causal) return nk;
  const int64_t lim = i + offset + 1;
  return lim < 0 ? 0 : (lim > nk ? nk : lim);
}
SB_SPARSE_HD bool InWindow(int64_t i, int64_t j, int64_t offset, int64_t half) {
  const int64_t pos = i + offset;
  return j >= pos - half && j <= pos + half;
}
SB_SPARSE_HD bool CausalOk(int64_t i, int64_t j, int64_t offset, bool causal) {
  return !causal || j <= i + offset;
}
// The keys a block of query rows [i0, i1) may meet in its local window.
SB_SPARSE_HD void LocalKeyRange(int64_t i0, int64_t i1, int64_t nk,
                                int64_t offset, int64_t half, bool causal,
                                int64_t* lo, int64_t* hi) {
  *lo = MaxI(0, i0 + offset - half);
  int64_t h = MinI(nk, i1 - 1 + offset + half + 1);
  if (causal) h = MinI(h, KeyLimit(i1 - 1, nk, offset, causal));
  *hi = h;
}

// ---------------------------------------------------------------------------
// Output of the sparse support alone (cpu::WriteSparseOnly): false when the
// row has nothing to average (zeros; a guard when the row sees keys).
// ---------------------------------------------------------------------------
SB_SPARSE_HD bool SparseOnlyRow(int64_t lim, int64_t count, float e1,
                                bool* guard) {
  const bool ok = lim > 0 && count > 0 && e1 > 0.0f;
  *guard = !ok && lim > 0;
  return ok;
}

// ---------------------------------------------------------------------------
// Scatterbrain's combination (kernels/cpu/combine.cc calls these too).
// ---------------------------------------------------------------------------
constexpr int kNumW = 3;
constexpr int kNumLambda = 7;
constexpr int kMeanCandidate = kNumW * kNumLambda;
constexpr int kSparseCandidate = kMeanCandidate + 1;
constexpr int kNumCandidates = kSparseCandidate + 1;  // + the exact part alone
// Used without calibration rows: the ratio estimator, mildly shrunk (the
// most often selected candidate on our measured families).
constexpr int kDefaultCandidate = 1 * kNumLambda + 2;
// Below this share of the row's low-rank total, what is left after taking
// out the support is float rounding, not signal.
constexpr double kCancellation = 1e-5;
SB_SPARSE_HD double Lambda(int i) {
  switch (i) {
    case 0:
      return 0.0;
    case 1:
      return 0.125;
    case 2:
      return 0.25;
    case 3:
      return 0.375;
    case 4:
      return 0.5;
    case 5:
      return 0.75;
    default:
      return 1.0;
  }
}

// What the support pass, the features and the low-rank sums hold for row i.
struct RowInputs {
  int64_t lim = 0;                     // keys the row sees (KeyLimit)
  int64_t count = 0;                   // |S_i|
  float emax = 0.0f, e1 = 0.0f;        // exact part: sum exp(logit - emax), S_i
  float f1 = 0.0f;                     // low-rank mass on S_i (low-rank units)
  float den = 0.0f;                    // low-rank mass on every visible key
  float qscale = 0.0f, kscale = 0.0f;  // the features' log-scales
};

// combine.cc's RowParts, less the pointers.
struct RowParts {
  bool empty = false, has_e = false, has_l = false, guard = false;
  double wt = 0, wr = 0, e1 = 0, l1 = 0;
};
SB_SPARSE_HD RowParts MakeRowParts(const RowInputs& in) {
  RowParts p;
  if (in.lim <= 0) {
    p.empty = true;
    return p;
  }
  p.e1 = in.e1;
  p.has_e = in.count > 0 && p.e1 > 0.0;
  const double f1 = in.f1;
  double l1 = static_cast<double>(in.den) - f1;
  if (in.count >= in.lim) {
    l1 = 0.0;
  } else if (!(l1 > kCancellation * in.den) || !IsFiniteDouble(l1)) {
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
    const float ls = in.qscale + in.kscale;
    const double log_l = ls + log(l1);
    const double log_e = in.emax + log(p.e1);
    p.wt = 1.0 / (1.0 + exp(log_e - log_l));
    p.wr = l1 / (l1 + DMax(f1, 0.0));
  }
  return p;
}
// Rows the calibrated output counts as guarded.
SB_SPARSE_HD bool CalibratedGuard(const RowParts& p) {
  return !p.empty && (p.guard || (!p.has_e && !p.has_l));
}

// Candidate k of a row, per column: (1 - w) E_dir + w D.
struct Candidate {
  bool mean = false, has_l = false;
  double w = 0, lambda = 0, inv_e = 0, inv_l = 0;
};
SB_SPARSE_HD Candidate MakeCandidate(const RowParts& p, int k) {
  Candidate c;
  if (k == kMeanCandidate || (!p.has_e && !p.has_l)) {
    c.mean = true;
    return c;
  }
  const int wi = k / kNumLambda;
  c.lambda = k == kSparseCandidate ? 0.0 : Lambda(k % kNumLambda);
  double w = k == kSparseCandidate ? 0.0
             : wi == 0             ? p.wt
             : wi == 1             ? p.wr
                                   : sqrt(p.wt * p.wr);
  if (!p.has_e) w = 1.0;
  if (!p.has_l) w = 0.0;
  c.w = w;
  c.has_l = p.has_l;
  c.inv_e = p.has_e ? 1.0 / p.e1 : 0.0;
  c.inv_l = p.has_l ? 1.0 / p.l1 : 0.0;
  return c;
}
// One column: vbar is the mean visible value, ev the exact numerator, lv
// the low-rank numerator off S_i.
SB_SPARSE_HD double CandidateValue(const Candidate& c, double vbar, float ev,
                                   float lv) {
  if (c.mean) return vbar;
  const double edir = ev * c.inv_e;
  const double ldir = c.has_l ? static_cast<double>(lv) * c.inv_l : 0.0;
  const double dir = vbar + c.lambda * (ldir - vbar);
  return (1.0 - c.w) * edir + c.w * dir;
}

// The textbook estimator of one row: (ev a + lv b) / den.
struct UnbiasedRow {
  bool ok = false;
  double a = 0, b = 0, den = 0;
};
SB_SPARSE_HD UnbiasedRow MakeUnbiased(const RowParts& p, const RowInputs& in) {
  UnbiasedRow u;
  const double ls = in.qscale + in.kscale;
  const double emax = p.has_e ? in.emax : -1e300;
  const double ref = DMax(emax, p.has_l ? ls : -1e300);
  u.a = p.has_e ? exp(emax - ref) : 0.0;
  u.b = p.has_l ? exp(ls - ref) : 0.0;
  u.den = p.e1 * u.a + p.l1 * u.b;
  u.ok = u.den > 0.0 && IsFiniteDouble(u.den);
  return u;
}
SB_SPARSE_HD float UnbiasedValue(const UnbiasedRow& u, bool has_l, float ev,
                                 float lv) {
  const double l = has_l ? static_cast<double>(lv) : 0.0;
  return static_cast<float>((ev * u.a + l * u.b) / u.den);
}

// The calibrated estimator's choice for one slice from its n sampled rows:
// co[r * kNumCandidates + k] = <candidate k, exact row r>, cc the same with
// itself, oo[r] = <exact r, exact r>; rows that see no key have zeros and
// used[r] = 0. Leave-one-out error picks the candidate (answering zeros is
// the baseline); alpha is the least-squares shrink less its jackknife
// standard error.
struct CalibrationChoice {
  int candidate = kDefaultCandidate;
  double alpha = 1.0;
  bool fallback = false;  // counted in AttentionStats::fallbacks
};
SB_SPARSE_HD double FitAlpha(double a, double b) {
  return b > 0 ? DMin(DMax(a / b, 0.0), 1.0) : 0.0;
}
SB_SPARSE_HD CalibrationChoice SelectCandidate(const double* co,
                                               const double* cc,
                                               const double* oo,
                                               const uint8_t* used, int64_t n) {
  CalibrationChoice ch;
  double oo_total = 0;
  for (int64_t r = 0; r < n; ++r) oo_total += oo[r];
  if (oo_total > 0) {
    double best_loo = oo_total;
    ch.candidate = kMeanCandidate;
    ch.alpha = 0.0;
    for (int k = 0; k < kNumCandidates; ++k) {
      double co_all = 0, cc_all = 0;
      for (int64_t r = 0; r < n; ++r) {
        co_all += co[r * kNumCandidates + k];
        cc_all += cc[r * kNumCandidates + k];
      }
      double loo = 0, alpha_sum = 0, alpha_sq = 0;
      int n_used = 0;
      for (int64_t r = 0; r < n; ++r) {
        if (!used[r]) continue;
        const double a = co[r * kNumCandidates + k];
        const double b = cc[r * kNumCandidates + k];
        const double alpha = FitAlpha(co_all - a, cc_all - b);
        loo += alpha * alpha * b - 2 * alpha * a + oo[r];
        alpha_sum += alpha;
        alpha_sq += alpha * alpha;
        ++n_used;
      }
      if (loo < best_loo - 1e-12 * oo_total) {
        best_loo = loo;
        ch.candidate = k;
        double se = 0;
        if (n_used > 1) {
          const double mean = alpha_sum / n_used;
          const double var = DMax(0.0, alpha_sq / n_used - mean * mean);
          se = sqrt((n_used - 1) * var);
        }
        ch.alpha = DMax(0.0, FitAlpha(co_all, cc_all) - se);
      }
    }
  }
  ch.fallback = ch.candidate == kMeanCandidate || ch.alpha < 0.5;
  return ch;
}

}  // namespace sparse
}  // namespace cuda
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_SPARSE_MATH_H_
