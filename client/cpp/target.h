// scatterbrain/client/cpp/target.h — where calls go: ClientOptions.target
// resolved to a gRPC target URI, and the channel built on it (message size
// limits, the load-balancing policy, its own connection when asked).
//
// Apart from the rest of the client because it is pure string work on the
// options (the CLI checks --server with it before connecting) plus the one
// place a channel's arguments are set.
#ifndef SCATTERBRAIN_CLIENT_CPP_TARGET_H_
#define SCATTERBRAIN_CLIENT_CPP_TARGET_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client/cpp/options.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace scatterbrain {
namespace client {

// The gRPC target and load-balancing policy ClientOptions resolve to.
struct ResolvedTarget {
  std::string uri;
  std::string lb_policy;  // "" = the client's default (round_robin)
};
absl::StatusOr<ResolvedTarget> ResolveTarget(const ClientOptions& options);

namespace internal {

// A channel to options.target: round_robin unless options name another
// policy (also for a dns:/// name with several addresses, where gRPC's own
// default, pick_first, would use one of them), max_message_bytes both ways,
// a local subchannel pool with own_connection, the credentials and token
// of credentials.h. INVALID_ARGUMENT for a malformed target or security
// option.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(
    const ClientOptions& options);

}  // namespace internal
}  // namespace client
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CPP_TARGET_H_
