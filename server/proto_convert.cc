// scatterbrain/server/proto_convert.cc — see proto_convert.h.
#include "server/proto_convert.h"

#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace scatterbrain {
namespace server {
namespace {

constexpr size_t kMaxRequestIdBytes = 128;

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

// The core names its fields as ValidateParams does ("dim", "num_features",
// "key_lengths[3]", "shape"); the client knows the proto's paths. The core's
// names are the proto's field names, so the messages' descriptors say which
// message each belongs to.
absl::Status WithProtoPath(const absl::Status& st) {
  const absl::string_view msg = st.message();
  const size_t colon = msg.find(": ");
  if (colon == absl::string_view::npos) {
    return absl::Status(st.code(), absl::StrCat("header: ", msg));
  }
  const absl::string_view field = msg.substr(0, colon);
  const absl::string_view rest = msg.substr(colon + 2);
  const auto with = [&](absl::string_view prefix) {
    return absl::Status(st.code(), absl::StrCat(prefix, field, ": ", rest));
  };
  if (v1::Shape::descriptor()->FindFieldByName(std::string(field)) != nullptr) {
    return with("header.shape.");
  }
  if (wire::IsSettingsField(field)) return with("header.settings.");
  if (absl::StartsWith(field, "key_lengths")) return with("header.");
  if (field == "shape") {
    return absl::Status(st.code(), absl::StrCat("header.shape: ", rest));
  }
  if (field == "q" || field == "k" || field == "out") {
    return absl::Status(st.code(),
                        absl::StrCat("header.shape: ", field, " ", rest));
  }
  return absl::Status(st.code(), absl::StrCat("header: ", msg));
}

// A wire dtype, or the field's error.
absl::Status DTypeField(v1::DType dtype, absl::string_view field,
                        absl::string_view must_be, DType* out) {
  if (wire::DTypeFromProto(dtype, out)) return absl::OkStatus();
  return Invalid(field,
                 absl::StrCat(must_be, ", got ", wire::DTypeProtoName(dtype)));
}

}  // namespace

absl::Status RequestSettingsToParams(const v1::MethodSettings& s,
                                     const RequestDefaults& defaults,
                                     absl::string_view path,
                                     AttentionParams* p) {
  // An unset sparse or global_keys keeps what `p` holds: the server's
  // default.
  if (s.method() == v1::METHOD_SCATTERBRAIN) {
    p->sparse = defaults.sparse;
    p->global_keys = defaults.global_keys;
  }
  return wire::SettingsToParams(s, path, p);
}

absl::StatusOr<RequestSpec> SpecFromHeader(const v1::RequestHeader& header,
                                           const RequestLimits& limits,
                                           bool require_id,
                                           const RequestDefaults& defaults) {
  const std::string& id = header.request_id();
  if ((require_id && id.empty()) || id.size() > kMaxRequestIdBytes) {
    return Invalid("header.request_id",
                   absl::StrCat("must be 1 to ", kMaxRequestIdBytes,
                                " bytes, got ", id.size()));
  }
  AttentionParams p;
  // The method first, then the dtypes, then the other settings: the order
  // in which a header's first error is reported.
  if (Method m; !wire::MethodFromProto(header.settings().method(), &m)) {
    return wire::SettingsToParams(header.settings(), "header.settings", &p);
  }
  DType dtype, output_dtype;
  absl::Status st = DTypeField(
      header.dtype(), "header.dtype",
      "must be DTYPE_FLOAT32, DTYPE_FLOAT16 or DTYPE_BFLOAT16", &dtype);
  if (!st.ok()) return st;
  if (header.output_dtype() == v1::DTYPE_UNSPECIFIED) {
    output_dtype = dtype;
  } else {
    st = DTypeField(header.output_dtype(), "header.output_dtype",
                    "must be unset or DTYPE_FLOAT32, DTYPE_FLOAT16 or "
                    "DTYPE_BFLOAT16",
                    &output_dtype);
    if (!st.ok()) return st;
  }
  st = RequestSettingsToParams(header.settings(), defaults, "header.settings",
                               &p);
  if (!st.ok()) return st;
  SetShape(wire::ShapeFromProto(header.shape()), p);
  std::vector<int32_t> key_lengths(header.key_lengths().begin(),
                                   header.key_lengths().end());
  absl::StatusOr<RequestSpec> spec = MakeRequestSpec(
      id, p, std::move(key_lengths), dtype, output_dtype, limits);
  if (!spec.ok()) return WithProtoPath(spec.status());
  return spec;
}

absl::Status CheckSessionHeader(const v1::RequestHeader& header,
                                bool require_id) {
  const std::string& id = header.request_id();
  if ((require_id && id.empty()) || id.size() > kMaxRequestIdBytes) {
    return Invalid("header.request_id",
                   absl::StrCat("must be 1 to ", kMaxRequestIdBytes,
                                " bytes, got ", id.size()));
  }
  if (header.session().session_id().empty()) {
    return Invalid("header.session.session_id",
                   "must be set (CreateSession's session_id)");
  }
  if (header.has_settings()) {
    return Invalid("header.settings",
                   "must be unset with header.session (the session's "
                   "settings are used)");
  }
  DType dtype;
  absl::Status st = DTypeField(
      header.dtype(), "header.dtype",
      "must be DTYPE_FLOAT32, DTYPE_FLOAT16 or DTYPE_BFLOAT16", &dtype);
  if (!st.ok()) return st;
  if (header.output_dtype() != v1::DTYPE_UNSPECIFIED) {
    st = DTypeField(header.output_dtype(), "header.output_dtype",
                    "must be unset or DTYPE_FLOAT32, DTYPE_FLOAT16 or "
                    "DTYPE_BFLOAT16",
                    &dtype);
    if (!st.ok()) return st;
  }
  if (header.key_lengths_size() > 0) {
    return Invalid("header.key_lengths",
                   "must be empty with header.session (the session's "
                   "lengths are the keys)");
  }
  if (header.shape().seq_k() != 0) {
    return Invalid("header.shape.seq_k",
                   absl::StrCat("must be 0 with header.session (the "
                                "session's lengths are the keys), got ",
                                header.shape().seq_k()));
  }
  return absl::OkStatus();
}

absl::StatusOr<RequestSpec> SessionSpecFromHeader(
    const v1::RequestHeader& header, const KvSession& session,
    const RequestLimits& limits) {
  const SessionConfig& c = session.config();
  const v1::Shape& shape = header.shape();
  const struct {
    const char* field;
    uint32_t got;
    int64_t want;
  } sizes[] = {{"batch", shape.batch(), c.batch},
               {"heads", shape.heads(), c.heads},
               {"dim", shape.dim(), c.dim},
               {"dim_v", shape.dim_v(), c.dim_v}};
  for (const auto& f : sizes) {
    if (f.got != 0 && f.got != f.want) {
      return Invalid(
          absl::StrCat("header.shape.", f.field),
          absl::StrCat("must be 0 or the session's ", f.want, ", got ", f.got));
    }
  }
  DType dtype, output_dtype;
  wire::DTypeFromProto(header.dtype(), &dtype);
  output_dtype = dtype;
  if (header.output_dtype() != v1::DTYPE_UNSPECIFIED) {
    wire::DTypeFromProto(header.output_dtype(), &output_dtype);
  }
  AttentionParams p = c.settings;
  p.batch = c.batch;
  p.heads = c.heads;
  p.dim = c.dim;
  p.dim_v = c.dim_v;
  const int64_t seq_q = shape.seq_q();
  const bool append = header.session().append();
  absl::StatusOr<RequestSpec> spec = MakeSessionRequestSpec(
      header.request_id(), header.session().session_id(), p, seq_q, append,
      header.session().see_all(), dtype, output_dtype,
      session.EstimateFlops(seq_q, append ? seq_q : 0), limits);
  if (!spec.ok()) return WithProtoPath(spec.status());
  return spec;
}

void FillResponseHeader(const RequestSpec& spec, const RequestStats& stats,
                        v1::ResponseHeader* out) {
  *out->mutable_shape() = wire::ShapeToProto(spec.shape());
  out->set_dtype(wire::DTypeToProto(spec.output_dtype));
  wire::StatsToProto(stats, out->mutable_stats());
}

std::string TensorLabel(v1::TensorName tensor) {
  return wire::EnumValueName(v1::TensorName_descriptor(), tensor);
}

}  // namespace server
}  // namespace scatterbrain
