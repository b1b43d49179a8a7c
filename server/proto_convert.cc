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

absl::StatusOr<RequestSpec> SpecFromHeader(const v1::RequestHeader& header,
                                           const RequestLimits& limits,
                                           bool require_id) {
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
  st = wire::SettingsToParams(header.settings(), "header.settings", &p);
  if (!st.ok()) return st;
  SetShape(wire::ShapeFromProto(header.shape()), p);
  std::vector<int32_t> key_lengths(header.key_lengths().begin(),
                                   header.key_lengths().end());
  absl::StatusOr<RequestSpec> spec = MakeRequestSpec(
      id, p, std::move(key_lengths), dtype, output_dtype, limits);
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
