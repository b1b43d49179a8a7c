// server/proto_convert: a RequestHeader becomes a RequestSpec with the right
// sizes and batch key, and every malformed or over-limit header is refused
// with its code and the proto field's path.
#include "server/proto_convert.h"

#include <cmath>
#include <functional>
#include <string>

#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "gtest/gtest.h"
#include "scatterbrain/v1/attention.pb.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace server {
namespace {

namespace pb = ::scatterbrain::v1;
using ::testing::HasSubstr;
using testutil::StatusIs;

pb::RequestHeader BaseHeader() {
  pb::RequestHeader h;
  h.set_request_id("r");
  h.mutable_settings()->set_method(pb::METHOD_EXACT);
  h.set_dtype(pb::DTYPE_FLOAT32);
  pb::Shape* s = h.mutable_shape();
  s->set_batch(2);
  s->set_heads(2);
  s->set_seq_q(16);
  s->set_seq_k(24);
  s->set_dim(8);
  s->set_dim_v(4);
  return h;
}

TEST(ProtoConvertTest, SpecFromHeaderComputesSizesAndKey) {
  pb::RequestHeader h = BaseHeader();
  h.set_dtype(pb::DTYPE_FLOAT16);
  h.set_output_dtype(pb::DTYPE_FLOAT32);
  absl::StatusOr<RequestSpec> s = SpecFromHeader(h, RequestLimits(), true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->q_bytes, 2 * 2 * 16 * 8 * 2);
  EXPECT_EQ(s->k_bytes, 2 * 2 * 24 * 8 * 2);
  EXPECT_EQ(s->v_bytes, 2 * 2 * 24 * 4 * 2);
  EXPECT_EQ(s->out_bytes, 2 * 2 * 16 * 4 * 4);
  EXPECT_EQ(s->tokens, 2 * 2 * (16 + 24));
  EXPECT_EQ(s->method_label, "exact");
  // Lengths and batch do not change the key; settings do.
  pb::RequestHeader h2 = h;
  h2.mutable_shape()->set_seq_q(99);
  h2.mutable_shape()->set_batch(1);
  EXPECT_EQ(SpecFromHeader(h2, RequestLimits(), true)->batch_key, s->batch_key);
  h2.mutable_settings()->set_causal(true);
  EXPECT_NE(SpecFromHeader(h2, RequestLimits(), true)->batch_key, s->batch_key);
  h2 = h;
  h2.mutable_shape()->set_dim(16);
  EXPECT_NE(SpecFromHeader(h2, RequestLimits(), true)->batch_key, s->batch_key);
}

// Two requests that differ in any one setting must never share a batch (a
// batch runs as one computation with one set of settings). Every field of
// MethodSettings is found through the descriptor, so a field added to the
// proto but left out of the batch key fails here.
TEST(ProtoConvertTest, EverySettingSeparatesBatches) {
  namespace gpb = ::google::protobuf;
  pb::RequestHeader base = BaseHeader();
  base.mutable_settings()->set_method(pb::METHOD_SCATTERBRAIN);
  // Unset, sparse would be the server's default, auto: the value the loop
  // below sets it to.
  base.mutable_settings()->set_sparse(pb::SPARSE_SUPPORT_LSH);
  absl::StatusOr<RequestSpec> base_spec =
      SpecFromHeader(base, RequestLimits(), true);
  ASSERT_TRUE(base_spec.ok()) << base_spec.status();
  const gpb::Descriptor* d = pb::MethodSettings::descriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const gpb::FieldDescriptor* f = d->field(i);
    pb::RequestHeader h = base;
    pb::MethodSettings* s = h.mutable_settings();
    const gpb::Reflection* r = s->GetReflection();
    switch (f->cpp_type()) {
      case gpb::FieldDescriptor::CPPTYPE_UINT32:
        // A valid value other than the default for every count.
        r->SetUInt32(s, f, f->name() == "num_features" ? 64 : 2);
        break;
      case gpb::FieldDescriptor::CPPTYPE_UINT64:
        r->SetUInt64(s, f, 99);
        break;
      case gpb::FieldDescriptor::CPPTYPE_BOOL:
        r->SetBool(s, f, true);
        break;
      case gpb::FieldDescriptor::CPPTYPE_FLOAT:
        r->SetFloat(s, f, 0.5f);
        break;
      case gpb::FieldDescriptor::CPPTYPE_DOUBLE:  // target_error, in [0, 1)
        r->SetDouble(s, f, 0.25);
        break;
      case gpb::FieldDescriptor::CPPTYPE_ENUM: {
        // The last value the enum defines differs from the default.
        const gpb::EnumDescriptor* e = f->enum_type();
        if (f->name() == "method") {
          r->SetEnumValue(s, f, pb::METHOD_LSH);
        } else {
          r->SetEnum(s, f, e->value(e->value_count() - 1));
        }
        break;
      }
      default:
        FAIL() << "no test value for " << f->full_name();
    }
    absl::StatusOr<RequestSpec> spec = SpecFromHeader(h, RequestLimits(), true);
    ASSERT_TRUE(spec.ok()) << f->name() << ": " << spec.status();
    EXPECT_NE(spec->batch_key, base_spec->batch_key) << f->name();
  }
  // And the wire dtypes.
  pb::RequestHeader h = base;
  h.set_dtype(pb::DTYPE_BFLOAT16);
  EXPECT_NE(SpecFromHeader(h, RequestLimits(), true)->batch_key,
            base_spec->batch_key);
  h = base;
  h.set_output_dtype(pb::DTYPE_FLOAT16);
  EXPECT_NE(SpecFromHeader(h, RequestLimits(), true)->batch_key,
            base_spec->batch_key);
}

