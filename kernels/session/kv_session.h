// scatterbrain/kernels/session/kv_session.h — a server-held K/V cache and the
// incremental Scatterbrain state kept with it, so that a decode step sends
// one token and costs O(budget), not O(context).
//
// A KvSession holds, for `batch` sequences of `heads` heads, the keys and
// values appended so far in paged storage (blocks of `block_tokens` tokens,
// as vLLM's PagedAttention: an append fills the last block and allocates new
// ones, never copies what is stored) in float32, float16 or bfloat16, and per
// (sequence, head):
//  - the low-rank running sums sum_j phi(k_j) [v_j, 1] of the session's
//    seeded feature draws (the same draws a one-shot call with the seed
//    makes), kept in a running log-scale, so a new key costs O(m * dv);
//  - for LSH supports, each hash round's index of the keys in hash order
//    (k-means: keys assigned to the nearest centroid as they arrive, the
//    centroids refitted when the keys have doubled since the last fit or a
//    cluster grew unbalanced; cross-polytope: fixed projections, no refit);
//  - for the calibrated estimator, the combination chosen on exact rows of
//    recent queries, re-chosen when the context doubles or after a refit.
// A decode step (few query rows, a method other than exact) reads only its
// support (its LSH neighbourhood of bucket_size keys and its local window)
// and the running sums. Exact attention and larger query blocks (prefills)
// read the stored keys: exact decode scans the blocks in place, a prefill
// gathers the sequence and runs the backend's one-shot call, so a session's
// exact, performer and local outputs equal a one-shot call on the same K/V.
//
// Plain core code: no gRPC, protobuf or Prometheus. Thread-safe: a session
// serialises its appends and attends on its own mutex; different sessions
// run in parallel.
#ifndef SCATTERBRAIN_KERNELS_SESSION_KV_SESSION_H_
#define SCATTERBRAIN_KERNELS_SESSION_KV_SESSION_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/dtype.h"
#include "kernels/backend.h"
#include "kernels/cancel.h"
#include "kernels/params.h"

namespace scatterbrain {

// Where a session's bytes come from: the server ties it to its memory
// budget and its session budget. Reserve is called before memory is
// allocated, Release after it is freed, both with the session's mutex held
// (implementations must not call back into the session).
class SessionMemory {
 public:
  virtual ~SessionMemory() = default;
  // RESOURCE_EXHAUSTED (with a message naming the limit) when `bytes` more
  // cannot be had.
  virtual absl::Status Reserve(int64_t bytes) = 0;
  virtual void Release(int64_t bytes) = 0;
};

struct SessionConfig {
  // The method and its settings, fixed for the session's life: method,
  // num_features, bucket_size, num_hashes, hash_projections, lsh_hash,
  // kmeans_iterations, window, sparse, estimator, calibration_rows, scale,
  // seed, precision. Tensor pointers, strides, sizes, causal, key_lengths
  // and cancel are ignored (each attend says its own).
  AttentionParams settings;
  int64_t batch = 1;
  int64_t heads = 1;
  int64_t dim = 0;
  int64_t dim_v = 0;
  // How keys and values are stored (appends in any dtype are converted).
  DType kv_dtype = DType::kFloat32;
  // Tokens per storage block (the unit of allocation).
  int64_t block_tokens = 64;
  // Tokens per sequence beyond which an append is refused.
  int64_t max_tokens = int64_t{1} << 20;
};

// INVALID_ARGUMENT naming the field (as ValidateParams does) when `config`
// cannot make a session: sizes, settings, the SMYRF transform (its padding
// needs every query's norm, which a session never sees in advance).
absl::Status ValidateSessionConfig(const SessionConfig& config);

struct SessionInfo {
  std::vector<int64_t> lengths;  // tokens per sequence
  // Keys and values as stored: sum of lengths * heads * (dim + dim_v) *
  // the storage dtype's size.
  int64_t kv_bytes = 0;
  // The incremental state: running sums, LSH indexes and centroids,
  // calibration rows.
  int64_t state_bytes = 0;
  // Everything held: allocated blocks (kv_bytes plus the unfilled rest of
  // each sequence's last block) plus state_bytes. What SessionMemory has.
  int64_t held_bytes = 0;
  int64_t appends = 0;       // Append calls and appending steps
  int64_t steps = 0;         // attends
  int64_t refits = 0;        // k-means refits (all heads and rounds)
  double refit_seconds = 0;  // their total time
  int64_t calibrations = 0;  // calibration re-choices
};

class KvSession;

// One attention call on a session: a decode step (a few query rows, maybe
// appending their own keys and values first) or a prefill.
struct SessionCall {
  KvSession* session = nullptr;
  // Queries [batch, heads, seq_q, dim], float32, contiguous.
  const float* q = nullptr;
  int64_t seq_q = 0;
  // Optional (both or neither): keys [batch, heads, seq_q, dim] and values
  // [batch, heads, seq_q, dim_v] in `kv_dtype`, appended to the session
  // before the queries attend (the decode step: one round trip per token).
  const void* k = nullptr;
  const void* v = nullptr;
  DType kv_dtype = DType::kFloat32;
  // false (default): causal relative to the session's length L (after the
  // append): query row i of every sequence b sees keys j <= L_b - seq_q + i,
  // so a prefill of P tokens followed by decode steps is causal
  // self-attention. true: every row sees all L_b keys.
  bool see_all = false;
  // Output [batch, heads, seq_q, dim_v] float32, contiguous.
  float* out = nullptr;
  // Checked between pieces of work; a stopped call's output is unspecified
  // (its append, if any, has happened or not as a whole).
  const CancelToken* cancel = nullptr;

