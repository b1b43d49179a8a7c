// scatterbrain/proto/convert/session.h — the one mapping between the wire's
// session messages (CreateSessionRequest, SessionInfo) and the core's
// SessionConfig and SessionInfo (kernels/session/kv_session.h), shared by
// the server and the clients. Per-request session fields (RequestHeader's
// SessionAttend) are read with the rest of the header, in
// server/proto_convert.
#ifndef SCATTERBRAIN_PROTO_CONVERT_SESSION_H_
#define SCATTERBRAIN_PROTO_CONVERT_SESSION_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/session/kv_session.h"
#include "scatterbrain/v1/attention.pb.h"

namespace scatterbrain {
namespace wire {

// `r`'s method, settings, shape (batch and heads 0 = 1, dim_v 0 = dim) and
// storage dtype into `config` (block_tokens and max_tokens are the
// server's, left alone), its TTL into `ttl_s` (0: the server's default).
// INVALID_ARGUMENT naming the field: "settings.method: ...", "kv_dtype:
// ...". Sizes and settings are checked by ValidateSessionConfig (whose
// errors CreateSessionPath names).
absl::Status SessionConfigFromProto(const v1::CreateSessionRequest& r,
                                    SessionConfig* config, double* ttl_s);
// The request that makes a session of `config` (the clients' side):
// settings written explicitly, as SettingsFromParams does.
absl::StatusOr<v1::CreateSessionRequest> SessionConfigToProto(
    const SessionConfig& config, double ttl_s);

// A core error about a session's config ("dim: ...", "num_features: ...")
// with its CreateSessionRequest path ("dim: ...", "settings.num_features:
// ...").
absl::Status CreateSessionPath(const absl::Status& st);

// What a session's limits are, as SessionInfo.limits reports them.
struct SessionLimitsView {
  int64_t max_tokens = 0;
  int64_t max_bytes = 0;
  double ttl_seconds = 0;
  int64_t block_tokens = 0;
};

// SessionInfo of session `id`: its counters, config and limits.
void SessionInfoToProto(const std::string& id, const SessionInfo& info,
                        const SessionConfig& config,
                        const SessionLimitsView& limits, double idle_seconds,
                        v1::SessionInfo* out);

}  // namespace wire
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_PROTO_CONVERT_SESSION_H_
