// scatterbrain/proto/convert/settings.cc — see settings.h.
#include "proto/convert/settings.h"

#include <algorithm>
#include <climits>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "proto/convert/wire.h"

namespace scatterbrain {
namespace wire {
namespace {

namespace pb = ::google::protobuf;

template <typename P, typename C>
struct EnumPair {
  P proto;
  C core;
};

// One table per enum, read both ways. UNSPECIFIED is not listed: on the way
// in it keeps the core's default, on the way out it is never written.
constexpr EnumPair<v1::Method, Method> kMethods[] = {
    {v1::METHOD_EXACT, Method::kExact},
    {v1::METHOD_PERFORMER, Method::kPerformer},
    {v1::METHOD_LSH, Method::kLsh},
    {v1::METHOD_LOCAL, Method::kLocal},
    {v1::METHOD_SCATTERBRAIN, Method::kScatterbrain}};
constexpr EnumPair<v1::SparseSupport, SparseSupport> kSparse[] = {
    {v1::SPARSE_SUPPORT_LSH, SparseSupport::kLsh},
    {v1::SPARSE_SUPPORT_LOCAL, SparseSupport::kLocal},
    {v1::SPARSE_SUPPORT_BOTH, SparseSupport::kBoth},
    {v1::SPARSE_SUPPORT_AUTO, SparseSupport::kAuto}};
constexpr EnumPair<v1::Estimator, Estimator> kEstimators[] = {
    {v1::ESTIMATOR_CALIBRATED, Estimator::kCalibrated},
    {v1::ESTIMATOR_UNBIASED, Estimator::kUnbiased}};
constexpr EnumPair<v1::LshHash, LshHash> kLshHashes[] = {
    {v1::LSH_HASH_KMEANS, LshHash::kKMeans},
    {v1::LSH_HASH_CROSSPOLYTOPE, LshHash::kCrossPolytope}};
constexpr EnumPair<v1::Precision, Precision> kPrecisions[] = {
    {v1::PRECISION_FP32, Precision::kFp32},
    {v1::PRECISION_TF32, Precision::kTf32},
    {v1::PRECISION_BF16, Precision::kBf16}};
constexpr EnumPair<v1::LshTransform, LshTransform> kLshTransforms[] = {
    {v1::LSH_TRANSFORM_NONE, LshTransform::kNone},
    {v1::LSH_TRANSFORM_SMYRF, LshTransform::kSmyrf}};

template <typename P, typename C, size_t N>
bool FromProto(const EnumPair<P, C> (&table)[N], P value, C* out) {
  for (const auto& e : table) {
    if (e.proto == value) {
      *out = e.core;
      return true;
    }
  }
  return false;
}

template <typename P, typename C, size_t N>
P ToProto(const EnumPair<P, C> (&table)[N], C value) {
  for (const auto& e : table) {
    if (e.core == value) return e.proto;
  }
  return P{};  // unreachable: every core value is listed
}

// The optional uint32 counts: the proto field of the same name as the
// AttentionParams member, read and written through reflection.
constexpr CountSetting kCounts[] = {
    {"num_features", &AttentionParams::num_features},
    {"bucket_size", &AttentionParams::bucket_size},
    {"num_hashes", &AttentionParams::num_hashes},
    {"hash_projections", &AttentionParams::hash_projections},
    {"window", &AttentionParams::window},
    {"calibration_rows", &AttentionParams::calibration_rows},
    {"kmeans_iterations", &AttentionParams::kmeans_iterations},
    {"global_keys", &AttentionParams::global_keys}};

const pb::FieldDescriptor* Field(const char* name) {
  const pb::FieldDescriptor* f =
      v1::MethodSettings::descriptor()->FindFieldByName(name);
  // A renamed proto field fails every settings test, never silently.
  return f;
}

// Values past INT_MAX are clamped so that ValidateParams reports them as out
// of range instead of wrapping.
int ClampToInt(uint32_t v) {
  return static_cast<int>(std::min<uint32_t>(v, INT_MAX));
}

absl::Status Invalid(absl::string_view path, absl::string_view field,
                     absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, path.empty() ? "" : ".", field, ": ", what));
}

// "must be A, B or C, got X" over a table's proto names.
template <typename P, typename C, size_t N>
std::string MustBe(const EnumPair<P, C> (&table)[N],
                   const pb::EnumDescriptor* d, int got) {
  std::string s = "must be ";
  for (size_t i = 0; i < N; ++i) {
    if (i > 0) absl::StrAppend(&s, i + 1 == N ? " or " : ", ");
    absl::StrAppend(&s, EnumValueName(d, table[i].proto));
  }
  absl::StrAppend(&s, ", got ", EnumValueName(d, got));
  return s;
}

// An optional enum setting: UNSPECIFIED keeps `*out`.
template <typename P, typename C, size_t N>
absl::Status OptionalEnum(const EnumPair<P, C> (&table)[N], P value,
                          absl::string_view path, absl::string_view field,
                          C* out) {
  if (static_cast<int>(value) == 0) return absl::OkStatus();
  if (FromProto(table, value, out)) return absl::OkStatus();
  return Invalid(path, field,
                 absl::StrCat("unknown value ", static_cast<int>(value)));
}

}  // namespace

