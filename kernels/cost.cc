// scatterbrain/kernels/cost.cc — see cost.h. Terms follow kernels/cpu/*.cc;
// per (batch, head) slice, in double (sums of products of int64 sizes can
// pass 2^63 for absurd shapes), saturated at the end.
//
// kScoreFlops (cost.h) was measured on a 2-core AMD EPYC (2026-11-30): exact
// attention at N = 4096..16384 took the same time per score at d = 4 as
// about 48 multiply-add flops, because each score is written, scanned for
// its row max, exponentiated, summed and scaled — five passes over a score
// block that no longer fits in cache once seq_k is large. Every other
// constant is a count of operations of the code it names.
#include "kernels/cost.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace scatterbrain {
namespace {

// exp of a random feature: the vectorised polynomial alone, no row passes.
constexpr double kExpFlops = 16;
// A multiply-add in a scalar dot product (a dependent chain the compiler
// may not reorder, so it waits on the FPU's latency): about 8x a GEMM's.
constexpr double kScalarMacFlops = 16;
// One comparison-and-move of std::sort, per element per level.
constexpr double kSortFlops = 8;
// Block sizes of the CPU backend (kernels/cpu/*.cc).
constexpr double kLocalBlock = 64;   // sparse.cc
constexpr double kCausalBlock = 64;  // lowrank.cc
// k-means training sample per centroid, and the size up to which a round
// uses one level of centroids (sparse.cc).
constexpr double kKMeansSamplesPerCentroid = 32;
constexpr double kMaxFlatCentroids = 256;
// Calibrated Scatterbrain's candidate combinations per row (sparse_math.h:
// three weights times seven shrink levels, plus the mean), each dv values.
constexpr double kCandidates = 22;

struct Sizes {
  double nq, nk, d, dv, m;
};

// Positive random features of queries and keys: the projection GEMM
// (2 * d * m/2 per row), the exps, the squared norms.
double Features(const Sizes& s) {
  return (s.nq + s.nk) * (s.m * s.d + s.m * kExpFlops + 2 * s.d);
}

// Low-rank sums: phi(K)^T [V, 1], then phi(Q) times them; causal adds the
// masked diagonal block of each row block.
double LowRank(const Sizes& s, bool causal) {
  double f = 2 * s.nk * s.m * (s.dv + 1) + 2 * s.nq * s.m * (s.dv + 1);
  if (causal) f += s.nq * std::min(kCausalBlock, s.nk) * 2 * (s.m + s.dv + 1);
  return f;
}

// One pair of a sparse tile: the exact score and its softmax work, its
// share of the weights-times-values GEMM and, when features come along
// pairwise, the low-rank estimate of the same pair.
double TilePair(const Sizes& s, bool pairwise_features) {
  double f = 2 * s.d + 2 * s.dv + kScoreFlops;
  if (pairwise_features) f += 2 * s.m + 2 * s.dv;
  return f;
}

// One LSH round's ordering of keys and queries.
double Hash(const AttentionParams& p, const Sizes& s, double nchunks) {
  double f = s.nk * std::log2(std::max(s.nk, 2.0)) * kSortFlops +
             s.nq * std::log2(std::max(nchunks, 2.0)) * kSortFlops;
  if (p.lsh_hash == LshHash::kCrossPolytope) {
    const double P = std::max(p.hash_projections, 1);
    const double D = p.lsh_transform == LshTransform::kSmyrf ? s.d + 2 : s.d;
    return f + (s.nq + s.nk) * (2 * D * 2 * P + 4 * P);
  }
  // k-means: Lloyd iterations on a sample, then every key and query walks
  // the (one- or two-level) centroid tree — the top level by GEMM, its
  // children by scalar dot products — and is projected on a direction.
  const double K = std::max(1.0, std::min(nchunks, s.nk));
  const double K1 = K <= kMaxFlatCentroids ? K : std::ceil(std::sqrt(K));
  const double K2 = std::ceil(K / K1);
  const double nt = std::min(s.nk, K * kKMeansSamplesPerCentroid);
  const double it = std::max(p.kmeans_iterations, 0);
  f += it * nt * (K1 + K2) * 2 * s.d + nt * K1 * 2 * s.d + nt * s.d;
  f += (s.nq + s.nk) * (K1 * 2 * s.d + (K2 + 1) * s.d * kScalarMacFlops);
  return f;
}

// Everything a slice of a method with a sparse support does for it.
double Support(const AttentionParams& p, const Sizes& s, bool lsh, bool local,
               bool features) {
  double f = 0;
  if (local) {
    const double half = std::floor(p.window / 2.0);
    const double keys =
        std::min(s.nk, kLocalBlock + (p.causal ? half : 2 * half));
    f += s.nq * keys * (TilePair(s, features) + 4);  // + the window mask
  }
  if (!lsh) return f;
  const double c = std::max(1.0, std::min<double>(p.bucket_size, s.nk));
  const double nchunks = std::ceil(s.nk / c);
  const int rounds = std::max(p.num_hashes, 1);
  const bool fused = features && !local && rounds == 1 && !p.causal;
  for (int r = 0; r < rounds; ++r) {
    f += Hash(p, s, nchunks);
    const bool masked = p.causal || local || r > 0;
    // Each query meets one chunk of about c keys; a masked tile also tests
    // every pair against the earlier rounds' chunks.
    f += s.nq * c *
         (TilePair(s, features && !fused) + (masked ? 2.0 + 2.0 * r : 0.0));
  }
  if (fused) {
    // Per chunk its sums phi(K_c)^T [V_c, 1] and the rest of the keys'
    // (total minus chunk); per query the rest applied.
    f += 2 * s.nk * s.m * (s.dv + 1) + nchunks * 2 * s.m * (s.dv + 1);
    f += s.nq * 2 * s.m * (s.dv + 2);
  }
  return f;
}

// Scatterbrain's output: per row the chosen candidate; calibration computes
// `calibration_rows` rows exactly and scores every candidate on them.
double Combine(const AttentionParams& p, const Sizes& s) {
  double f = s.nk * s.dv + s.nq * s.dv * 10;
  if (p.estimator == Estimator::kCalibrated && p.calibration_rows > 0) {
    const double rows = std::min<double>(p.calibration_rows, s.nq);
    f += rows * s.nk * (2 * s.d + 2 * s.dv + kScoreFlops);
    f += rows * kCandidates * s.dv * 14;
  }
  return f;
}

double ExactFlops(const AttentionParams& p, const Sizes& s) {
  return static_cast<double>(VisiblePairs(p.seq_q, p.seq_k, p.causal)) *
         (2 * s.d + 2 * s.dv + kScoreFlops);
}

double SliceFlops(const AttentionParams& p) {
  const Sizes s{static_cast<double>(p.seq_q), static_cast<double>(p.seq_k),
                static_cast<double>(p.dim), static_cast<double>(p.dim_v),
                static_cast<double>(std::max(p.num_features, 0))};
  switch (p.method) {
    case Method::kExact:
      return ExactFlops(p, s);
    case Method::kPerformer:
      return Features(s) + LowRank(s, p.causal) + s.nq * s.dv * 2;
    case Method::kLocal:
      return Support(p, s, /*lsh=*/false, /*local=*/true, false) + s.nq * s.dv;
    case Method::kLsh:
      return Support(p, s, /*lsh=*/true, /*local=*/false, false) + s.nq * s.dv;
    case Method::kScatterbrain: {
      const bool lsh = p.sparse != SparseSupport::kLocal;
      const bool local = p.sparse != SparseSupport::kLsh;
      const bool fused =
          lsh && !local && std::max(p.num_hashes, 1) == 1 && !p.causal;
      // sparse = auto hashes and may run either support: counted as both.
      double f = Features(s) + Support(p, s, lsh, local, /*features=*/true) +
                 Combine(p, s);
      if (!fused) f += LowRank(s, p.causal);
      if (p.target_error > 0) {
        // The ladder's passes (a geometric series: at most about twice the
        // request's own), the held-out rows, and the exact fallback.
        const double held = std::min<double>(32, s.nq);
        f = 2 * f + ExactFlops(p, s) +
            held * s.nk * (2 * s.d + 2 * s.dv + kScoreFlops);
      }
      return f;
    }
  }
  return 0;
}

}  // namespace

