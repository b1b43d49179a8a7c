// scatterbrain/proto/convert/wire.cc — see wire.h.
#include "proto/convert/wire.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "proto/convert/settings.h"

namespace scatterbrain {
namespace wire {
namespace {

uint64_t NonNegative(int64_t v) {
  return static_cast<uint64_t>(std::max<int64_t>(v, 0));
}

uint32_t NonNegative32(int64_t v) {
  return static_cast<uint32_t>(std::clamp<int64_t>(v, 0, UINT32_MAX));
}

// The core's -1 ("not measured") is an absent optional on the wire.
void HeadPlanToProto(const HeadPlan& h, v1::HeadPlan* out) {
  out->set_batch(NonNegative32(h.batch));
  out->set_head(NonNegative32(h.head));
  out->set_exact(h.exact);
  out->set_sparse(SparseToProto(h.sparse));
  out->set_num_features(NonNegative32(h.num_features));
  out->set_bucket_size(NonNegative32(h.bucket_size));
  out->set_window(NonNegative32(h.window));
  out->set_global_keys(NonNegative32(h.global_keys));
  if (h.support_mass >= 0) out->set_support_mass(h.support_mass);
  if (h.error_estimate >= 0) out->set_error_estimate(h.error_estimate);
  if (h.error_bound >= 0) out->set_error_bound(h.error_bound);
}

HeadPlan HeadPlanFromProto(const v1::HeadPlan& h) {
  HeadPlan out;
  out.batch = h.batch();
  out.head = h.head();
  out.exact = h.exact();
  // An unknown value (a newer server) keeps the struct's default.
  SparseFromProto(h.sparse(), &out.sparse);
  out.num_features = static_cast<int>(h.num_features());
  out.bucket_size = static_cast<int>(h.bucket_size());
  out.window = static_cast<int>(h.window());
  out.global_keys = static_cast<int>(h.global_keys());
  if (h.has_support_mass()) out.support_mass = h.support_mass();
  if (h.has_error_estimate()) out.error_estimate = h.error_estimate();
  if (h.has_error_bound()) out.error_bound = h.error_bound();
  return out;
}

}  // namespace

bool DTypeFromProto(v1::DType dtype, DType* out) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32:
      *out = DType::kFloat32;
      return true;
    case v1::DTYPE_FLOAT16:
      *out = DType::kFloat16;
      return true;
    case v1::DTYPE_BFLOAT16:
      *out = DType::kBFloat16;
      return true;
    default:
      return false;
  }
}

v1::DType DTypeToProto(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return v1::DTYPE_FLOAT32;
    case DType::kFloat16:
      return v1::DTYPE_FLOAT16;
    case DType::kBFloat16:
      return v1::DTYPE_BFLOAT16;
  }
  return v1::DTYPE_FLOAT32;
}

std::string EnumValueName(const google::protobuf::EnumDescriptor* d,
                          int value) {
  const google::protobuf::EnumValueDescriptor* v = d->FindValueByNumber(value);
  return v != nullptr ? std::string(v->name()) : absl::StrCat(value);
}

std::string DTypeProtoName(v1::DType dtype) {
  return EnumValueName(v1::DType_descriptor(), dtype);
}

AttentionShape ShapeFromProto(const v1::Shape& s) {
  AttentionShape t;
  t.batch = s.batch();
  t.heads = s.heads();
  t.seq_q = s.seq_q();
  t.seq_k = s.seq_k();
  t.dim = s.dim();
  t.dim_v = s.dim_v();
  return t;
}

v1::Shape ShapeToProto(const AttentionShape& t) {
  v1::Shape s;
  s.set_batch(static_cast<uint32_t>(t.batch));
  s.set_heads(static_cast<uint32_t>(t.heads));
  s.set_seq_q(static_cast<uint32_t>(t.seq_q));
  s.set_seq_k(static_cast<uint32_t>(t.seq_k));
  s.set_dim(static_cast<uint32_t>(t.dim));
  s.set_dim_v(static_cast<uint32_t>(t.dim_v));
  return s;
}

void StatsToProto(const RequestStats& stats, v1::Stats* out) {
  out->set_queue_seconds(stats.queue_seconds);
  out->set_compute_seconds(stats.compute_seconds);
  out->set_batch_size(static_cast<uint32_t>(std::max(stats.batch_size, 0)));
  out->set_dense_score_bytes(NonNegative(stats.dense_score_bytes));
  out->set_workspace_bytes(NonNegative(stats.workspace_bytes));
  out->set_memory_saved_bytes(NonNegative(stats.memory_saved_bytes));
  if (stats.estimated_relative_error.has_value()) {
    out->set_estimated_relative_error(*stats.estimated_relative_error);
  }
  out->set_denominator_guards(NonNegative(stats.denominator_guards));
  out->set_fallbacks(NonNegative(stats.fallbacks));
  out->set_backend(stats.backend);
  for (int64_t l : stats.session_lengths) {
    out->add_session_lengths(NonNegative(l));
  }
  out->set_incremental(stats.incremental);
  for (const HeadPlan& h : stats.head_plans) {
    HeadPlanToProto(h, out->add_head_plans());
  }
  if (stats.error_bound.has_value()) out->set_error_bound(*stats.error_bound);
  out->set_score_evaluations(NonNegative(stats.score_evaluations));
  out->set_exact_score_evaluations(NonNegative(stats.exact_score_evaluations));
}

RequestStats StatsFromProto(const v1::Stats& s) {
  RequestStats out;
  out.queue_seconds = s.queue_seconds();
  out.compute_seconds = s.compute_seconds();
  out.batch_size = static_cast<int>(s.batch_size());
  out.dense_score_bytes = static_cast<int64_t>(s.dense_score_bytes());
  out.workspace_bytes = static_cast<int64_t>(s.workspace_bytes());
  out.memory_saved_bytes = static_cast<int64_t>(s.memory_saved_bytes());
  if (s.has_estimated_relative_error()) {
    out.estimated_relative_error = s.estimated_relative_error();
  }
  out.denominator_guards = static_cast<int64_t>(s.denominator_guards());
  out.fallbacks = static_cast<int64_t>(s.fallbacks());
  out.backend = s.backend();
  out.session_lengths.assign(s.session_lengths().begin(),
                             s.session_lengths().end());
  out.incremental = s.incremental();
  for (const v1::HeadPlan& h : s.head_plans()) {
    out.head_plans.push_back(HeadPlanFromProto(h));
  }
  if (s.has_error_bound()) out.error_bound = s.error_bound();
  out.score_evaluations = static_cast<int64_t>(s.score_evaluations());
  out.exact_score_evaluations =
      static_cast<int64_t>(s.exact_score_evaluations());
  return out;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return StatusFromCode(static_cast<int>(status.error_code()),
                        status.error_message());
}

absl::Status StatusFromCode(int code, const std::string& message) {
  if (code <= 0 ||
      code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnknownError(
        absl::StrCat(message, " (server sent code ", code, ")"));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

}  // namespace wire
}  // namespace scatterbrain
