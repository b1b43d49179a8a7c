// scatterbrain/client/cpp/retry.h — the retry policy shared by every call of
// the client: which failures are tried again, how long to wait between
// tries, and the deadline each try gets.
//
// One policy for AttentionClient::AttendUnary (a loop around the call) and
// AttendStream (whose retry thread resubmits unanswered requests), so the
// two never disagree on what is retried (ClientOptions.max_attempts).
#ifndef SCATTERBRAIN_CLIENT_CPP_RETRY_H_
#define SCATTERBRAIN_CLIENT_CPP_RETRY_H_

#include "absl/status/status.h"
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

// Whether a try that failed with `status`, after `attempts` tries in all,
// is tried again: UNAVAILABLE only (the computation is deterministic and
// side-effect free), and fewer than options.max_attempts tries so far.
bool ShouldRetry(const ClientOptions& options, const absl::Status& status,
                 int attempts);

// Sets the deadline of one try (each try has its own); none when infinite.
void SetDeadline(grpc::ClientContext* ctx, absl::Duration deadline);

}  // namespace internal
}  // namespace client
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CPP_RETRY_H_
