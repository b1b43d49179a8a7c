// scatterbrain/proto/convert/wire.h — the wire's small messages and enums
// mapped onto core types, both ways: DType, Shape, Stats, and the one
// absl::Status <-> grpc::Status conversion.
//
// Used by the server's proto boundary, the C++ client and the CLI; the
// tensor codec itself (bytes <-> float32) is common/dtype.h, which knows no
// protobuf, so the server's assembler and executor stay free of it.
#ifndef SCATTERBRAIN_PROTO_CONVERT_WIRE_H_
#define SCATTERBRAIN_PROTO_CONVERT_WIRE_H_

#include <string>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "common/request_stats.h"
#include "grpcpp/support/status.h"
#include "kernels/params.h"
#include "scatterbrain/v1/attention.pb.h"

namespace scatterbrain {
namespace wire {

// The name a proto enum gives `value` ("DTYPE_FLOAT16"), or the number for
// values it does not define (what a client that sent garbage sees back).
std::string EnumValueName(const google::protobuf::EnumDescriptor* d, int value);

// False for DTYPE_UNSPECIFIED and unknown values.
bool DTypeFromProto(v1::DType dtype, DType* out);
v1::DType DTypeToProto(DType dtype);
// "DTYPE_FLOAT16", or the number for values the proto does not define.
std::string DTypeProtoName(v1::DType dtype);

AttentionShape ShapeFromProto(const v1::Shape& shape);
// Sizes past uint32 are the caller's to reject (the CLI checks its arrays).
v1::Shape ShapeToProto(const AttentionShape& shape);

void StatsToProto(const RequestStats& stats, v1::Stats* out);
RequestStats StatsFromProto(const v1::Stats& stats);

// The one place an absl::Status becomes a grpc::Status and back (the two
// share the canonical code numbers 0..16).
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);
// A code and message as they travel in a RequestError; codes outside 1..16
// become UNKNOWN.
absl::Status StatusFromCode(int code, const std::string& message);

}  // namespace wire
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_PROTO_CONVERT_WIRE_H_
