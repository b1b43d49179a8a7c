// scatterbrain/client/cpp/credentials.h — the channel's security from
// ClientOptions: TLS credentials from PEM files (a CA bundle, a client
// certificate for mutual TLS) and the bearer token every call carries.
//
// The token travels as call metadata added by a channel interceptor, not
// as gRPC call credentials: those are withheld on a plaintext channel, and
// a server behind a TLS-terminating proxy (or a test on loopback) still
// checks tokens.
#ifndef SCATTERBRAIN_CLIENT_CPP_CREDENTIALS_H_
#define SCATTERBRAIN_CLIENT_CPP_CREDENTIALS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/cpp/options.h"

namespace grpc {
class ChannelCredentials;
namespace experimental {
class ClientInterceptorFactoryInterface;
}  // namespace experimental
}  // namespace grpc

namespace scatterbrain {
namespace client {

// The security options' errors without building a channel (what Create
// would refuse): INVALID_ARGUMENT naming the option. Reads the files.
absl::Status CheckSecurityOptions(const ClientOptions& options);

namespace internal {

// What CreateChannel needs from the security options, files read.
struct ChannelSecurity {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // The value of the `authorization` metadata ("Bearer <token>"); "" =
  // none.
  std::string authorization;
};

// INVALID_ARGUMENT naming the option for a file that cannot be read or
// holds no PEM block / token, a certificate without its key, a malformed
// token, tokens given twice, credentials together with tls_* fields.
absl::StatusOr<ChannelSecurity> MakeChannelSecurity(
    const ClientOptions& options);

// Interceptors adding `authorization: <value>` to every call's metadata
// (none for an empty value).
std::vector<
    std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
AuthorizationInterceptors(const std::string& authorization);

}  // namespace internal
}  // namespace client
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CPP_CREDENTIALS_H_
