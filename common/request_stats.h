// scatterbrain/common/request_stats.h — what one request cost and got, as
// the server measures it and the client reads it back (the wire's Stats
// message maps onto this struct in proto/convert/wire.h, both ways).
#ifndef SCATTERBRAIN_COMMON_REQUEST_STATS_H_
#define SCATTERBRAIN_COMMON_REQUEST_STATS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/params.h"  // HeadPlan (a plain struct: nothing to link)

namespace scatterbrain {

struct RequestStats {
  double queue_seconds = 0;        // waiting for a batch to close
  double compute_seconds = 0;      // the batch's computation
  int batch_size = 0;              // requests in the batch it ran in
  int64_t dense_score_bytes = 0;   // a dense fp32 score matrix would take
  int64_t workspace_bytes = 0;     // scratch the computation held
  int64_t memory_saved_bytes = 0;  // dense_score_bytes - workspace_bytes
  // ||O_hat - O|| / ||O|| on sampled rows; absent when not sampled.
  std::optional<double> estimated_relative_error;
  int64_t denominator_guards = 0;
  int64_t fallbacks = 0;
  std::string backend;
  // Requests on a session: its lengths after the request (per sequence),
  // and whether it ran on the incremental state.
  std::vector<int64_t> session_lengths;
  bool incremental = false;
  // Scatterbrain's per (batch, head) choices (sparse=auto, global_keys,
  // target_error; empty otherwise) and, with target_error, the request's
  // estimated error bound (AttentionStats: kernels/params.h).
  std::vector<HeadPlan> head_plans;
  std::optional<double> error_bound;
  // Query-key evaluations spent, and what exact attention would spend; 0
  // when the backend does not count them.
  int64_t score_evaluations = 0;
  int64_t exact_score_evaluations = 0;
};

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_COMMON_REQUEST_STATS_H_