bool MethodFromProto(v1::Method method, Method* out) {
  return FromProto(kMethods, method, out);
}

v1::Method MethodToProto(Method method) { return ToProto(kMethods, method); }

bool SparseFromProto(v1::SparseSupport sparse, SparseSupport* out) {
  return FromProto(kSparse, sparse, out);
}

v1::SparseSupport SparseToProto(SparseSupport sparse) {
  return ToProto(kSparse, sparse);
}

std::string MethodLabel(v1::Method method) {
  Method m;
  return MethodFromProto(method, &m) ? MethodName(m) : "unknown";
}

absl::Status SettingsToParams(const v1::MethodSettings& s,
                              absl::string_view path, AttentionParams* p) {
  if (!MethodFromProto(s.method(), &p->method)) {
    return Invalid(path, "method",
                   MustBe(kMethods, v1::Method_descriptor(), s.method()));
  }
  for (const absl::Status& st : {
           OptionalEnum(kSparse, s.sparse(), path, "sparse", &p->sparse),
           OptionalEnum(kEstimators, s.estimator(), path, "estimator",
                        &p->estimator),
           OptionalEnum(kLshHashes, s.lsh_hash(), path, "lsh_hash",
                        &p->lsh_hash),
           OptionalEnum(kLshTransforms, s.lsh_transform(), path,
                        "lsh_transform", &p->lsh_transform),
           OptionalEnum(kPrecisions, s.precision(), path, "precision",
                        &p->precision),
       }) {
    if (!st.ok()) return st;
  }
  const pb::Reflection* r = v1::MethodSettings::GetReflection();
  for (const CountSetting& c : kCounts) {
    const pb::FieldDescriptor* f = Field(c.name);
    if (f != nullptr && r->HasField(s, f)) {
      p->*c.member = ClampToInt(r->GetUInt32(s, f));
    }
  }
  // Range-checked by ValidateParams ("target_error: must be in [0, 1)").
  if (s.has_target_error()) p->target_error = s.target_error();
  p->causal = s.causal();
  p->scale = s.scale();
  p->seed = s.seed();
  return absl::OkStatus();
}

absl::StatusOr<v1::MethodSettings> SettingsFromParams(
    const AttentionParams& p) {
  v1::MethodSettings s;
  const pb::Reflection* r = v1::MethodSettings::GetReflection();
  for (const CountSetting& c : kCounts) {
    const int value = p.*c.member;
    if (value < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(c.name, ": must be >= 0, got ", value));
    }
    const pb::FieldDescriptor* f = Field(c.name);
    if (f == nullptr) {
      return absl::InternalError(
          absl::StrCat("MethodSettings has no field ", c.name));
    }
    r->SetUInt32(&s, f, static_cast<uint32_t>(value));
  }
  s.set_method(MethodToProto(p.method));
  s.set_sparse(ToProto(kSparse, p.sparse));
  s.set_estimator(ToProto(kEstimators, p.estimator));
  s.set_lsh_hash(ToProto(kLshHashes, p.lsh_hash));
  s.set_lsh_transform(ToProto(kLshTransforms, p.lsh_transform));
  s.set_precision(ToProto(kPrecisions, p.precision));
  s.set_target_error(p.target_error);
  s.set_causal(p.causal);
  s.set_scale(p.scale);
  s.set_seed(p.seed);
  return s;
}

absl::Span<const CountSetting> CountSettings() { return kCounts; }

bool IsSettingsField(absl::string_view field) {
  return v1::MethodSettings::descriptor()->FindFieldByName(
             std::string(field)) != nullptr;
}

}  // namespace wire
}  // namespace scatterbrain