TEST(ProtoConvertTest, UnsetSparseTakesTheServersDefault) {
  pb::RequestHeader h = BaseHeader();
  h.mutable_settings()->set_method(pb::METHOD_SCATTERBRAIN);
  // The server's default unless told otherwise: auto.
  absl::StatusOr<RequestSpec> s = SpecFromHeader(h, RequestLimits(), true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->params.sparse, SparseSupport::kAuto);
  RequestDefaults lsh;
  lsh.sparse = SparseSupport::kLsh;
  s = SpecFromHeader(h, RequestLimits(), true, lsh);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->params.sparse, SparseSupport::kLsh);
  // A request that says which support keeps it.
  h.mutable_settings()->set_sparse(pb::SPARSE_SUPPORT_LOCAL);
  s = SpecFromHeader(h, RequestLimits(), true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->params.sparse, SparseSupport::kLocal);
  h.mutable_settings()->set_sparse(pb::SPARSE_SUPPORT_AUTO);
  s = SpecFromHeader(h, RequestLimits(), true, lsh);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->params.sparse, SparseSupport::kAuto);
  // Other methods have no support: the core's default, whatever the server's.
  h = BaseHeader();
  s = SpecFromHeader(h, RequestLimits(), true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->params.sparse, AttentionParams().sparse);
}

TEST(ProtoConvertTest, TargetErrorAndGlobalKeysAreCheckedWithTheirPath) {
  pb::RequestHeader h = BaseHeader();
  h.mutable_settings()->set_method(pb::METHOD_SCATTERBRAIN);
  h.mutable_settings()->set_target_error(0.2);
  h.mutable_settings()->set_global_keys(4);
  absl::StatusOr<RequestSpec> s = SpecFromHeader(h, RequestLimits(), true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->params.target_error, 0.2);
  EXPECT_EQ(s->params.global_keys, 4);
  h.mutable_settings()->set_target_error(1.5);
  EXPECT_THAT(SpecFromHeader(h, RequestLimits(), true),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("header.settings.target_error: must be in "
                                 "[0, 1)")));
  h.mutable_settings()->set_target_error(0.2);
  h.mutable_settings()->set_sparse(static_cast<pb::SparseSupport>(9));
  EXPECT_THAT(SpecFromHeader(h, RequestLimits(), true),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "header.settings.sparse: unknown value 9"));
  // An error target is Scatterbrain's alone.
  h = BaseHeader();
  h.mutable_settings()->set_target_error(0.2);
  EXPECT_THAT(SpecFromHeader(h, RequestLimits(), true),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("header.settings.target_error")));
}

