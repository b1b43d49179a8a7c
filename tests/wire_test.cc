// proto/convert: the one mapping between the wire's messages and the core's
// types. Every field of MethodSettings, Shape and Stats is set to a value
// other than its default (found through the descriptors, so a field added to
// the proto is covered without editing this file) and must survive the
// round trip through the core type; a field the mapping forgets fails here.
#include "proto/convert/wire.h"

#include <climits>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "proto/convert/settings.h"
#include "scatterbrain/v1/attention.pb.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace wire {
namespace {

namespace gpb = ::google::protobuf;
using ::google::protobuf::util::MessageDifferencer;
using ::testing::HasSubstr;
using testutil::StatusIs;

// Sets every singular field of `msg` to a value other than its default:
// field i (1-based) gets i + 1 for integers, the largest value its enum
// defines, true, or (i + 1) / 4 for floating point. Optional fields become
// present; repeated uint64 fields (Stats.session_lengths) get two values,
// repeated messages (Stats.head_plans) two elements, each with every field
// set. Returns how many fields were set.
int SetEveryField(gpb::Message* msg) {
  const gpb::Descriptor* d = msg->GetDescriptor();
  const gpb::Reflection* r = msg->GetReflection();
  int set = 0;
  for (int i = 0; i < d->field_count(); ++i) {
    const gpb::FieldDescriptor* f = d->field(i);
    const int v = i + 2;
    if (f->is_repeated() &&
        f->cpp_type() == gpb::FieldDescriptor::CPPTYPE_MESSAGE) {
      for (int e = 0; e < 2; ++e) {
        gpb::Message* m = r->AddMessage(msg, f);
        if (SetEveryField(m) != m->GetDescriptor()->field_count()) {
          ADD_FAILURE() << "not every field of " << f->full_name() << " set";
        }
      }
      ++set;
      continue;
    }
    if (f->is_repeated()) {
      // Repeated counts (Stats.session_lengths): two elements.
      if (f->cpp_type() != gpb::FieldDescriptor::CPPTYPE_UINT64) continue;
      r->AddUInt64(msg, f, static_cast<uint64_t>(v));
      r->AddUInt64(msg, f, (uint64_t{1} << 40) + static_cast<uint64_t>(v));
      ++set;
      continue;
    }
    switch (f->cpp_type()) {
      case gpb::FieldDescriptor::CPPTYPE_UINT32:
        r->SetUInt32(msg, f, static_cast<uint32_t>(v));
        break;
      case gpb::FieldDescriptor::CPPTYPE_UINT64:
        r->SetUInt64(msg, f, (uint64_t{1} << 40) + static_cast<uint64_t>(v));
        break;
      case gpb::FieldDescriptor::CPPTYPE_INT32:
        r->SetInt32(msg, f, v);
        break;
      case gpb::FieldDescriptor::CPPTYPE_INT64:
        r->SetInt64(msg, f, v);
        break;
      case gpb::FieldDescriptor::CPPTYPE_BOOL:
        r->SetBool(msg, f, true);
        break;
      case gpb::FieldDescriptor::CPPTYPE_FLOAT:
        r->SetFloat(msg, f, v / 4.0f);
        break;
      case gpb::FieldDescriptor::CPPTYPE_DOUBLE:
        r->SetDouble(msg, f, v / 4.0);
        break;
      case gpb::FieldDescriptor::CPPTYPE_STRING:
        r->SetString(msg, f, "value-" + std::to_string(v));
        break;
      case gpb::FieldDescriptor::CPPTYPE_ENUM: {
        const gpb::EnumDescriptor* e = f->enum_type();
        r->SetEnum(msg, f, e->value(e->value_count() - 1));
        break;
      }
      default:
        ADD_FAILURE() << "no test value for field " << f->full_name();
        continue;
    }
    ++set;
  }
  return set;
}

TEST(SettingsMappingTest, EveryFieldRoundTripsThroughAttentionParams) {
  v1::MethodSettings full;
  ASSERT_EQ(SetEveryField(&full),
            v1::MethodSettings::descriptor()->field_count());
  AttentionParams p;
  ASSERT_TRUE(SettingsToParams(full, "settings", &p).ok());
  absl::StatusOr<v1::MethodSettings> back = SettingsFromParams(p);
  ASSERT_TRUE(back.ok()) << back.status();
  std::string diff;
  MessageDifferencer md;
  md.ReportDifferencesToString(&diff);
  EXPECT_TRUE(md.Compare(full, *back)) << diff;
}

TEST(SettingsMappingTest, EachFieldReachesTheParamsOnItsOwn) {
  // Changing one field alone changes what SettingsFromParams writes for
  // that field and for no other: each field has its own member.
  const gpb::Descriptor* d = v1::MethodSettings::descriptor();
  v1::MethodSettings full;
  SetEveryField(&full);
  AttentionParams base;
  ASSERT_TRUE(SettingsToParams(full, "", &base).ok());
  const v1::MethodSettings base_back = *SettingsFromParams(base);
  for (int i = 0; i < d->field_count(); ++i) {
    const gpb::FieldDescriptor* f = d->field(i);
    if (f->name() == "method") continue;  // has no neutral second value here
    v1::MethodSettings one = full;
    const gpb::Reflection* r = one.GetReflection();
    switch (f->cpp_type()) {
      case gpb::FieldDescriptor::CPPTYPE_UINT32:
        r->SetUInt32(&one, f, r->GetUInt32(one, f) + 100);
        break;
      case gpb::FieldDescriptor::CPPTYPE_UINT64:
        r->SetUInt64(&one, f, r->GetUInt64(one, f) + 100);
        break;
      case gpb::FieldDescriptor::CPPTYPE_BOOL:
        r->SetBool(&one, f, !r->GetBool(one, f));
        break;
      case gpb::FieldDescriptor::CPPTYPE_FLOAT:
        r->SetFloat(&one, f, r->GetFloat(one, f) * 2);
        break;
      case gpb::FieldDescriptor::CPPTYPE_DOUBLE:
        r->SetDouble(&one, f, r->GetDouble(one, f) * 2);
        break;
      case gpb::FieldDescriptor::CPPTYPE_ENUM: {
        const gpb::EnumDescriptor* e = f->enum_type();
        r->SetEnum(&one, f, e->value(e->value_count() - 2));
        break;
      }
      default:
        FAIL() << "no second value for " << f->full_name();
    }
    AttentionParams p;
    ASSERT_TRUE(SettingsToParams(one, "", &p).ok()) << f->name();
    const v1::MethodSettings back = *SettingsFromParams(p);
    MessageDifferencer md;
    md.IgnoreField(f);
    EXPECT_TRUE(md.Compare(base_back, back)) << f->name() << " moved others";
    // An UNSPECIFIED enum (value_count - 2 may be 0) means the default.
    if (f->cpp_type() == gpb::FieldDescriptor::CPPTYPE_ENUM &&
        r->GetEnumValue(one, f) == 0) {
      continue;
    }
    EXPECT_FALSE(MessageDifferencer::Equals(base_back, back))
        << f->name() << " is not mapped";
  }
}

TEST(SettingsMappingTest, EveryEnumValueMapsBothWays) {
  const gpb::Descriptor* d = v1::MethodSettings::descriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const gpb::FieldDescriptor* f = d->field(i);
    if (f->cpp_type() != gpb::FieldDescriptor::CPPTYPE_ENUM) continue;
    const gpb::EnumDescriptor* e = f->enum_type();
    for (int j = 0; j < e->value_count(); ++j) {
      const int value = e->value(j)->number();
      if (value == 0) continue;  // UNSPECIFIED: the default, never written
      v1::MethodSettings s;
      s.set_method(v1::METHOD_EXACT);
      s.GetReflection()->SetEnumValue(&s, f, value);
      AttentionParams p;
      ASSERT_TRUE(SettingsToParams(s, "", &p).ok()) << e->value(j)->name();
      const v1::MethodSettings back = *SettingsFromParams(p);
      EXPECT_EQ(back.GetReflection()->GetEnumValue(back, f), value)
          << e->value(j)->name();
    }
  }
}

