// tests/testutil/health.h — the grpc.health.v1 probe of the tests: one
// Health/Check of the whole server over a channel, through the client
// library's hand-encoded check (client/cpp/health.h: Debian ships no C++
// stubs for health.proto), so the probe is written once.
//
// Part of sb_testutil_grpc: tests that use it link gRPC.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_HEALTH_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_HEALTH_H_

#include <memory>
#include <ostream>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/cpp/health.h"
#include "grpcpp/channel.h"

namespace scatterbrain {
namespace testutil {

using ServingStatus = ::scatterbrain::client::ServingStatus;

// grpc.health.v1.Health/Check for the whole server (service "") over
// `channel`, with a `timeout` deadline: the serving status, or the RPC's
// error as an absl::Status with the same code.
absl::StatusOr<ServingStatus> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel,
    absl::Duration timeout = absl::Seconds(5));

}  // namespace testutil

namespace client {
// "SERVING", ... in test failure messages.
inline std::ostream& operator<<(std::ostream& os, ServingStatus status) {
  return os << ServingStatusName(status);
}
}  // namespace client
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_HEALTH_H_
