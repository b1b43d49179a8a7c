// scatterbrain/client/cpp/credentials.cc — see credentials.h.
#include "client/cpp/credentials.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/support/client_interceptor.h>
#include <grpcpp/support/interceptor.h>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/credential_files.h"

namespace scatterbrain {
namespace client {
namespace internal {
namespace {

namespace gx = ::grpc::experimental;

absl::Status Bad(absl::string_view option, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(option, ": ", what));
}

// The PEM text of an option's file; "" when the option is empty. `block`
// is the end of the PEM label the file must hold ("CERTIFICATE-----",
// "PRIVATE KEY-----"): a swapped or truncated file fails here, named,
// rather than as a handshake error later.
absl::StatusOr<std::string> ReadPem(absl::string_view option,
                                    const std::string& path,
                                    absl::string_view block) {
  if (path.empty()) return std::string();
  absl::StatusOr<std::string> text = ReadCredentialFile(path);
  if (!text.ok()) return Bad(option, text.status().message());
  if (!absl::StrContains(*text, absl::StrCat(" ", block)) ||
      !absl::StrContains(*text, "-----BEGIN ")) {
    return Bad(option, absl::StrCat("'", path, "' holds no PEM ",
                                    block.substr(0, block.size() - 5)));
  }
  return text;
}

// Adds the authorization metadata before each call's headers go out.
class AuthorizationInterceptor final : public gx::Interceptor {
 public:
  explicit AuthorizationInterceptor(const std::string* value) : value_(value) {}
  void Intercept(gx::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            gx::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("authorization", *value_);
    }
    methods->Proceed();
  }

 private:
  const std::string* value_;  // the factory's, which the channel keeps
};

class AuthorizationFactory final
    : public gx::ClientInterceptorFactoryInterface {
 public:
  explicit AuthorizationFactory(std::string value) : value_(std::move(value)) {}
  gx::Interceptor* CreateClientInterceptor(
      gx::ClientRpcInfo* /*info*/) override {
    return new AuthorizationInterceptor(&value_);
  }

 private:
  const std::string value_;
};

}  // namespace

absl::StatusOr<ChannelSecurity> MakeChannelSecurity(const ClientOptions& o) {
  ChannelSecurity out;
  if (!o.auth_token.empty() && !o.auth_token_file.empty()) {
    return Bad("auth_token_file", "set together with auth_token (one of them)");
  }
  if (!o.auth_token.empty()) {
    absl::StatusOr<std::vector<std::string>> t = ParseTokens(o.auth_token);
    if (!t.ok() || t->size() != 1) {
      return Bad("auth_token",
                 "must be one word of visible ASCII characters (no spaces)");
    }
    out.authorization = absl::StrCat("Bearer ", t->front());
  } else if (!o.auth_token_file.empty()) {
    absl::StatusOr<std::vector<std::string>> t =
        ReadTokenFile(o.auth_token_file);
    if (!t.ok()) return Bad("auth_token_file", t.status().message());
    out.authorization = absl::StrCat("Bearer ", t->front());
  }

  const bool tls = o.use_tls || !o.tls_ca_file.empty() ||
                   !o.tls_cert_file.empty() || !o.tls_key_file.empty() ||
                   !o.tls_server_name.empty();
  if (o.credentials != nullptr) {
    if (tls) {
      return Bad("credentials", "set together with use_tls / tls_* options");
    }
    out.credentials = o.credentials;
    return out;
  }
  if (!tls) {
    out.credentials = grpc::InsecureChannelCredentials();
    return out;
  }
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return o.tls_cert_file.empty()
               ? Bad("tls_key_file", "set without tls_cert_file")
               : Bad("tls_cert_file", "set without tls_key_file");
  }
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> pem =
      ReadPem("tls_ca_file", o.tls_ca_file, "CERTIFICATE-----");
  if (!pem.ok()) return pem.status();
  ssl.pem_root_certs = *std::move(pem);
  pem = ReadPem("tls_cert_file", o.tls_cert_file, "CERTIFICATE-----");
  if (!pem.ok()) return pem.status();
  ssl.pem_cert_chain = *std::move(pem);
  pem = ReadPem("tls_key_file", o.tls_key_file, "PRIVATE KEY-----");
  if (!pem.ok()) return pem.status();
  ssl.pem_private_key = *std::move(pem);
  out.credentials = grpc::SslCredentials(ssl);
  if (out.credentials == nullptr) {
    return absl::InvalidArgumentError("tls: gRPC refused the TLS options");
  }
  return out;
}

std::vector<std::unique_ptr<gx::ClientInterceptorFactoryInterface>>
AuthorizationInterceptors(const std::string& authorization) {
  std::vector<std::unique_ptr<gx::ClientInterceptorFactoryInterface>> v;
  if (!authorization.empty()) {
    v.push_back(std::make_unique<AuthorizationFactory>(authorization));
  }
  return v;
}

}  // namespace internal

absl::Status CheckSecurityOptions(const ClientOptions& options) {
  return internal::MakeChannelSecurity(options).status();
}

}  // namespace client
}  // namespace scatterbrain