TEST(SettingsMappingTest, UnsetFieldsKeepTheCoreDefaults) {
  v1::MethodSettings s;
  s.set_method(v1::METHOD_SCATTERBRAIN);
  AttentionParams p;
  ASSERT_TRUE(SettingsToParams(s, "", &p).ok());
  const AttentionParams defaults;
  EXPECT_EQ(p.num_features, defaults.num_features);
  EXPECT_EQ(p.bucket_size, defaults.bucket_size);
  EXPECT_EQ(p.num_hashes, defaults.num_hashes);
  EXPECT_EQ(p.hash_projections, defaults.hash_projections);
  EXPECT_EQ(p.window, defaults.window);
  EXPECT_EQ(p.calibration_rows, defaults.calibration_rows);
  EXPECT_EQ(p.kmeans_iterations, defaults.kmeans_iterations);
  EXPECT_EQ(p.sparse, defaults.sparse);
  EXPECT_EQ(p.estimator, defaults.estimator);
  EXPECT_EQ(p.lsh_hash, defaults.lsh_hash);
  EXPECT_EQ(p.lsh_transform, defaults.lsh_transform);
  // And the defaults travel explicitly the other way.
  const v1::MethodSettings back = *SettingsFromParams(defaults);
  EXPECT_TRUE(back.has_num_features());
  EXPECT_EQ(back.num_features(), static_cast<uint32_t>(defaults.num_features));
  EXPECT_EQ(back.method(), v1::METHOD_SCATTERBRAIN);
}

