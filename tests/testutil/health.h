// tests/testutil/health.h — the grpc.health.v1 probe of the tests: one
// Health/Check call over a channel, through gRPC's generic stub (Debian
// ships no C++ stubs for health.proto; the request is empty and the
// response is one varint field, so both are handled as bytes). The client
// library has its own Health() (product code); this one is the tests'
// independent view of the wire.
//
// Part of sb_testutil_grpc: tests that use it link gRPC.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_HEALTH_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_HEALTH_H_

#include <memory>
#include <ostream>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"

namespace scatterbrain {
namespace testutil {

// grpc.health.v1.HealthCheckResponse.ServingStatus, same numbers.
enum class ServingStatus {
  kUnknown = 0,
  kServing = 1,
  kNotServing = 2,
  kServiceUnknown = 3,
};

// "UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN", else the number.
std::ostream& operator<<(std::ostream& os, ServingStatus status);

// grpc.health.v1.Health/Check for the whole server (service "") over
// `channel`, with a `timeout` deadline. The serving status (an empty
// response is UNKNOWN, the proto3 default), the RPC's error as an
// absl::Status with the same code, or kInternal for a response that is not
// one status field.
absl::StatusOr<ServingStatus> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel,
    absl::Duration timeout = absl::Seconds(5));

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_HEALTH_H_
