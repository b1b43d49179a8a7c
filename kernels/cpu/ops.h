// scatterbrain/kernels/cpu/ops.h — the CPU backend's operations on one
// (batch, head) slice. Each runs single-threaded (the backend parallelises
// over slices) and allocates its scratch through the WorkspaceMeter.
#ifndef SCATTERBRAIN_KERNELS_CPU_OPS_H_
#define SCATTERBRAIN_KERNELS_CPU_OPS_H_

#include <cstdint>
#include <vector>

#include "kernels/cpu/cpu_common.h"
#include "kernels/params.h"

namespace scatterbrain {
namespace cpu {

// Per-slice counters folded into AttentionStats.
struct SliceStats {
  int64_t guards = 0;
  int64_t fallbacks = 0;
  // Query-key evaluations spent (AttentionStats::score_evaluations).
  int64_t evaluations = 0;
};

// Exact softmax attention for query rows [row_begin, row_end).
void ExactRows(const Slice& s, int64_t row_begin, int64_t row_end,
               WorkspaceMeter* meter);

// Positive random features (symmetric FAVOR+ form, m = 2r features):
// phi(x) = m^-1/2 [exp(w.x~ - |x~|^2/2), exp(-w.x~ - |x~|^2/2)], x~ = sqrt(tau)
// x. Stored as phi_bar = phi / exp(scale): per query row a log-scale, one
// log-scale for all keys of the slice, so nothing overflows.
struct Features {
  int m = 0;
  Scratch<float> q;       // nq x m
  Scratch<float> qscale;  // nq (log)
  Scratch<float> k;       // nk x m
  float kscale = 0.0f;    // (log)
};
void ComputeFeatures(const Slice& s, const std::vector<float>& w, int r,
                     WorkspaceMeter* meter, Features* f);

// Low-rank sums phi(q_i) . sum_j phi(k_j) [v_j, 1] over the keys each row
// sees (prefix sums when causal), in units of exp(qscale_i + kscale).
struct LowRank {
  Scratch<float> num;  // nq x dv
  Scratch<float> den;  // nq
};
void ComputeLowRank(const Slice& s, const Features& f, WorkspaceMeter* meter,
                    LowRank* lr);

// Accumulators of the sparse support S_i of every query row: the exact part
// (online-softmax style: sum exp(logit - emax) [v, 1]) and, when features
// are given, the low-rank side in low-rank units: f1, its mass on S_i, and
// lv, its numerator on the keys NOT in S_i.
struct SparseAcc {
  Scratch<float> emax, e1, ev;  // nq, nq, nq x dv
  Scratch<float> f1, lv;        // nq, nq x dv (only with features)
  Scratch<int64_t> count;       // |S_i|
};
struct SupportOptions {
  bool lsh = false;
  bool local = false;
  int bucket_size = 128;
  int num_hashes = 1;
  int hash_projections = 4;
  LshTransform transform = LshTransform::kNone;
  LshHash hash = LshHash::kCrossPolytope;
  int kmeans_iterations = 3;
  int window = 128;
  uint64_t seed = 0;
  // Tests turn this off to check the fused path against the general one.
  bool allow_fused = true;
  // Optional, not owned: the LSH rounds already built for this slice with
  // these options (BuildLsh; the planner hashes once to choose the support),
  // and keys added to every row's support (global keys; any order, valid
  // indices < s.nk).
  const struct LshRounds* lsh_rounds = nullptr;
  const std::vector<int64_t>* globals = nullptr;
};
// The LSH rounds of a slice: per round, keys in hash order cut into
// `nchunks` equal chunks, queries grouped by the chunk they join, and each
// query's and key's chunk (a pair meets in a round when their chunks match).
struct LshRounds {
  int rounds = 0;
  int64_t nchunks = 0, nq = 0, nk = 0;
  // Round r's arrays start at r * nk (korder, kchunk), r * nq (qorder,
  // qchunk) and r * (nchunks + 1) (kstart, qstart).
  Scratch<int64_t> korder, kstart, qorder, qstart;
  Scratch<int32_t> qchunk, kchunk;
  // False when the call was stopped while hashing (contents unspecified).
  bool complete = false;
  // True if query i and key j share a chunk in one of rounds [0, rounds_below).
  bool Meets(int64_t i, int64_t j, int rounds_below) const;
};
void BuildLsh(const Slice& s, const SupportOptions& o, WorkspaceMeter* meter,
              LshRounds* out);
// True when the support is one non-causal LSH round: each query meets one
// key chunk, and the low-rank sums are fused into the support pass
// (ComputeLowRank is then not needed; AccumulateSupport fills lr->den).
bool FusesLowRank(const Slice& s, const SupportOptions& o);
// With features, `lr` holds ComputeLowRank's sums, or (when FusesLowRank)
// receives den. Without features, lr may be null.
void AccumulateSupport(const Slice& s, const SupportOptions& o,
                       const Features* f, LowRank* lr, WorkspaceMeter* meter,
                       SparseAcc* acc);

// An LSH order key: keys sort by (bucket, value) and are cut into chunks in
// that order.
struct HashKey {
  uint32_t bucket;
  float value;
  bool operator<(const HashKey& o) const {
    return bucket != o.bucket ? bucket < o.bucket : value < o.value;
  }
};
// The k-means "hash" of one round (sparse.cc): centroids, flat or a
// two-level tree of k1 tops with k2 children each, and the random direction
// that orders the keys within a leaf.
struct KMeansModel {
  int64_t d = 0, k1 = 0, k2 = 0;
  std::vector<float> top, leaves, dir;
};
// Fits round `round`'s model on the slice's keys (s.k, s.nk) with about
// `clusters` centroids, from the seed's draws (a session refits its index
// with this very function, so its clustering is a one-shot call's).
void FitKMeans(const Slice& s, int64_t clusters, int iterations, uint64_t seed,
               int round, WorkspaceMeter* meter, KMeansModel* model);
// Order keys (leaf, projection on the model's direction) of n rows of x.
void KMeansOrderKeys(const KMeansModel& model, const float* x, int64_t ld,
                     int64_t n, const CancelToken* cancel,
                     WorkspaceMeter* meter, HashKey* out);
// Order keys of two levels of cross-polytope buckets over `proj` ((2P) x d,
// the round's HashProjections draw) without the SMYRF transform.
void CrossPolytopeOrderKeys(const float* x, int64_t ld, int64_t n, int64_t d,
                            const std::vector<float>& proj, int P,
                            WorkspaceMeter* meter, HashKey* out);

// Output writers.
void WritePerformer(const Slice& s, const LowRank& lr, SliceStats* st);
void WriteSparseOnly(const Slice& s, const SparseAcc& acc, SliceStats* st);
// Query rows of a slice computed exactly: what calibration fits on, what the
// planner measures support mass and error on.
struct ExactSample {
  std::vector<int64_t> rows;
  std::vector<uint8_t> used;   // the row sees at least one key
  std::vector<double> out;     // rows x dv: exact outputs
  std::vector<float> weights;  // rows x nk: softmax weights (when kept)
  int64_t evaluations = 0;     // query-key scores computed
};
void ComputeExactSample(const Slice& s, std::vector<int64_t> rows,
                        bool keep_weights, ExactSample* out);
// `cal` (may be null or empty: a fixed combination) holds the calibration
// rows; they are returned exact.
void WriteScatterbrain(const Slice& s, const Features& f, const LowRank& lr,
                       const SparseAcc& acc, Estimator est,
                       const ExactSample* cal, WorkspaceMeter* meter,
                       SliceStats* st);

// Mean of v over the keys row i sees, in double (fallback answer).
void MeanValue(const Slice& s, int64_t i, double* out);
// Exact attention for row i, double precision; false if it sees no key.
// With `weights` (nk floats), also its softmax weights (0 past the keys the
// row sees).
bool ExactRow(const Slice& s, int64_t i, double* out, float* weights = nullptr);

}  // namespace cpu
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CPU_OPS_H_