TEST(SettingsMappingTest, ErrorsNameTheFieldUnderThePath) {
  v1::MethodSettings s;
  AttentionParams p;
  absl::Status st = SettingsToParams(s, "header.settings", &p);
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument,
                           HasSubstr("header.settings.method: must be "
                                     "METHOD_EXACT, METHOD_PERFORMER, "
                                     "METHOD_LSH, METHOD_LOCAL or "
                                     "METHOD_SCATTERBRAIN, got "
                                     "METHOD_UNSPECIFIED")));
  s.set_method(static_cast<v1::Method>(42));
  EXPECT_THAT(SettingsToParams(s, "header.settings", &p).message(),
              HasSubstr("got 42"));
  s.set_method(v1::METHOD_LSH);
  s.set_lsh_hash(static_cast<v1::LshHash>(9));
  st = SettingsToParams(s, "x", &p);
  EXPECT_EQ(st.message(), "x.lsh_hash: unknown value 9");
  s.clear_lsh_hash();
  s.set_estimator(static_cast<v1::Estimator>(7));
  EXPECT_EQ(SettingsToParams(s, "", &p).message(),
            "estimator: unknown value 7");

  AttentionParams neg;
  neg.window = -3;
  absl::StatusOr<v1::MethodSettings> out = SettingsFromParams(neg);
  EXPECT_THAT(out, StatusIs(absl::StatusCode::kInvalidArgument,
                            "window: must be >= 0, got -3"));
}

TEST(SettingsMappingTest, CountsPastIntMaxClampInsteadOfWrapping) {
  v1::MethodSettings s;
  s.set_method(v1::METHOD_LSH);
  s.set_num_hashes(0xffffffffu);
  AttentionParams p;
  ASSERT_TRUE(SettingsToParams(s, "", &p).ok());
  EXPECT_EQ(p.num_hashes, INT_MAX);
}

