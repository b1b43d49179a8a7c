// scatterbrain/kernels/session/incremental.h — the per-(sequence, head)
// state that lets a decode step of performer, lsh, local or scatterbrain
// cost O(budget): the low-rank running sums, the LSH indexes (k-means or
// cross-polytope order of the keys, refitted as the context grows) and the
// calibrated estimator's choice. KvSession owns one and calls it with the
// session's mutex held; Attend calls for different (b, h) may run
// concurrently (each touches only its own head's state).
#ifndef SCATTERBRAIN_KERNELS_SESSION_INCREMENTAL_H_
#define SCATTERBRAIN_KERNELS_SESSION_INCREMENTAL_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "kernels/params.h"
#include "kernels/session/kv_session.h"
#include "kernels/session/paged_kv.h"

namespace scatterbrain {
namespace session {

struct IncrementalCounters {
  int64_t refits = 0;
  double refit_seconds = 0;
  int64_t calibrations = 0;
};

class IncrementalState {
 public:
  // Null when `config`'s method has no incremental path (exact).
  static std::unique_ptr<IncrementalState> Create(const SessionConfig& config);
  virtual ~IncrementalState() = default;

  // Bytes held now, and the most an append of one token per sequence adds
  // (all heads and rounds), for the session's reservations.
  virtual int64_t bytes() const = 0;
  virtual int64_t BytesPerToken() const = 0;

  // Tokens [old_len, new_len) of sequence b are written in `kv` (not yet
  // committed): take them into the sums and indexes (refitting when due),
  // on up to `threads` threads.
  virtual void Append(const PagedKv& kv, int64_t b, int64_t old_len,
                      int64_t new_len, int threads) = 0;

  // Query rows q (n x dim, row r seeing keys [0, lims[r])) of (b, h) that a
  // prefill computed without this state: offered as calibration rows.
  virtual void Observe(const PagedKv& kv, int64_t b, int64_t h, int64_t length,
                       const float* q, int64_t n, const int64_t* lims,
                       AttentionStats* stats) = 0;

  // Output rows of (b, h) for query rows q (n x dim), row r seeing keys
  // [0, lims[r]) of the sequence's `length` stored ones; out is n x dim_v.
  // May update the head's calibration (re-chosen when due).
  virtual void Attend(const PagedKv& kv, int64_t b, int64_t h, int64_t length,
                      const float* q, int64_t n, const int64_t* lims,
                      float* out, AttentionStats* stats) = 0;

  virtual IncrementalCounters counters() const = 0;
};

}  // namespace session
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_SESSION_INCREMENTAL_H_
