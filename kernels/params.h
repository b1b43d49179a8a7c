// scatterbrain/kernels/params.h — the one plain struct that describes an
// attention call. Every backend consumes exactly this; ValidateParams (in
// validate.h) is the single place that checks it.
#ifndef SCATTERBRAIN_KERNELS_PARAMS_H_
#define SCATTERBRAIN_KERNELS_PARAMS_H_

#include <cstdint>
#include <string>
#include <vector>

namespace scatterbrain {

struct CancelToken;  // kernels/cancel.h

enum class Method { kExact, kPerformer, kLsh, kLocal, kScatterbrain };
// Which sparse support Scatterbrain uses on top of the low-rank part.
//  kLsh: LSH clusters of `bucket_size` keys. kLocal: a window of `window`.
//  kBoth: both, at those sizes (a support about twice as large).
//  kAuto: per (batch, head), one of lsh (bucket_size), local (window) or
//    both at half each (bucket_size / 2 and window / 2: the same budget),
//    whichever holds the most exact attention mass on the calibration rows
//    (kernels/cpu/plan.cc). Needs calibration_rows > 0 (else lsh). Sessions'
//    incremental decode steps use kBoth for it.
enum class SparseSupport { kLsh, kLocal, kBoth, kAuto };
// How Scatterbrain combines its sparse and low-rank parts.
//  kCalibrated: (default) per-(batch, head) the combination of exact-on-support
//    and low-rank-off-support is chosen on a few query rows computed exactly
//    (README, Accuracy): biased, far lower error.
//  kUnbiased: the textbook estimator (A_hat V) / (A_hat 1) of the paper.
enum class Estimator { kCalibrated, kUnbiased };
// What the cross-polytope LSH hashes.
//  kNone: (default) the raw directions of q and k (angular hashing); on our
//    measured families it finds more attention mass (README, Accuracy).
//  kSmyrf: SMYRF's asymmetric transform q -> [q, 0, sqrt(M - |q|^2)],
//    k -> [k, sqrt(M - |k|^2), 0], M = max|q|^2 + max|k|^2, which turns
//    maximum inner product into nearest neighbour; better when key norms
//    differ widely.
enum class LshTransform { kNone, kSmyrf };
// How an LSH round orders queries and keys before keys are cut into
// equal-size clusters. Default kKMeans: on our measured families it finds
// far more of the attention mass (README, Accuracy).
//  kCrossPolytope: two levels of cross-polytope buckets over
//    `hash_projections` random projections, then the winning projection's
//    value (data-independent).
//  kKMeans: a few rounds of spherical k-means on the keys of the slice, one
//    centroid per cluster of `bucket_size` keys, seeded from the round's
//    draws; queries go to the centroid with the largest inner product. Data-
//    dependent (a learned quantiser in the role of the hash): it finds real
//    clusters that random projections in high dimension split apart.
enum class LshHash { kCrossPolytope, kKMeans };
// Arithmetic. kFp32 (default): float32 everywhere. kTf32 / kBf16: the CUDA
// backend may use tensor cores (inputs rounded, float32 accumulation); the
// CPU backend computes float32 whatever is asked.
enum class Precision { kFp32, kTf32, kBf16 };

// Tensor layout: element (b, h, i, c) of q is
//   q[b * q_strides.batch + h * q_strides.head + i * q_strides.row + c];
// the last dimension is contiguous. Strides are in elements.
struct Strides {
  int64_t batch = 0;
  int64_t head = 0;
  int64_t row = 0;
};

struct AttentionParams {
  // --- tensors (not owned; the caller keeps them alive for the call) ---
  const float* q = nullptr;  // [batch, heads, seq_q, dim]
  const float* k = nullptr;  // [batch, heads, seq_k, dim]
  const float* v = nullptr;  // [batch, heads, seq_k, dim_v]
  float* out = nullptr;      // [batch, heads, seq_q, dim_v]
  Strides q_strides, k_strides, v_strides, out_strides;

