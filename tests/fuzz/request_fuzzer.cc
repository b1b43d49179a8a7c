// tests/fuzz/request_fuzzer.cc — the server's path for one Attend stream,
// from message bytes to the computed output, on fuzzed input.
//
// Input: a sequence of records, each a little-endian uint16 length and that
// many bytes of one serialized scatterbrain.v1.AttendRequest (a short last
// record takes what is left). For each message, as server/attend_reactor
// does: a header goes through SpecFromHeader (proto_convert, then
// MakeRequestSpec's validation and limits) and TensorAssembler::Init for q,
// k and v; a chunk through TensorAssembler::Append; a cancel drops the
// request. A request whose tensors are complete runs on the CPU backend
// (ForwardBatch, as the executor calls it) and its output is encoded in the
// output dtype, as the answer writer does.
//
// Invariants: nothing crashes; every refusal is INVALID_ARGUMENT or
// RESOURCE_EXHAUSTED with a message; the assembled float32 equals the
// decoding of the bytes sent, however the chunks split elements; a request
// with finite inputs computes a finite output, or is refused naming the
// output when its magnitudes overflow float32; one with non-finite inputs
// is refused.
//
// Sizes are capped (the limits below, and the settings that drive the cost)
// so that every input runs in milliseconds.
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/dtype.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "scatterbrain/v1/attention.pb.h"
#include "server/proto_convert.h"
#include "server/request.h"
#include "server/tensor_assembler.h"
#include "tests/fuzz/fuzz_check.h"

namespace scatterbrain {
namespace fuzz {
namespace {

using server::RequestSpec;
using server::TensorAssembler;
using server::TensorBuffer;

// Small requests only (64 KiB of q + k + v), with at most 64 messages and 4
// requests uploading at once: each input then runs in milliseconds.
constexpr int64_t kMaxRequestBytes = 64 << 10;
constexpr int64_t kMaxSeq = 128;
constexpr int kMaxMessages = 64;
constexpr size_t kMaxUploads = 4;

struct Upload {
  RequestSpec spec;
  TensorAssembler tensors[3];  // q, k, v
  std::string sent[3];         // the bytes appended, to check the decoding
  bool complete() const {
    return tensors[0].complete() && tensors[1].complete() &&
           tensors[2].complete();
  }
};

Backend& Cpu() {
  // One thread: the fuzzer's own loop is the parallelism, and results do
  // not depend on a pool.
  static Backend* backend = [] {
    BackendOptions options;
    options.threads = 1;
    return MakeCpuBackend(options).release();
  }();
  return *backend;
}

bool AllFinite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) return false;
  }
  return true;
}

// The settings that drive the cost, capped (the request was validated with
// its own values; these stay valid: num_features stays even).
void CapCost(AttentionParams& p) {
  p.num_features = std::min(p.num_features, 64);
  p.num_hashes = std::min(p.num_hashes, 2);
  p.kmeans_iterations = std::min(p.kmeans_iterations, 4);
  p.hash_projections = std::min(p.hash_projections, 8);
  p.calibration_rows = std::min(p.calibration_rows, 32);
}

void Compute(Upload& upload) {
  const RequestSpec& spec = upload.spec;
  TensorBuffer in[3];
  bool finite = true;
  for (int t = 0; t < 3; ++t) {
    in[t] = upload.tensors[t].Take();
    const std::string& sent = upload.sent[t];
    const int64_t n =
        static_cast<int64_t>(sent.size()) / DTypeBytes(spec.dtype);
    FUZZ_CHECK(in[t].size == n && in[t].dtype == DType::kFloat32,
               "assembled tensor size");
    std::vector<float> want(static_cast<size_t>(n));
    DecodeToFloat(spec.dtype, sent.data(), n, want.data());
    FUZZ_CHECK(n == 0 || std::memcmp(want.data(), in[t].data(),
                                     static_cast<size_t>(n) * 4) == 0,
               "assembled float32 differs from the decoded bytes");
    finite = finite && AllFinite(in[t].data(), n);
  }
  TensorBuffer out;
  if (!out.Allocate(spec.out_elements, "output").ok()) return;
  AttentionCall call;
  call.params = spec.params;
  CapCost(call.params);
  call.params.key_lengths =
      spec.key_lengths.empty() ? nullptr : spec.key_lengths.data();
  call.q = TensorRef{in[0].raw(), in[0].dtype, in[0].space()};
  call.k = TensorRef{in[1].raw(), in[1].dtype, in[1].space()};
  call.v = TensorRef{in[2].raw(), in[2].dtype, in[2].space()};
  call.out = MutableTensorRef{out.data(), DType::kFloat32, out.space()};
  Cpu().ForwardBatch(absl::MakeSpan(&call, 1));
  if (!finite) {
    FUZZ_CHECK(call.status.code() == absl::StatusCode::kInvalidArgument,
               "non-finite input not refused: " + call.status.ToString());
    return;
  }
  // Finite inputs whose magnitudes overflow float32 inside the computation
  // are refused after it, naming the output (never answered with NaN).
  if (!call.status.ok()) {
    FUZZ_CHECK(call.status.code() == absl::StatusCode::kInvalidArgument &&
                   absl::StartsWith(call.status.message(), "out: non-finite"),
               "finite input failed: " + call.status.ToString());
    return;
  }
  FUZZ_CHECK(AllFinite(out.data(), spec.out_elements),
             "non-finite output from finite input");
  FUZZ_CHECK(call.stats.workspace_bytes >= 0 &&
                 call.stats.denominator_guards >= 0 &&
                 call.stats.fallbacks >= 0,
             "negative stats");
  std::string wire(static_cast<size_t>(spec.out_bytes), '\0');
  EncodeFromFloat(spec.output_dtype, out.data(), spec.out_elements,
                  wire.data());
}