  // Filled by AttendSessions.
  absl::Status status;
  AttentionStats stats;
  // True when the call ran on the incremental state (cost O(budget) per
  // row), false when it read every stored key.
  bool incremental = false;
  // Sessions' lengths after the call (per sequence).
  std::vector<int64_t> lengths;
};

// Runs `calls` (of one or many sessions). Calls on the same session run in
// their order in the span (so two steps of one session in one batch see
// each other's appends as they would one after the other). Incremental
// calls of different sessions run as one parallel pass over every
// (call, sequence, head) on up to `threads` threads (0: the hardware's);
// the others read the stored keys, through `backend` for prefills (may be
// null: the CPU computes). Each call gets its own status; a bad call fails
// alone. Never throws or aborts: a failure, an allocation included, is its
// call's status, and every session lock is released.
void AttendSessions(absl::Span<SessionCall> calls, Backend* backend,
                    int threads);

class KvSession {
 public:
  // `memory` (may be null: unlimited) must outlive the session; the
  // session's fixed state is reserved here (RESOURCE_EXHAUSTED if it does
  // not fit).
  static absl::StatusOr<std::unique_ptr<KvSession>> Create(
      const SessionConfig& config, SessionMemory* memory);
  ~KvSession();  // releases everything it reserved

  KvSession(const KvSession&) = delete;
  KvSession& operator=(const KvSession&) = delete;

  const SessionConfig& config() const;

  // Appends counts[b] tokens to sequence b (counts has `batch` entries, or
  // one entry for every sequence). `k` holds, for each sequence in order,
  // its new keys as [heads, counts[b], dim] in `dtype` (for equal counts
  // that is [batch, heads, count, dim]); `v` likewise with dim_v. All or
  // nothing: INVALID_ARGUMENT (counts, non-finite values),
  // RESOURCE_EXHAUSTED (max_tokens, or memory refused), CANCELLED or
  // DEADLINE_EXCEEDED (`cancel`) leave the session as it was.
  absl::Status Append(absl::Span<const int64_t> counts, const void* k,
                      const void* v, DType dtype,
                      const CancelToken* cancel = nullptr);

  SessionInfo Info() const;
  std::vector<int64_t> Lengths() const;

  // Whether a call of `seq_q` query rows runs on the incremental state.
  bool Incremental(int64_t seq_q) const;
  // Estimated floating-point operations of a call of `seq_q` rows (after
  // appending `append` rows per sequence), kernels/cost.h's measure, for
  // admission.
  int64_t EstimateFlops(int64_t seq_q, int64_t append) const;
  // Bytes an append of `tokens` more tokens to every sequence would make
  // the session reserve (blocks and index growth), for admission.
  int64_t AppendBytes(int64_t tokens) const;

 private:
  friend void AttendSessions(absl::Span<SessionCall>, Backend*, int);
  class Impl;
  explicit KvSession(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Rows at most for which a call runs incrementally (more: a prefill).
constexpr int64_t kMaxIncrementalRows = 16;

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_SESSION_KV_SESSION_H_
