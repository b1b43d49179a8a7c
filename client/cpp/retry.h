// scatterbrain/client/cpp/retry.h — the retry policy shared by every call of
// the client: which failures are tried again, how long to wait between
// tries, and the deadline each try gets.
//
// One policy for AttentionClient::AttendUnary (a loop around the call) and
// AttendStream (whose retry thread resubmits unanswered requests), so the
// two never disagree on what is retried (ClientOptions.max_attempts).
#ifndef SCATTERBRAIN_CLIENT_CPP_RETRY_H_
#define SCATTERBRAIN_CLIENT_CPP_RETRY_H_

#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cpp/options.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace scatterbrain {
namespace client {

// The wait before retry number `retry` (1 = the first retry):
// initial * 2^(retry-1), capped at max, times a random factor in [0.8, 1.2].
absl::Duration RetryBackoff(const ClientOptions& options, int retry);

namespace internal {

// Whether a request whose try failed with `status`, after `attempts` tries
// in all, its first failure at `first_failure`, is tried again, and after
// what wait (RetryBackoff); nullopt: it is not. Retried: UNAVAILABLE, and
// CANCELLED (callers pass no cancellation of their own: those are never
// retried), while the retry would start within options.retry_budget of
// `first_failure` and, when options.max_attempts > 0, fewer tries were made.
std::optional<absl::Duration> RetryDelay(const ClientOptions& options,
                                         const absl::Status& status,
                                         int attempts,
                                         absl::Time first_failure);

// Sets the deadline of one try (each try has its own); none when infinite.
void SetDeadline(grpc::ClientContext* ctx, absl::Duration deadline);

// Calls `attempt` (absl::StatusOr<T>(bool* final)) until it succeeds or
// fails for good, sleeping RetryDelay between tries: the unary calls'
// loop. A try sets *final when its failure must not be retried (it may
// have changed the server's state: a session's append).
template <typename T, typename Attempt>
absl::StatusOr<T> CallWithRetries(const ClientOptions& options,
                                  Attempt attempt) {
  absl::Time first_failure;
  for (int tries = 1;; ++tries) {
    bool final = false;
    absl::StatusOr<T> r = attempt(&final);
    if (r.ok() || final) return r;
    if (tries == 1) first_failure = absl::Now();
    const std::optional<absl::Duration> wait =
        RetryDelay(options, r.status(), tries, first_failure);
    if (!wait.has_value()) return r;
    absl::SleepFor(*wait);
  }
}

}  // namespace internal
}  // namespace client
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CPP_RETRY_H_