class Stream {
 public:
  void Handle(const v1::AttendRequest& m) {
    switch (m.kind_case()) {
      case v1::AttendRequest::kHeader:
        return Header(m.header());
      case v1::AttendRequest::kChunk:
        return Chunk(m.chunk());
      case v1::AttendRequest::kCancel:
        uploads_.erase(m.cancel().request_id());
        return;
      case v1::AttendRequest::KIND_NOT_SET:
        return;
    }
  }

 private:
  void Header(const v1::RequestHeader& header) {
    // A duplicate id fails the request it names (the server answers both).
    if (uploads_.erase(header.request_id()) > 0) return;
    server::RequestLimits limits;
    limits.max_request_bytes = kMaxRequestBytes;
    limits.max_seq = kMaxSeq;
    absl::StatusOr<RequestSpec> spec =
        server::SpecFromHeader(header, limits, /*require_id=*/true);
    if (!spec.ok()) return CheckClientError(spec.status(), "SpecFromHeader");
    FUZZ_CHECK(
        spec->q_bytes + spec->k_bytes + spec->v_bytes <= kMaxRequestBytes &&
            spec->out_bytes <= kMaxRequestBytes,
        "spec over the request limit");
    if (uploads_.size() >= kMaxUploads) return;
    auto upload = std::make_unique<Upload>();
    upload->spec = *std::move(spec);
    const RequestSpec& s = upload->spec;
    const char* names[3] = {"q", "k", "v"};
    const int64_t elements[3] = {s.q_elements, s.k_elements, s.v_elements};
    for (int t = 0; t < 3; ++t) {
      const absl::Status st =
          upload->tensors[t].Init(names[t], s.dtype, elements[t]);
      if (!st.ok()) return CheckClientError(st, "TensorAssembler::Init");
    }
    uploads_[s.request_id] = std::move(upload);
  }

  void Chunk(const v1::TensorChunk& chunk) {
    auto it = uploads_.find(chunk.request_id());
    if (it == uploads_.end()) return;  // answered with an error, no state
    const int t = static_cast<int>(chunk.tensor()) - v1::TENSOR_NAME_Q;
    if (t < 0 || t > 2) {
      uploads_.erase(it);
      return;
    }
    Upload& upload = *it->second;
    const absl::Status st =
        upload.tensors[t].Append(chunk.offset(), chunk.data());
    if (!st.ok()) {
      CheckClientError(st, "TensorAssembler::Append");
      uploads_.erase(it);
      return;
    }
    upload.sent[t] += chunk.data();
    FUZZ_CHECK(upload.tensors[t].received_bytes() ==
                   static_cast<int64_t>(upload.sent[t].size()),
               "received_bytes");
    if (!upload.complete()) return;
    std::unique_ptr<Upload> done = std::move(it->second);
    uploads_.erase(it);
    Compute(*done);
  }

  std::map<std::string, std::unique_ptr<Upload>> uploads_;
};

}  // namespace
}  // namespace fuzz
}  // namespace scatterbrain

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A string field with invalid UTF-8 fails its parse, and protobuf logs
  // each one: thousands of lines a second while fuzzing.
  static const bool quiet = [] {
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)quiet;
  scatterbrain::fuzz::Stream stream;
  scatterbrain::v1::AttendRequest m;
  for (int i = 0; i < scatterbrain::fuzz::kMaxMessages && size > 0; ++i) {
    size_t n = size;
    if (size >= 2) {
      n = std::min<size_t>(data[0] | (size_t{data[1]} << 8), size - 2);
      data += 2;
      size -= 2;
    }
    // An unparseable message ends the stream (the server ends it with an
    // error status).
    if (!m.ParseFromArray(data, static_cast<int>(n))) break;
    data += n;
    size -= n;
    stream.Handle(m);
  }
  return 0;
}
