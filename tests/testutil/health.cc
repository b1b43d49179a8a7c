// tests/testutil/health.cc — see health.h.
#include "tests/testutil/health.h"

namespace scatterbrain {
namespace testutil {

absl::StatusOr<ServingStatus> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel, absl::Duration timeout) {
  return client::internal::CheckHealth(channel, "", timeout);
}

}  // namespace testutil
}  // namespace scatterbrain
