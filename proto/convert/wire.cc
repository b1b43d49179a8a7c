// scatterbrain/proto/convert/wire.cc — see wire.h.
#include "proto/convert/wire.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace scatterbrain {
namespace wire {
namespace {

uint64_t NonNegative(int64_t v) {
  return static_cast<uint64_t>(std::max<int64_t>(v, 0));
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