TEST(SettingsMappingTest, MethodLabelsAndFieldNames) {
  EXPECT_EQ(MethodLabel(v1::METHOD_EXACT), "exact");
  EXPECT_EQ(MethodLabel(v1::METHOD_SCATTERBRAIN), "scatterbrain");
  EXPECT_EQ(MethodLabel(v1::METHOD_UNSPECIFIED), "unknown");
  EXPECT_EQ(MethodLabel(static_cast<v1::Method>(99)), "unknown");
  EXPECT_TRUE(IsSettingsField("num_features"));
  EXPECT_TRUE(IsSettingsField("scale"));
  EXPECT_FALSE(IsSettingsField("dim"));
  EXPECT_FALSE(IsSettingsField("num_threads"));
}

TEST(WireMappingTest, ShapeRoundTripsThroughAttentionShape) {
  v1::Shape full;
  ASSERT_EQ(SetEveryField(&full), v1::Shape::descriptor()->field_count());
  const AttentionShape shape = ShapeFromProto(full);
  EXPECT_TRUE(MessageDifferencer::Equals(full, ShapeToProto(shape)));
  AttentionParams p;
  SetShape(shape, p);
  EXPECT_EQ(ShapeOf(p), shape);
  EXPECT_EQ(shape.q_elements(),
            shape.batch * shape.heads * shape.seq_q * shape.dim);
  EXPECT_EQ(shape.out_elements(),
            shape.batch * shape.heads * shape.seq_q * shape.dim_v);
}

TEST(WireMappingTest, StatsRoundTripThroughRequestStats) {
  v1::Stats full;
  ASSERT_EQ(SetEveryField(&full), v1::Stats::descriptor()->field_count());
  v1::Stats back;
  StatsToProto(StatsFromProto(full), &back);
  EXPECT_TRUE(MessageDifferencer::Equals(full, back));
  // An absent estimate stays absent; negative sizes travel as 0.
  RequestStats none;
  none.workspace_bytes = -5;
  v1::Stats out;
  StatsToProto(none, &out);
  EXPECT_FALSE(out.has_estimated_relative_error());
  EXPECT_EQ(out.workspace_bytes(), 0u);
  EXPECT_FALSE(StatsFromProto(out).estimated_relative_error.has_value());
}

TEST(WireMappingTest, HeadPlansAndCostTravelWithTheirAbsentValues) {
  RequestStats rs;
  HeadPlan local;
  local.batch = 1;
  local.head = 3;
  local.sparse = SparseSupport::kLocal;
  local.num_features = 32;
  local.window = 32;
  local.global_keys = 2;
  local.support_mass = 0.75;  // measured; error not estimated (-1)
  HeadPlan exact;
  exact.exact = true;
  exact.error_estimate = 0.0;
  exact.error_bound = 0.0;
  rs.head_plans = {local, exact};
  rs.error_bound = 0.125;
  rs.score_evaluations = 1000;
  rs.exact_score_evaluations = 4000;
  v1::Stats out;
  StatsToProto(rs, &out);
  ASSERT_EQ(out.head_plans_size(), 2);
  const v1::HeadPlan& p0 = out.head_plans(0);
  EXPECT_EQ(p0.batch(), 1u);
  EXPECT_EQ(p0.head(), 3u);
  EXPECT_EQ(p0.sparse(), v1::SPARSE_SUPPORT_LOCAL);
  EXPECT_EQ(p0.window(), 32u);
  EXPECT_EQ(p0.bucket_size(), 0u);
  EXPECT_EQ(p0.global_keys(), 2u);
  EXPECT_DOUBLE_EQ(p0.support_mass(), 0.75);
  // The core's -1 ("not measured") is an absent field on the wire.
  EXPECT_FALSE(p0.has_error_estimate());
  EXPECT_FALSE(p0.has_error_bound());
  EXPECT_TRUE(out.head_plans(1).exact());
  EXPECT_FALSE(out.head_plans(1).has_support_mass());
  EXPECT_TRUE(out.head_plans(1).has_error_bound());
  EXPECT_DOUBLE_EQ(out.error_bound(), 0.125);
  EXPECT_EQ(out.score_evaluations(), 1000u);
  EXPECT_EQ(out.exact_score_evaluations(), 4000u);

  const RequestStats back = StatsFromProto(out);
  ASSERT_EQ(back.head_plans.size(), 2u);
  EXPECT_EQ(back.head_plans[0].sparse, SparseSupport::kLocal);
  EXPECT_EQ(back.head_plans[0].error_bound, -1.0);
  EXPECT_EQ(back.head_plans[1].support_mass, -1.0);
  EXPECT_EQ(back.head_plans[1].error_bound, 0.0);
  EXPECT_EQ(back.error_bound, 0.125);
  // No error target: no bound on the wire.
  v1::Stats plain;
  StatsToProto(RequestStats(), &plain);
  EXPECT_FALSE(plain.has_error_bound());
  EXPECT_FALSE(StatsFromProto(plain).error_bound.has_value());
}

