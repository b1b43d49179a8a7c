// scatterbrain/server/auth.h — who may call the AttentionService: bearer
// tokens from a file, checked at the start of every Attend, AttendUnary
// and GetServerInfo call (health and reflection are not this service and
// are not checked), and the caller's identity for per-caller accounting.
//
// Tokens are kept as SHA-256 digests and a presented token is compared,
// digest to digest, with every one of them in constant time, so neither
// the time a refusal takes nor the memory of the server gives a token
// away; refusals never echo what was sent. The file is re-read when it
// changes (checked on the first call after the reload interval) or on
// Reload() (SIGHUP); a file that has become unreadable or empty keeps the
// tokens already loaded, so a botched rotation does not lock everyone out.
#ifndef SCATTERBRAIN_SERVER_AUTH_H_
#define SCATTERBRAIN_SERVER_AUTH_H_

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/metrics.h"

namespace grpc {
class ServerContextBase;
}  // namespace grpc

namespace scatterbrain {
namespace server {

class Authenticator {
 public:
  using Digest = std::array<uint8_t, 32>;  // SHA-256

  // `token_file` "" = no tokens: every call is let in. Otherwise the file
  // must hold at least one token (errors name "auth_token_file").
  // Refusals are counted in `metrics` (may be null; must outlive this).
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(
      const std::string& token_file, absl::Duration reload_interval,
      Metrics* metrics);

  // OK, or UNAUTHENTICATED saying what is wrong: no `authorization`
  // metadata, not "Bearer <token>", or a token this server does not accept.
  absl::Status Authenticate(const grpc::ServerContextBase& ctx);

  // A stable name for the caller of an authenticated call: "token:<first
  // 16 hex digits of the token's SHA-256>" when tokens are on, else
  // "x509:<subject>" of a verified client certificate (mutual TLS), else
  // "anonymous".
  std::string Identity(const grpc::ServerContextBase& ctx) const;

  // Re-reads the token file now (SIGHUP). On error the loaded tokens stay
  // and the error says why. OK and no effect when tokens are off.
  absl::Status Reload();

  bool enabled() const { return !token_file_.empty(); }
  // Tokens loaded (duplicates counted once).
  int token_count() const;

 private:
  // What identifies one version of the file: a rotation by rename (or a
  // Kubernetes secret's symlink swap) changes the inode, an edit in place
  // the size or mtime.
  struct FileStamp {
    dev_t device = 0;
    ino_t inode = 0;
    off_t size = -1;
    timespec mtime = {};
    bool operator==(const FileStamp& o) const;
  };
  static FileStamp StampOf(const std::string& path);

  Authenticator(std::string token_file, absl::Duration reload_interval,
                Metrics* metrics);
  // Reloads when the file changed and the interval has passed since the
  // last look; never blocks a call behind another one doing it.
  void MaybeReload();
  // Reads and installs the file's tokens; the loaded ones stay on error.
  absl::Status Load() ABSL_EXCLUSIVE_LOCKS_REQUIRED(reload_mu_);
  // Whether `token` is one of the loaded tokens (constant time in its
  // content).
  bool Accepts(absl::string_view token) const;
  absl::Status Refuse(AuthRefusal reason, absl::string_view why);

  const std::string token_file_;
  const absl::Duration reload_interval_;
  Metrics* const metrics_;

  // Held by the one caller that looks at the file; others skip the look.
  absl::Mutex reload_mu_;
  FileStamp stamp_ ABSL_GUARDED_BY(reload_mu_);
  absl::Time next_check_ ABSL_GUARDED_BY(reload_mu_);

  mutable absl::Mutex mu_;
  std::vector<Digest> digests_ ABSL_GUARDED_BY(mu_);
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_AUTH_H_