  int64_t batch = 0;
  int64_t heads = 0;
  int64_t seq_q = 0;
  int64_t seq_k = 0;
  int64_t dim = 0;
  int64_t dim_v = 0;

  // Optional per-sequence key lengths (size `batch`); keys at positions >=
  // key_lengths[b] are padding and never attended. nullptr: all seq_k valid.
  const int32_t* key_lengths = nullptr;

  // Causal mask, bottom-right aligned (as FlashAttention >= 2.1): query i
  // sees keys j <= i + (seq_k - seq_q). For self-attention that is j <= i.
  bool causal = false;
  // Softmax scale tau; 0 means the default 1/sqrt(dim).
  float scale = 0.0f;

  Method method = Method::kScatterbrain;
  // Random features m (performer, scatterbrain). Drawn as m/2 orthogonal
  // projections used with both signs (the symmetric FAVOR+ form): even.
  int num_features = 128;
  // LSH cluster size in keys (lsh, scatterbrain with sparse lsh|both).
  int bucket_size = 128;
  // LSH hash rounds; a pair found in several rounds counts once.
  int num_hashes = 1;
  // Projections per hash round (cross-polytope: 2 * hash_projections
  // buckets per level, two levels). 1 reproduces SMYRF's one projection.
  int hash_projections = 4;
  LshTransform lsh_transform = LshTransform::kNone;
  LshHash lsh_hash = LshHash::kKMeans;
  // Lloyd iterations of the k-means hash.
  int kmeans_iterations = 3;
  // Local window width: query i sees keys with |i' - j| <= window / 2.
  int window = 128;
  SparseSupport sparse = SparseSupport::kLsh;
  Estimator estimator = Estimator::kCalibrated;
  // Query rows per (batch, head) computed exactly to calibrate the
  // Scatterbrain combination (kCalibrated only; those rows are returned
  // exactly). Costs calibration_rows * seq_k score evaluations per slice.
  // 0: no calibration, a fixed combination (ratio estimate, lambda = 1/4).
  int calibration_rows = 16;
  // Scatterbrain: up to this many "global" keys in every row's support, on
  // top of the LSH / local support: the keys that hold the most attention
  // mass on the calibration rows (a [CLS] or [SEP] column that every query
  // attends to). Needs calibration_rows > 0; 0 turns them off.
  int global_keys = 0;
  // Scatterbrain: when > 0, an error target instead of a fixed budget. Per
  // (batch, head) the cheapest configuration of a ladder (num_features and
  // bucket_size / window both b / 2, b = 32, 64, 128, ... up to
  // num_features + max(bucket_size, window)) whose relative output error,
  // estimated on held-out rows computed exactly with an upper confidence
  // bound, is at most target_error; exact attention for a slice where none
  // is. The chosen configuration and its estimate come back in
  // AttentionStats::head_plans. 0: off (the budget as given).
  double target_error = 0.0;
  uint64_t seed = 0;
  Precision precision = Precision::kFp32;

