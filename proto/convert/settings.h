// scatterbrain/proto/convert/settings.h — the one mapping between the wire's
// MethodSettings and the core's AttentionParams, both ways.
//
// The server reads requests through SettingsToParams; the CLI and the C++
// client write them through SettingsFromParams; tests use both. Each enum
// has one table of (proto value, core value) pairs and the optional counts
// one table of (field, member) pairs, read in both directions, so a new
// setting is added in one place (settings_test round-trips every field of
// the message and fails on one that is not mapped).
#ifndef SCATTERBRAIN_PROTO_CONVERT_SETTINGS_H_
#define SCATTERBRAIN_PROTO_CONVERT_SETTINGS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/params.h"
#include "scatterbrain/v1/attention.pb.h"

namespace scatterbrain {
namespace wire {

// Method enums. MethodFromProto: false for UNSPECIFIED and unknown values.
bool MethodFromProto(v1::Method method, Method* out);
v1::Method MethodToProto(Method method);
// The metrics label of a proto method: MethodName's ("exact", ...), or
// "unknown" for unset or invalid values.
std::string MethodLabel(v1::Method method);
// Sparse support enums (the same table SettingsToParams reads).
// SparseFromProto: false for UNSPECIFIED and unknown values.
bool SparseFromProto(v1::SparseSupport sparse, SparseSupport* out);
v1::SparseSupport SparseToProto(SparseSupport sparse);

// Copies the settings of `s` into `p` (method, counts, enums, causal, scale,
// seed); shape, tensors and key lengths are left alone. Unset optional
// counts and UNSPECIFIED enums keep the core's defaults (= the CLI's); an
// unset method is an error. Counts past INT_MAX are clamped so that
// ValidateParams reports them as out of range. Errors are INVALID_ARGUMENT
// naming the field under `path`, e.g. "header.settings.sparse: ...".
absl::Status SettingsToParams(const v1::MethodSettings& s,
                              absl::string_view path, AttentionParams* p);

// The settings of `p` with every field set explicitly, so that a server
// computes exactly what the local backend would. Negative counts cannot
// travel (uint32 on the wire): INVALID_ARGUMENT "num_features: must be >=
// 0, got -1".
absl::StatusOr<v1::MethodSettings> SettingsFromParams(const AttentionParams& p);

// An optional uint32 count of MethodSettings and the AttentionParams member
// of the same name (the CLI's flags take these names too).
struct CountSetting {
  const char* name;
  int AttentionParams::*member;
};
// Every count, in the order SettingsFromParams checks them.
absl::Span<const CountSetting> CountSettings();

// Whether `field` names a field of MethodSettings (the core's field names
// are the proto's; used to give validation errors their proto path).
bool IsSettingsField(absl::string_view field);

}  // namespace wire
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_PROTO_CONVERT_SETTINGS_H_