TEST(ProtoConvertTest, HeaderErrorsNameTheProtoField) {
  struct Case {
    std::function<void(pb::RequestHeader*)> edit;
    absl::StatusCode code;
    std::string field;
  };
  RequestLimits limits;
  limits.max_request_bytes = 1 << 20;
  limits.max_seq = 1000;
  const Case cases[] = {
      {[](pb::RequestHeader* h) { h->clear_request_id(); },
       absl::StatusCode::kInvalidArgument, "header.request_id"},
      {[](pb::RequestHeader* h) { h->set_request_id(std::string(129, 'x')); },
       absl::StatusCode::kInvalidArgument, "header.request_id"},
      {[](pb::RequestHeader* h) {
         h->mutable_settings()->set_method(pb::METHOD_UNSPECIFIED);
       },
       absl::StatusCode::kInvalidArgument, "header.settings.method"},
      {[](pb::RequestHeader* h) {
         h->mutable_settings()->set_method(static_cast<pb::Method>(42));
       },
       absl::StatusCode::kInvalidArgument, "header.settings.method"},
      {[](pb::RequestHeader* h) { h->set_dtype(pb::DTYPE_UNSPECIFIED); },
       absl::StatusCode::kInvalidArgument, "header.dtype"},
      {[](pb::RequestHeader* h) { h->set_dtype(static_cast<pb::DType>(9)); },
       absl::StatusCode::kInvalidArgument, "header.dtype"},
      {[](pb::RequestHeader* h) {
         h->set_output_dtype(static_cast<pb::DType>(9));
       },
       absl::StatusCode::kInvalidArgument, "header.output_dtype"},
      {[](pb::RequestHeader* h) { h->mutable_shape()->set_dim(0); },
       absl::StatusCode::kInvalidArgument,
       "header.shape.dim: must be in [1, 1024]"},
      {[](pb::RequestHeader* h) { h->mutable_shape()->set_dim_v(5000); },
       absl::StatusCode::kInvalidArgument, "header.shape.dim_v"},
      {[](pb::RequestHeader* h) { h->mutable_shape()->set_batch(0); },
       absl::StatusCode::kInvalidArgument, "header.shape.batch"},
      {[](pb::RequestHeader* h) { h->mutable_shape()->set_seq_k(0); },
       absl::StatusCode::kInvalidArgument, "header.shape.seq_k"},
      {[](pb::RequestHeader* h) {
         h->mutable_settings()->set_method(pb::METHOD_PERFORMER);
         h->mutable_settings()->set_num_features(7);
       },
       absl::StatusCode::kInvalidArgument,
       "header.settings.num_features: must be even"},
      {[](pb::RequestHeader* h) {
         h->mutable_settings()->set_method(pb::METHOD_LSH);
         h->mutable_settings()->set_num_hashes(0xffffffffu);
       },
       absl::StatusCode::kInvalidArgument, "header.settings.num_hashes"},
      {[](pb::RequestHeader* h) {
         h->mutable_settings()->set_method(pb::METHOD_LOCAL);
         h->mutable_settings()->set_window(0);
       },
       absl::StatusCode::kInvalidArgument, "header.settings.window"},
      {[](pb::RequestHeader* h) {
         h->mutable_settings()->set_method(pb::METHOD_SCATTERBRAIN);
         h->mutable_settings()->set_sparse(static_cast<pb::SparseSupport>(8));
       },
       absl::StatusCode::kInvalidArgument, "header.settings.sparse"},
      {[](pb::RequestHeader* h) { h->mutable_settings()->set_scale(-1.0f); },
       absl::StatusCode::kInvalidArgument, "header.settings.scale"},
      {[](pb::RequestHeader* h) { h->mutable_settings()->set_scale(NAN); },
       absl::StatusCode::kInvalidArgument, "header.settings.scale"},
      {[](pb::RequestHeader* h) { h->add_key_lengths(3); },
       absl::StatusCode::kInvalidArgument, "header.key_lengths"},
      {[](pb::RequestHeader* h) {
         h->add_key_lengths(3);
         h->add_key_lengths(25);
       },
       absl::StatusCode::kInvalidArgument, "header.key_lengths[1]"},
      {[](pb::RequestHeader* h) { h->mutable_shape()->set_seq_q(1001); },
       absl::StatusCode::kResourceExhausted, "header.shape.seq_q"},
      {[](pb::RequestHeader* h) { h->mutable_shape()->set_heads(400); },
       absl::StatusCode::kResourceExhausted, "max_request_bytes"},
      {[](pb::RequestHeader* h) {
         // dim 1 in, dim_v 1024 out: small inputs, huge output.
         h->mutable_shape()->set_dim(1);
         h->mutable_shape()->set_dim_v(1024);
         h->mutable_shape()->set_seq_k(1);
         h->mutable_shape()->set_seq_q(1000);
         h->mutable_shape()->set_heads(1);
       },
       absl::StatusCode::kResourceExhausted, "the output takes"},
  };
  for (const Case& c : cases) {
    pb::RequestHeader h = BaseHeader();
    c.edit(&h);
    absl::StatusOr<RequestSpec> s = SpecFromHeader(h, limits, true);
    ASSERT_FALSE(s.ok()) << c.field;
    EXPECT_THAT(s, StatusIs(c.code, HasSubstr(c.field)));
  }
  // The unary call does not need an id.
  pb::RequestHeader h = BaseHeader();
  h.clear_request_id();
  EXPECT_TRUE(SpecFromHeader(h, limits, /*require_id=*/false).ok());
}

TEST(ProtoConvertTest, ToGrpcStatusKeepsCodeAndMessage) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  const grpc::Status s = ToGrpcStatus(absl::ResourceExhaustedError("x: y"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s.error_message(), "x: y");
  EXPECT_EQ(ToGrpcStatus(absl::UnavailableError("")).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(CodeName(absl::StatusCode::kInvalidArgument), "INVALID_ARGUMENT");
  EXPECT_EQ(CodeName(absl::StatusCode::kOk), "OK");
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