int64_t VisiblePairs(int64_t seq_q, int64_t seq_k, bool causal) {
  if (seq_q <= 0 || seq_k <= 0) return 0;
  const double full = static_cast<double>(seq_q) * static_cast<double>(seq_k);
  constexpr double kMax =
      static_cast<double>(std::numeric_limits<int64_t>::max());
  if (!causal)
    return full >= kMax ? std::numeric_limits<int64_t>::max() : seq_q * seq_k;
  // Query i sees min(seq_k, max(0, i + off + 1)) keys, off = seq_k - seq_q:
  // rows before `first` see none, rows from `full_from` on see all.
  const int64_t off = seq_k - seq_q;
  const int64_t first = std::max<int64_t>(0, -off);  // sees 1 key
  const int64_t full_from = std::min<int64_t>(seq_q, seq_k - off - 1);
  double pairs = 0;
  if (full_from > first) {
    // keys(i) = i + off + 1 for i in [first, full_from): an arithmetic run.
    const double n = static_cast<double>(full_from - first);
    const double a = static_cast<double>(first + off + 1);
    pairs += n * a + n * (n - 1) / 2;
  }
  pairs += static_cast<double>(seq_q - std::max(full_from, first)) *
           static_cast<double>(seq_k);
  return pairs >= kMax ? std::numeric_limits<int64_t>::max()
                       : static_cast<int64_t>(pairs);
}

int64_t EstimateFlops(const AttentionParams& p) {
  if (p.batch <= 0 || p.heads <= 0 || p.seq_q <= 0 || p.seq_k <= 0) return 0;
  const double total = static_cast<double>(p.batch) *
                       static_cast<double>(p.heads) * SliceFlops(p);
  constexpr double kMax =
      static_cast<double>(std::numeric_limits<int64_t>::max());
  if (!(total < kMax)) return std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(total);
}

}  // namespace scatterbrain
