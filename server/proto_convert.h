// scatterbrain/server/proto_convert.h — the server's proto boundary: a
// RequestHeader becomes a RequestSpec (errors named by their proto field
// path), a computed request becomes a ResponseHeader, an absl::Status a
// grpc::Status. With the service, the only server code that includes
// generated headers; the settings, dtype, shape and stats mappings
// themselves are proto/convert's, shared with the clients.
#ifndef SCATTERBRAIN_SERVER_PROTO_CONVERT_H_
#define SCATTERBRAIN_SERVER_PROTO_CONVERT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/session/kv_session.h"
#include "proto/convert/settings.h"
#include "proto/convert/wire.h"
#include "scatterbrain/v1/attention.pb.h"
#include "server/request.h"

namespace scatterbrain {
namespace server {

// Checks `header` and builds the spec. INVALID_ARGUMENT naming the field
// ("header.shape.dim: ...", "header.settings.num_features: ...") for
// malformed input, then RESOURCE_EXHAUSTED for what is well-formed but over
// a limit. `require_id`: the stream needs a request id (1 to 128 bytes); the
// unary call does not (an id, if given, must still be <= 128 bytes).
// `defaults`: the server's choice for settings left unset (a Scatterbrain
// request's sparse).
absl::StatusOr<RequestSpec> SpecFromHeader(
    const v1::RequestHeader& header, const RequestLimits& limits,
    bool require_id, const RequestDefaults& defaults = RequestDefaults());

// The settings of a one-shot request as the server computes them:
// wire::SettingsToParams, with `defaults` for what the request leaves to
// the server (an unset sparse of a Scatterbrain request). Tests use it to
// compute what the server must answer.
absl::Status RequestSettingsToParams(const v1::MethodSettings& s,
                                     const RequestDefaults& defaults,
                                     absl::string_view path,
                                     AttentionParams* p);

// A header with `session` set (a request on a server-held session), in two
// steps around the session's lookup. First what needs no session:
// request_id, settings unset, dtypes, key_lengths empty, shape.seq_k 0,
// session.session_id set (INVALID_ARGUMENT naming the field).
absl::Status CheckSessionHeader(const v1::RequestHeader& header,
                                bool require_id);
// Then the spec on `session`: shape.batch, heads, dim and dim_v 0 or the
// session's, seq_q >= 1, the server's limits (the flops are the session's
// estimate). Errors named by field path as SpecFromHeader's.
absl::StatusOr<RequestSpec> SessionSpecFromHeader(
    const v1::RequestHeader& header, const KvSession& session,
    const RequestLimits& limits);

// The response header of a computed request: its shape, output dtype and
// stats.
void FillResponseHeader(const RequestSpec& spec, const RequestStats& stats,
                        v1::ResponseHeader* out);

// "TENSOR_NAME_Q", or the number for values the proto does not define.
std::string TensorLabel(v1::TensorName tensor);

using wire::MethodLabel;
using wire::ToGrpcStatus;

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_PROTO_CONVERT_H_