  // Optional stop signal (kernels/cancel.h), checked between pieces of work;
  // not owned; null: the call runs to its end. Not a setting: requests with
  // different tokens share a batch. A stopped call returns CANCELLED or
  // DEADLINE_EXCEEDED and leaves its output unspecified.
  const CancelToken* cancel = nullptr;
};

// How one (batch, head) slice was computed, reported when Scatterbrain chose
// per slice (sparse = kAuto, global_keys, or target_error).
struct HeadPlan {
  int64_t batch = 0;
  int64_t head = 0;
  // True when the error target made this slice exact attention (nothing
  // cheaper met it); the fields below then describe the last one tried.
  bool exact = false;
  SparseSupport sparse = SparseSupport::kLsh;  // never kAuto
  int num_features = 0;
  int bucket_size = 0;  // 0 when the support has no LSH part
  int window = 0;       // 0 when the support has no local part
  int global_keys = 0;  // global keys actually added
  // Share of the exact attention mass on the calibration rows that the
  // chosen sparse support holds (-1: not measured).
  double support_mass = -1.0;
  // target_error only: the relative error estimated on held-out exact rows
  // and its upper confidence bound (what was compared with the target); -1
  // when not estimated. 0 for an exact slice.
  double error_estimate = -1.0;
  double error_bound = -1.0;
};

// What a call reports besides its output.
struct AttentionStats {
  // Bytes of scratch memory the computation held at its peak.
  int64_t workspace_bytes = 0;
  // Bytes a dense float32 [batch, heads, seq_q, seq_k] score matrix takes.
  int64_t dense_score_bytes = 0;
  // Rows whose denominator was non-positive or underflowed and had to be
  // guarded (low-rank mass clamped, or an approximate row that found no
  // weight at all). Rows that see no key by construction (padding, causal
  // rows before the first key) output zeros and are not counted.
  int64_t denominator_guards = 0;
  // (batch, head) slices where calibration fell back to a shrunken or
  // mean-value answer because both estimates were unreliable.
  int64_t fallbacks = 0;
  // Per (batch, head) choices (see HeadPlan); empty when nothing was chosen
  // per slice.
  std::vector<HeadPlan> head_plans;
  // target_error only: the request's estimated relative error (the slices'
  // upper bounds, combined weighted by their estimated output norms); -1
  // otherwise.
  double error_bound = -1.0;
  // Cost actually spent, in query-key evaluations (a score or a feature
  // product per pair or per feature), and what exact attention spends on
  // the same call (its visible pairs); 0 when not counted.
  int64_t score_evaluations = 0;
  int64_t exact_score_evaluations = 0;
};

// The six sizes of a call, apart from its tensors and settings: q is
// [batch, heads, seq_q, dim], k [batch, heads, seq_k, dim], v [batch,
// heads, seq_k, dim_v], the output [batch, heads, seq_q, dim_v]. The wire's
// Shape message maps onto this (proto/convert/wire.h), and this onto
// AttentionParams (ShapeOf / SetShape), so each size is copied in one place.
struct AttentionShape {
  int64_t batch = 1;
  int64_t heads = 1;
  int64_t seq_q = 0;
  int64_t seq_k = 0;
  int64_t dim = 0;
  int64_t dim_v = 0;

  int64_t q_elements() const { return batch * heads * seq_q * dim; }
  int64_t k_elements() const { return batch * heads * seq_k * dim; }
  int64_t v_elements() const { return batch * heads * seq_k * dim_v; }
  int64_t out_elements() const { return batch * heads * seq_q * dim_v; }
  bool operator==(const AttentionShape& o) const {
    return batch == o.batch && heads == o.heads && seq_q == o.seq_q &&
           seq_k == o.seq_k && dim == o.dim && dim_v == o.dim_v;
  }
  bool operator!=(const AttentionShape& o) const { return !(*this == o); }
};
AttentionShape ShapeOf(const AttentionParams& p);
// Sets the six sizes of `p` (not its strides: see SetContiguousStrides).
void SetShape(const AttentionShape& shape, AttentionParams& p);

// Helpers for the common contiguous layout.
Strides ContiguousStrides(int64_t heads, int64_t seq, int64_t dim);
// Fills all four stride sets for contiguous [B, H, N, D] tensors.
void SetContiguousStrides(AttentionParams& p);
// The scale actually used (resolves 0 to 1/sqrt(dim)).
float EffectiveScale(const AttentionParams& p);

const char* MethodName(Method m);
bool ParseMethod(const std::string& s, Method* m);
const char* SparseName(SparseSupport s);
bool ParseSparse(const std::string& s, SparseSupport* out);
const char* EstimatorName(Estimator e);
bool ParseEstimator(const std::string& s, Estimator* out);
const char* LshTransformName(LshTransform t);
const char* PrecisionName(Precision p);
bool ParsePrecision(const std::string& s, Precision* out);
const char* LshHashName(LshHash h);
bool ParseLshHash(const std::string& s, LshHash* out);
bool ParseLshTransform(const std::string& s, LshTransform* out);

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_PARAMS_H_
