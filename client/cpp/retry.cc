// scatterbrain/client/cpp/retry.cc — see retry.h.
#include "client/cpp/retry.h"

#include <grpcpp/client_context.h>

#include <algorithm>
#include <random>

#include "absl/time/clock.h"

namespace scatterbrain {
namespace client {

absl::Duration RetryBackoff(const ClientOptions& options, int retry) {
  absl::Duration d = options.initial_backoff;
  for (int i = 1; i < retry && d < options.max_backoff; ++i) d *= 2;
  d = std::min(d, options.max_backoff);
  thread_local std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<double> jitter(0.8, 1.2);
  return d * jitter(rng);
}

namespace internal {

std::optional<absl::Duration> RetryDelay(const ClientOptions& options,
                                         const absl::Status& status,
                                         int attempts,
                                         absl::Time first_failure) {
  if (!absl::IsUnavailable(status) && !absl::IsCancelled(status)) {
    return std::nullopt;
  }
  if (options.max_attempts > 0 && attempts >= options.max_attempts) {
    return std::nullopt;
  }
  const absl::Duration wait = RetryBackoff(options, attempts);
  if (absl::Now() + wait - first_failure > options.retry_budget) {
    return std::nullopt;
  }
  return wait;
}

void SetDeadline(grpc::ClientContext* ctx, absl::Duration deadline) {
  if (deadline != absl::InfiniteDuration()) {
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  }
}

}  // namespace internal
}  // namespace client
}  // namespace scatterbrain
