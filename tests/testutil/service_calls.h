// scatterbrain/tests/testutil/service_calls.h — calling the Attend service
// the way a client does, for the service tests: requests with random
// tensors, sending them as header and chunks, collecting replies per id,
// checking an output against local computation, reading a metric.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_SERVICE_CALLS_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_SERVICE_CALLS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/dtype.h"
#include "grpcpp/grpcpp.h"
#include "scatterbrain/v1/attention.grpc.pb.h"
#include "server/server.h"

namespace scatterbrain {
namespace testutil {

namespace pb = ::scatterbrain::v1;

// A request as the client holds it: header plus the tensors' wire bytes.
struct Req {
  pb::RequestHeader header;
  std::string q, k, v;
};

// Options for an in-process test server: 127.0.0.1, gRPC port 0 (a free
// one), no /metrics port, the CPU backend. Tests set the rest.
server::ServerOptions LoopbackServerOptions();
// An insecure channel to 127.0.0.1:`port` with its own connection (a
// separate client) and a 64 MiB receive limit.
std::shared_ptr<grpc::Channel> OwnChannel(int port);

// The core dtype of a wire dtype the test set.
DType Core(pb::DType dtype);
// n random values in [-1.5, 1.5] as `wire_dtype` bytes.
std::string RandomTensor(pb::DType wire_dtype, int64_t n, uint64_t seed);
// A request with small test settings for `method` and random tensors.
Req MakeReq(const std::string& id, pb::Method method, pb::DType dtype, int b,
            int h, int nq, int nk, int d, int dv, uint64_t seed);
// The same computation done locally (CPU backend, same settings and seed),
// as the output bytes the server must send.
std::string LocalOutput(const Req& r);

// What came back for one request id.
struct Reply {
  int messages = 0;
  bool has_header = false;
  pb::ResponseHeader header;
  std::string output;
  int chunks = 0;
  bool has_error = false;
  int code = 0;
  std::string message;
  bool last = false;
  bool out_of_order = false;
};

using StreamRW =
    grpc::ClientReaderWriterInterface<pb::AttendRequest, pb::AttendResponse>;
using Stream = std::unique_ptr<
    grpc::ClientReaderWriter<pb::AttendRequest, pb::AttendResponse>>;

void SendHeader(StreamRW* s, const pb::RequestHeader& h);
void SendChunk(StreamRW* s, const std::string& id, pb::TensorName t,
               uint64_t offset, absl::string_view data);
void SendCancel(StreamRW* s, const std::string& id);
// Sends a whole request. `interleave`: round-robin over q, k and v chunks
// (allowed: only each tensor's own chunks must be in order).
void SendRequest(StreamRW* s, const Req& r, size_t chunk,
                 bool interleave = false);
// Adds one response message to the replies by id.
void Absorb(const pb::AttendResponse& m, std::map<std::string, Reply>* replies);
// Reads until the server ends the stream.
std::map<std::string, Reply> ReadAll(StreamRW* s);
// Reads until every id in `ids` has its last message.
std::map<std::string, Reply> ReadUntilDone(StreamRW* s,
                                           const std::vector<std::string>& ids);
// The reply is req's output, computed locally, with sane stats.
void ExpectOutput(const Reply& r, const Req& req, const std::string& what);
// --- sessions ---------------------------------------------------------------

// CreateSession with `settings`, shape and storage dtype; `token` (if not
// empty) as the bearer token.
grpc::Status CreateSession(pb::AttentionService::Stub* stub,
                           const pb::MethodSettings& settings, int b, int h,
                           int d, int dv, pb::SessionInfo* out,
                           const std::string& token = "",
                           pb::DType kv_dtype = pb::DTYPE_UNSPECIFIED);
// AppendKV: the header, then K's and V's bytes in `chunk`-byte chunks.
grpc::Status AppendKV(pb::AttentionService::Stub* stub, const std::string& id,
                      const std::vector<uint32_t>& counts, pb::DType dtype,
                      const std::string& k, const std::string& v, size_t chunk,
                      pb::SessionInfo* out, const std::string& token = "");
// A request on session `id`: q of `seq_q` rows ([b, h, seq_q, d]) and, with
// `append`, its own k and v.
Req SessionReq(const std::string& request_id, const std::string& id, int seq_q,
               bool append, bool see_all, std::string q, std::string k = "",
               std::string v = "", pb::DType dtype = pb::DTYPE_FLOAT32);
// One request on its own Attend stream; its reply.
Reply AttendOnce(pb::AttentionService::Stub* stub, const Req& r,
                 const std::string& token = "");
// Sets `authorization: Bearer <token>` on `ctx` when `token` is not empty.
void WithToken(grpc::ClientContext* ctx, const std::string& token);

// The value of one sample line of the text exposition ("name{labels} v");
// -1 when absent.
double MetricValue(const std::string& text, const std::string& series);

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_SERVICE_CALLS_H_
