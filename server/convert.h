// scatterbrain/server/convert.h — protobuf <-> numerical core.
//
// The one place where a RequestHeader becomes a validated request (the
// core's AttentionParams plus what the wire adds: dtypes, byte sizes, the
// batch key), where wire dtypes become float32 and back, and where an
// absl::Status becomes a grpc::Status (ToGrpcStatus). Error messages name
// the proto field ("header.shape.dim: ...", "chunk.offset: ...").
#ifndef SCATTERBRAIN_SERVER_CONVERT_H_
#define SCATTERBRAIN_SERVER_CONVERT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"
#include "kernels/params.h"
#include "scatterbrain/v1/attention.pb.h"

#include "common/float16.h"

namespace scatterbrain {
namespace server {

// Server-side limits a header is checked against (RESOURCE_EXHAUSTED).
struct RequestLimits {
  // q + k + v bytes of one request, in its wire dtype.
  int64_t max_request_bytes = int64_t{1} << 30;
  // seq_q and seq_k.
  int64_t max_seq = 65536;
};

// A validated request: everything but the tensor data.
struct RequestSpec {
  std::string request_id;
  // Settings and shape; tensor pointers null, contiguous strides set.
  AttentionParams params;
  std::vector<int32_t> key_lengths;            // empty: all keys valid
  v1::DType dtype = v1::DTYPE_FLOAT32;         // of q, k, v
  v1::DType output_dtype = v1::DTYPE_FLOAT32;  // resolved (never UNSPECIFIED)
  v1::Shape shape;                             // echoed in the response
  int64_t q_elements = 0, k_elements = 0, v_elements = 0, out_elements = 0;
  int64_t q_bytes = 0, k_bytes = 0, v_bytes = 0;  // wire bytes
  int64_t out_bytes = 0;                          // wire bytes of the output
  // Requests with equal keys can share a computation: head dims, dtypes,
  // method and every setting — but not batch, heads or sequence lengths.
  std::string batch_key;
  // The batcher's size measure: batch * heads * (seq_q + seq_k).
  int64_t tokens = 0;
  std::string method_label;  // metrics label ("exact", "scatterbrain", ...)
};

// Checks `header` and builds the spec. INVALID_ARGUMENT naming the field for
// malformed input (checked first, with ValidateParams for shape and
// settings), then RESOURCE_EXHAUSTED for what is well-formed but over a
// limit. `require_id`: the stream needs a request id (1 to 128 bytes); the
// unary call does not (an id, if given, must still be <= 128 bytes).
absl::StatusOr<RequestSpec> SpecFromHeader(const v1::RequestHeader& header,
                                           const RequestLimits& limits,
                                           bool require_id);

// Metrics label for a proto method ("unknown" for unset or invalid values).
std::string MethodLabel(v1::Method method);

// --- dtypes -----------------------------------------------------------------

// Bytes per element; 0 for UNSPECIFIED or unknown values.
int DTypeBytes(v1::DType dtype);
const char* DTypeName(v1::DType dtype);

// Scalar conversions: common/float16.h (exact on decode; round to nearest
// even on encode), shared with the client library and the .npy reader.
using ::scatterbrain::BFloat16ToFloat;
using ::scatterbrain::FloatToBFloat16;
using ::scatterbrain::FloatToHalf;
using ::scatterbrain::HalfToFloat;

// `n` elements of little-endian `dtype` bytes at `src` -> float32 at `dst`.
void DecodeToFloat(v1::DType dtype, const char* src, int64_t n, float* dst);
// `n` floats -> little-endian `dtype` bytes at `dst` (n * DTypeBytes).
void EncodeFromFloat(v1::DType dtype, const float* src, int64_t n, char* dst);

// A float32 buffer that is not zero-filled on allocation (it is about to be
// overwritten in full); the allocation fails softly.
struct FloatBuffer {
  std::unique_ptr<float[]> data;
  int64_t size = 0;
  // RESOURCE_EXHAUSTED when the memory is not available.
  absl::Status Allocate(int64_t n, absl::string_view what);
  void Release() {
    data.reset();
    size = 0;
  }
};

// Collects one tensor from in-order chunks, converting to float32 as the
// bytes arrive (the one copy of the data out of the gRPC messages). Chunks
// may split an element: up to 3 bytes are carried to the next chunk.
class TensorAssembler {
 public:
  // `name`: "q", "k" or "v", used in messages.
  absl::Status Init(absl::string_view name, v1::DType dtype, int64_t elements);
  // INVALID_ARGUMENT when `offset` is not the bytes received so far or the
  // data runs past the tensor's end.
  absl::Status Append(uint64_t offset, absl::string_view data);
  bool complete() const { return received_ == total_bytes_; }
  int64_t received_bytes() const { return received_; }
  int64_t total_bytes() const { return total_bytes_; }
  FloatBuffer Take() { return std::move(buffer_); }

 private:
  std::string name_;
  v1::DType dtype_ = v1::DTYPE_FLOAT32;
  int elem_bytes_ = 4;
  int64_t total_bytes_ = 0;
  int64_t received_ = 0;
  FloatBuffer buffer_;
  char carry_[4] = {0, 0, 0, 0};
  int carry_len_ = 0;
};

// --- status
// -------------------------------------------------------------------

// The one place an absl::Status becomes a grpc::Status (same code numbers).
grpc::Status ToGrpcStatus(const absl::Status& status);
// "OK", "INVALID_ARGUMENT", ... (the metrics' code label).
std::string CodeName(absl::StatusCode code);

// --- stats
// --------------------------------------------------------------------

// What the executor measured for one request (plain: no proto in the
// executor's interface).
struct RequestStats {
  double queue_seconds = 0;
  double compute_seconds = 0;
  int batch_size = 0;
  int64_t dense_score_bytes = 0;
  int64_t workspace_bytes = 0;
  int64_t memory_saved_bytes = 0;
  bool has_error_estimate = false;
  double estimated_relative_error = 0;
  int64_t denominator_guards = 0;
  int64_t fallbacks = 0;
  std::string backend;
};

void StatsToProto(const RequestStats& stats, v1::Stats* out);
// The response header for a computed request.
void FillResponseHeader(const RequestSpec& spec, const RequestStats& stats,
                        v1::ResponseHeader* out);

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_CONVERT_H_
