// scatterbrain/client/cpp/prepare.h — one request in memory (AttendInput,
// AttendResult) and in wire bytes (PreparedRequest).
//
// Prepare() checks an input and converts its float32 tensors to the wire
// dtype once (common/dtype.h, the codec the server uses too), so that the
// stream, the unary call and load generators send the same bytes without
// converting again. The response side reads a ResponseHeader into a result
// and the size and dtype of the output that follows.
#ifndef SCATTERBRAIN_CLIENT_CPP_PREPARE_H_
#define SCATTERBRAIN_CLIENT_CPP_PREPARE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/dtype.h"
#include "common/request_stats.h"
#include "kernels/params.h"
#include "scatterbrain/v1/attention.pb.h"

namespace scatterbrain {
namespace client {

namespace v1 = ::scatterbrain::v1;

// [batch, heads, seq, dim] shapes of one request: q is [batch, heads,
// seq_q, dim], k [batch, heads, seq_k, dim], v [batch, heads, seq_k, dim_v],
// the output [batch, heads, seq_q, dim_v]. The core's type (kernels/params.h).
using TensorShape = ::scatterbrain::AttentionShape;

// What the server reported for one request (v1.Stats), as the core's type.
using Stats = ::scatterbrain::RequestStats;

// One request. The spans are read (and converted to `dtype`) before the
// call that takes the input returns; they need not outlive it.
struct AttendInput {
  absl::Span<const float> q, k, v;  // row-major, sizes as `shape` says
  TensorShape shape;
  // Method and its settings, causal, scale, seed (as the CLI's flags).
  v1::MethodSettings settings;
  // Valid keys per batch entry (size batch) or empty (all keys).
  std::vector<int32_t> key_lengths;
  v1::DType dtype = v1::DTYPE_FLOAT32;             // of q, k, v on the wire
  v1::DType output_dtype = v1::DTYPE_UNSPECIFIED;  // on the wire; = dtype
  // Streams: empty = the stream picks a unique id ("r<n>").
  std::string request_id;
};

struct AttendResult {
  std::string request_id;
  TensorShape shape;
  std::vector<float> out;  // [batch, heads, seq_q, dim_v], float32
  Stats stats;
};

// A request converted to wire bytes once; may be submitted any number of
// times (load generators) without converting or copying it again.
struct PreparedRequest {
  v1::RequestHeader header;  // request_id is set per submission
  std::string q, k, v;       // wire bytes in header.dtype()
  int64_t tensor_bytes() const {
    return static_cast<int64_t>(q.size() + k.size() + v.size());
  }
};

// Checks `in` (span sizes vs shape, dtypes, key_lengths) and converts it.
absl::StatusOr<std::shared_ptr<const PreparedRequest>> Prepare(
    const AttendInput& in);

namespace internal {

// Prepare() into a caller-owned request (AttendUnary moves its buffers into
// its one message).
absl::Status PrepareInto(const AttendInput& in, PreparedRequest* req);

// `values` as wire bytes of `dtype` into *out (the one float32 -> wire
// conversion, common/dtype.h); RESOURCE_EXHAUSTED when out of memory.
absl::Status EncodeTensor(DType dtype, absl::Span<const float> values,
                          std::string* out);

// Cuts the tensors of one upload into TensorChunks of at most `chunk_bytes`,
// tensor after tensor in the given order, each tensor's chunks in order
// (offset = bytes of it cut before); empty tensors send nothing. Shared by
// the Attend stream (q, k, v of a request) and AppendKV (k, v), so both cut
// their uploads alike. The tensors' bytes must outlive the chunker.
class TensorChunker {
 public:
  struct Tensor {
    v1::TensorName name;
    const std::string* bytes;
  };
  TensorChunker(std::vector<Tensor> tensors, int64_t chunk_bytes);
  // Fills *c (request_id left as it is) with the next chunk; false when
  // every byte has been cut.
  bool Next(v1::TensorChunk* c);
  // Every byte has been cut.
  bool done();

 private:
  std::vector<Tensor> tensors_;
  int64_t chunk_bytes_;
  size_t tensor_ = 0;   // index into tensors_
  int64_t offset_ = 0;  // in that tensor
};

// The output a response header announces.
struct OutputFormat {
  DType dtype = DType::kFloat32;
  int64_t elements = 0;
  int64_t bytes() const { return elements * DTypeBytes(dtype); }
};

// Sets r->shape and r->stats from `h` and returns the output's format;
// INTERNAL for an unknown dtype or an absurd shape.
absl::StatusOr<OutputFormat> ReadResponseHeader(const v1::ResponseHeader& h,
                                                AttendResult* r);

}  // namespace internal
}  // namespace client
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CPP_PREPARE_H_
