// scatterbrain/server/security.h — the transport's security: TLS and
// mutual TLS from PEM files (reloaded when they change), the bearer token
// file's name and reload interval (checked by auth.h), and whether the
// server offers gRPC reflection.
//
// Only the wiring lives here (options, their validation, the gRPC server
// credentials, the builder option that drops reflection); the per-call
// check is Authenticator (auth.h), called by the service.
#ifndef SCATTERBRAIN_SERVER_SECURITY_H_
#define SCATTERBRAIN_SERVER_SECURITY_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grpc {
class ServerBuilderOption;
class ServerCredentials;
}  // namespace grpc

namespace scatterbrain {
namespace server {

// Whether the server offers grpc.reflection (the service's schema to any
// caller that can reach it).
enum class ReflectionMode {
  // On only when the server is open anyway: no TLS and no tokens.
  kAuto,
  kOn,
  kOff,
};
// "auto", "on", "off".
const char* ReflectionModeName(ReflectionMode mode);
// Parses those names (also true/false, 1/0); false on anything else.
bool ParseReflectionMode(const std::string& text, ReflectionMode* mode);

struct SecurityOptions {
  // PEM certificate chain and private key the server presents; both set:
  // TLS on the gRPC port, plaintext refused. Default "": plaintext only.
  std::string tls_cert_file;
  std::string tls_key_file;
  // PEM bundle of the CAs clients' certificates must chain to; set (needs
  // TLS): mutual TLS, a connection without a valid client certificate is
  // refused during the handshake. Default "": no client certificates.
  std::string tls_client_ca_file;
  // Bearer tokens, one per line (blank lines and lines starting with '#'
  // ignored); set: every AttentionService call must carry metadata
  // `authorization: Bearer <token>` with one of them (health is exempt).
  // Default "": no tokens.
  std::string auth_token_file;
  // Seconds between checks of the files above for changes: the
  // certificate, key and CA files are re-read by gRPC's file watcher (new
  // connections get the new ones, open ones keep theirs), the token file
  // on the first call after the interval (or at once on SIGHUP). Default
  // 60, in [1, 86400].
  int reload_interval_s = 60;
  // Default auto: on without TLS and tokens, off otherwise.
  ReflectionMode reflection = ReflectionMode::kAuto;

  bool tls() const { return !tls_cert_file.empty(); }
  bool mutual_tls() const { return !tls_client_ca_file.empty(); }
  bool tokens() const { return !auth_token_file.empty(); }
  // The reflection mode with auto resolved.
  bool reflection_enabled() const;
};

// INVALID_ARGUMENT naming the option ("tls_key_file: set without
// tls_cert_file", "tls_cert_file: cannot read '/x': No such file or
// directory", "tls_cert_file: '/x' holds no PEM CERTIFICATE block", ...).
// Reads the files (not the token file's tokens: auth.h parses those).
absl::Status ValidateSecurityOptions(const SecurityOptions& options);

// Insecure credentials, or TLS ones whose certificates come from gRPC's
// FileWatcherCertificateProvider (every reload_interval_s). Call after
// ValidateSecurityOptions: the provider itself does not report unreadable
// files, it refuses handshakes.
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const SecurityOptions& options);

// A builder option that removes the reflection plugin from one
// ServerBuilder: grpc::reflection::InitProtoReflectionServerBuilderPlugin()
// registers it for every builder in the process, so "off" has to be undone
// per server.
std::unique_ptr<grpc::ServerBuilderOption> WithoutReflection();

// One line for the startup log: "TLS (mutual: client CA /x), bearer tokens
// from /y, reflection off" or "plaintext, no tokens, reflection on".
std::string DescribeSecurity(const SecurityOptions& options);

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_SECURITY_H_