TEST(SettingsMappingTest, AutoGlobalKeysAndTargetErrorReachTheParams) {
  v1::MethodSettings s;
  s.set_method(v1::METHOD_SCATTERBRAIN);
  s.set_sparse(v1::SPARSE_SUPPORT_AUTO);
  s.set_global_keys(4);
  s.set_target_error(0.1);
  AttentionParams p;
  ASSERT_TRUE(SettingsToParams(s, "header.settings", &p).ok());
  EXPECT_EQ(p.sparse, SparseSupport::kAuto);
  EXPECT_EQ(p.global_keys, 4);
  EXPECT_EQ(p.target_error, 0.1);
  // Unset: the core's defaults (off).
  v1::MethodSettings unset;
  unset.set_method(v1::METHOD_SCATTERBRAIN);
  AttentionParams d;
  ASSERT_TRUE(SettingsToParams(unset, "", &d).ok());
  EXPECT_EQ(d.global_keys, 0);
  EXPECT_EQ(d.target_error, 0.0);
  // An unknown support is refused, naming the field.
  s.set_sparse(static_cast<v1::SparseSupport>(5));
  EXPECT_THAT(SettingsToParams(s, "header.settings", &p),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "header.settings.sparse: unknown value 5"));
}

TEST(WireMappingTest, DTypesMapBothWays) {
  const gpb::EnumDescriptor* e = v1::DType_descriptor();
  for (int j = 0; j < e->value_count(); ++j) {
    const auto value = static_cast<v1::DType>(e->value(j)->number());
    DType core;
    if (value == v1::DTYPE_UNSPECIFIED) {
      EXPECT_FALSE(DTypeFromProto(value, &core));
      continue;
    }
    ASSERT_TRUE(DTypeFromProto(value, &core)) << e->value(j)->name();
    EXPECT_EQ(DTypeToProto(core), value);
  }
  DType core;
  EXPECT_FALSE(DTypeFromProto(static_cast<v1::DType>(9), &core));
  EXPECT_EQ(DTypeProtoName(v1::DTYPE_BFLOAT16), "DTYPE_BFLOAT16");
  EXPECT_EQ(DTypeProtoName(static_cast<v1::DType>(9)), "9");
}

TEST(WireMappingTest, StatusesKeepCodeAndMessageBothWays) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  for (int code = 1; code <= 16; ++code) {
    const absl::Status st(static_cast<absl::StatusCode>(code), "m: x");
    const grpc::Status g = ToGrpcStatus(st);
    EXPECT_EQ(static_cast<int>(g.error_code()), code);
    EXPECT_EQ(g.error_message(), "m: x");
    EXPECT_EQ(FromGrpcStatus(g), st);
  }
  const absl::Status odd = StatusFromCode(99, "boom");
  EXPECT_THAT(odd, StatusIs(absl::StatusCode::kUnknown,
                            HasSubstr("server sent code 99")));
}

}  // namespace
}  // namespace wire
}  // namespace scatterbrain
