// scatterbrain/server/security.cc — see security.h.
#include "server/security.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/credential_files.h"
#include "common/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/impl/server_builder_option.h"
#include "grpcpp/impl/server_builder_plugin.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace scatterbrain {
namespace server {
namespace {

absl::Status Bad(absl::string_view option, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(option, ": ", what));
}

// OpenSSL objects freed on scope exit.
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Cert = std::unique_ptr<X509, X509Free>;
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

Bio MemoryBio(const std::string& pem) {
  return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// The file's text, or an error naming the option and the path.
absl::StatusOr<std::string> ReadOption(absl::string_view option,
                                       const std::string& path) {
  absl::StatusOr<std::string> text = ReadCredentialFile(path);
  if (!text.ok()) return Bad(option, text.status().message());
  return text;
}

// The first certificate of a PEM text; null when there is none.
Cert FirstCertificate(const std::string& pem) {
  Bio bio = MemoryBio(pem);
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();  // errors are reported by the caller, in its words
  return cert;
}

// The server's certificate and key: both parse, and the key is the one
// the certificate was issued for (a mismatch would only show as failing
// handshakes, with nothing in the server's log).
absl::Status CheckIdentity(const SecurityOptions& o) {
  SB_ASSIGN_OR_RETURN(const std::string cert_pem,
                      ReadOption("tls_cert_file", o.tls_cert_file));
  SB_ASSIGN_OR_RETURN(const std::string key_pem,
                      ReadOption("tls_key_file", o.tls_key_file));
  const Cert cert = FirstCertificate(cert_pem);
  if (cert == nullptr) {
    return Bad("tls_cert_file", absl::StrCat("'", o.tls_cert_file,
                                             "' holds no PEM certificate"));
  }
  Bio bio = MemoryBio(key_pem);
  const Pkey key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr,
                                         const_cast<char*>("")));
  ERR_clear_error();
  if (key == nullptr) {
    return Bad("tls_key_file",
               absl::StrCat("'", o.tls_key_file,
                            "' holds no unencrypted PEM private key"));
  }
  const bool match = X509_check_private_key(cert.get(), key.get()) == 1;
  ERR_clear_error();
  if (!match) {
    return Bad("tls_key_file",
               absl::StrCat("'", o.tls_key_file,
                            "' is not the key of the certificate in '",
                            o.tls_cert_file, "'"));
  }
  return absl::OkStatus();
}

// Drops the reflection plugin that InitProtoReflectionServerBuilderPlugin
// put in every ServerBuilder of the process.
class RemoveReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>*
                         plugins) override {
    plugins->erase(
        std::remove_if(
            plugins->begin(), plugins->end(),
            [](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
              return dynamic_cast<
                         grpc::reflection::ProtoServerReflectionPlugin*>(
                         p.get()) != nullptr;
            }),
        plugins->end());
  }
};

}  // namespace

const char* ReflectionModeName(ReflectionMode mode) {
  switch (mode) {
    case ReflectionMode::kOn:
      return "on";
    case ReflectionMode::kOff:
      return "off";
    case ReflectionMode::kAuto:
      break;
  }
  return "auto";
}

bool ParseReflectionMode(const std::string& text, ReflectionMode* mode) {
  const std::string t = absl::AsciiStrToLower(text);
  if (t == "auto") {
    *mode = ReflectionMode::kAuto;
  } else if (t == "on" || t == "true" || t == "1") {
    *mode = ReflectionMode::kOn;
  } else if (t == "off" || t == "false" || t == "0") {
    *mode = ReflectionMode::kOff;
  } else {
    return false;
  }
  return true;
}

bool SecurityOptions::reflection_enabled() const {
  switch (reflection) {
    case ReflectionMode::kOn:
      return true;
    case ReflectionMode::kOff:
      return false;
    case ReflectionMode::kAuto:
      break;
  }
  return !tls() && !tokens();
}

absl::Status ValidateSecurityOptions(const SecurityOptions& o) {
  if (o.reload_interval_s < 1 || o.reload_interval_s > 86400) {
    return Bad(
        "security_reload_interval_s",
        absl::StrCat("must be in [1, 86400], got ", o.reload_interval_s));
  }
  if (!o.tls_key_file.empty() && o.tls_cert_file.empty()) {
    return Bad("tls_key_file", "set without tls_cert_file");
  }
  if (!o.tls_cert_file.empty() && o.tls_key_file.empty()) {
    return Bad("tls_cert_file", "set without tls_key_file");
  }
  if (o.mutual_tls() && !o.tls()) {
    return Bad("tls_client_ca_file",
               "set without tls_cert_file and tls_key_file (mutual TLS is "
               "TLS with client certificates)");
  }
  if (o.tls()) SB_RETURN_IF_ERROR(CheckIdentity(o));
  if (o.mutual_tls()) {
    SB_ASSIGN_OR_RETURN(const std::string ca_pem,
                        ReadOption("tls_client_ca_file", o.tls_client_ca_file));
    if (FirstCertificate(ca_pem) == nullptr) {
      return Bad("tls_client_ca_file",
                 absl::StrCat("'", o.tls_client_ca_file,
                              "' holds no PEM certificate"));
    }
  }
  if (o.tokens()) {
    absl::StatusOr<std::vector<std::string>> tokens =
        ReadTokenFile(o.auth_token_file);
    if (!tokens.ok()) return Bad("auth_token_file", tokens.status().message());
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const SecurityOptions& o) {
  if (!o.tls()) return grpc::InsecureServerCredentials();
  namespace gx = grpc::experimental;
  const unsigned interval = static_cast<unsigned>(o.reload_interval_s);
  // One provider for the identity and, with mutual TLS, the client CA:
  // all three files are watched and re-read together.
  std::shared_ptr<gx::CertificateProviderInterface> provider =
      o.mutual_tls()
          ? std::make_shared<gx::FileWatcherCertificateProvider>(
                o.tls_key_file, o.tls_cert_file, o.tls_client_ca_file, interval)
          : std::make_shared<gx::FileWatcherCertificateProvider>(
                o.tls_key_file, o.tls_cert_file, interval);
  gx::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (o.mutual_tls()) {
    options.watch_root_certs();
    options.set_cert_request_type(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

std::unique_ptr<grpc::ServerBuilderOption> WithoutReflection() {
  return std::make_unique<RemoveReflection>();
}

std::string DescribeSecurity(const SecurityOptions& o) {
  std::string s = o.tls() ? "TLS" : "plaintext (no TLS)";
  if (o.mutual_tls()) {
    absl::StrAppend(&s, " with client certificates (mutual TLS, CA ",
                    o.tls_client_ca_file, ")");
  }
  absl::StrAppend(&s, ", ",
                  o.tokens()
                      ? absl::StrCat("bearer tokens from ", o.auth_token_file)
                      : std::string("no tokens"),
                  ", reflection ", o.reflection_enabled() ? "on" : "off");
  return s;
}

}  // namespace server
}  // namespace scatterbrain
