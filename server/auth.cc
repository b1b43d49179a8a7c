// scatterbrain/server/auth.cc — see auth.h.
#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/credential_files.h"
#include "grpc/grpc_security_constants.h"
#include "grpcpp/security/auth_context.h"
#include "grpcpp/server_context.h"

namespace scatterbrain {
namespace server {
namespace {

constexpr absl::string_view kAuthorization = "authorization";

Authenticator::Digest Sha256(absl::string_view s) {
  Authenticator::Digest d;
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d.data());
  return d;
}

enum class Presented { kMissing, kMalformed, kToken };

// The token of the call's `authorization: Bearer <token>` metadata. The
// scheme is case-insensitive (RFC 6750 / 7235); exactly one such entry.
Presented BearerToken(const grpc::ServerContextBase& ctx,
                      absl::string_view* token) {
  const auto& md = ctx.client_metadata();
  const auto range = md.equal_range(
      grpc::string_ref(kAuthorization.data(), kAuthorization.size()));
  if (range.first == range.second) return Presented::kMissing;
  if (std::next(range.first) != range.second) return Presented::kMalformed;
  absl::string_view value(range.first->second.data(),
                          range.first->second.size());
  constexpr absl::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return Presented::kMalformed;
  }
  value = absl::StripAsciiWhitespace(value.substr(kScheme.size()));
  if (value.empty()) return Presented::kMalformed;
  *token = value;
  return Presented::kToken;
}

}  // namespace

bool Authenticator::FileStamp::operator==(const FileStamp& o) const {
  return device == o.device && inode == o.inode && size == o.size &&
         mtime.tv_sec == o.mtime.tv_sec && mtime.tv_nsec == o.mtime.tv_nsec;
}

Authenticator::FileStamp Authenticator::StampOf(const std::string& path) {
  FileStamp stamp;  // a file that cannot be stat'ed: all zero
  struct stat st;
  if (stat(path.c_str(), &st) == 0) {
    stamp.device = st.st_dev;
    stamp.inode = st.st_ino;
    stamp.size = st.st_size;
    stamp.mtime = st.st_mtim;
  }
  return stamp;
}

Authenticator::Authenticator(std::string token_file,
                             absl::Duration reload_interval, Metrics* metrics)
    : token_file_(std::move(token_file)),
      reload_interval_(reload_interval),
      metrics_(metrics) {}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(
    const std::string& token_file, absl::Duration reload_interval,
    Metrics* metrics) {
  std::unique_ptr<Authenticator> a(
      new Authenticator(token_file, reload_interval, metrics));
  if (a->enabled()) {
    absl::MutexLock lock(&a->reload_mu_);
    absl::Status st = a->Load();
    if (!st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("auth_token_file: ", st.message()));
    }
  }
  return a;
}

absl::Status Authenticator::Load() {
  const FileStamp stamp = StampOf(token_file_);
  next_check_ = absl::Now() + reload_interval_;
  absl::StatusOr<std::vector<std::string>> tokens = ReadTokenFile(token_file_);
  // The stamp is taken either way: a broken file is not re-read on every
  // call, only once it changes again.
  stamp_ = stamp;
  if (!tokens.ok()) return tokens.status();
  std::vector<Digest> digests;
  digests.reserve(tokens->size());
  for (const std::string& t : *tokens) digests.push_back(Sha256(t));
  std::sort(digests.begin(), digests.end());
  digests.erase(std::unique(digests.begin(), digests.end()), digests.end());
  absl::MutexLock lock(&mu_);
  digests_ = std::move(digests);
  return absl::OkStatus();
}

absl::Status Authenticator::Reload() {
  if (!enabled()) return absl::OkStatus();
  absl::MutexLock lock(&reload_mu_);
  return Load();
}

void Authenticator::MaybeReload() {
  if (!reload_mu_.TryLock()) return;  // another call is looking
  const absl::Time now = absl::Now();
  if (now >= next_check_) {
    next_check_ = now + reload_interval_;
    if (!(StampOf(token_file_) == stamp_)) {
      const absl::Status s = Load();
      if (!s.ok()) {
        std::fprintf(stderr,
                     "scatterbrain_server: auth_token_file changed but "
                     "cannot be used, keeping the tokens loaded before: %s\n",
                     std::string(s.message()).c_str());
      }
    }
  }
  reload_mu_.Unlock();
}

int Authenticator::token_count() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(digests_.size());
}

bool Authenticator::Accepts(absl::string_view token) const {
  const Digest d = Sha256(token);
  absl::ReaderMutexLock lock(&mu_);
  // Every digest is compared, in constant time each, and the results are
  // combined without branching on them.
  int match = 0;
  for (const Digest& known : digests_) {
    match |= CRYPTO_memcmp(known.data(), d.data(), d.size()) == 0;
  }
  return match != 0;
}

absl::Status Authenticator::Refuse(AuthRefusal reason, absl::string_view why) {
  if (metrics_ != nullptr) metrics_->AuthRefused(reason);
  return absl::UnauthenticatedError(why);
}

absl::Status Authenticator::Authenticate(const grpc::ServerContextBase& ctx) {
  if (!enabled()) return absl::OkStatus();
  MaybeReload();
  absl::string_view token;
  switch (BearerToken(ctx, &token)) {
    case Presented::kMissing:
      return Refuse(AuthRefusal::kMissing,
                    "this server requires a bearer token: send metadata "
                    "'authorization: Bearer <token>'");
    case Presented::kMalformed:
      return Refuse(AuthRefusal::kMalformed,
                    "the 'authorization' metadata must be one entry of the "
                    "form 'Bearer <token>'");
    case Presented::kToken:
      break;
  }
  if (!Accepts(token)) {
    return Refuse(AuthRefusal::kInvalid,
                  "the bearer token is not one this server accepts (check "
                  "the client's token against the server's auth_token_file)");
  }
  return absl::OkStatus();
}

std::string Authenticator::Identity(const grpc::ServerContextBase& ctx) const {
  absl::string_view token;
  if (enabled() && BearerToken(ctx, &token) == Presented::kToken) {
    const Digest d = Sha256(token);
    return absl::StrCat("token:",
                        absl::BytesToHexString(absl::string_view(
                            reinterpret_cast<const char*>(d.data()), 8)));
  }
  const std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (auth != nullptr && auth->IsPeerAuthenticated()) {
    const std::vector<grpc::string_ref> subject =
        auth->FindPropertyValues(GRPC_X509_SUBJECT_PROPERTY_NAME);
    if (!subject.empty()) {
      return absl::StrCat(
          "x509:", absl::string_view(subject[0].data(), subject[0].size()));
    }
  }
  return "anonymous";
}

}  // namespace server
}  // namespace scatterbrain
