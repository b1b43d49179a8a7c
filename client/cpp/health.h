// scatterbrain/client/cpp/health.h — grpc.health.v1 Check without generated
// stubs.
//
// Debian ships no C++ stubs for health.proto; its two messages are one
// field each, so health.cc encodes the request and decodes the response by
// hand and sends them through gRPC's generic stub (RawUnaryCall).
#ifndef SCATTERBRAIN_CLIENT_CPP_HEALTH_H_
#define SCATTERBRAIN_CLIENT_CPP_HEALTH_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace scatterbrain {
namespace client {

enum class ServingStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
// "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN", "UNKNOWN".
const char* ServingStatusName(ServingStatus s);

namespace internal {

// One Check of `service` ("" = the whole server) on `channel`, within
// `deadline` (infinite = none). Errors are the call's status.
absl::StatusOr<ServingStatus> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
    absl::Duration deadline);

// One unary call of `method` ("/package.Service/Method") with an encoded
// request, through the generic stub: the encoded response, or the call's
// status. Also fits a streaming method asked one question (the server
// answers once and ends when the request side closes): the tests' probe of
// grpc.reflection goes through here.
absl::StatusOr<std::string> RawUnaryCall(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
    const std::string& request, absl::Duration deadline);

}  // namespace internal
}  // namespace client
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CPP_HEALTH_H_
