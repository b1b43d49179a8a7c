// scatterbrain/client/cpp/client.h — C++ client of scatterbrain.v1.
//
// AttentionClient owns a channel. Attend() sends one request over an
// Attend stream (header + chunks of at most chunk_bytes, so tensors of any
// size travel); AttendStream multiplexes many requests in flight on one
// stream; AttendUnary() is the one-message call for small tensors. Inputs
// and outputs are float32 in memory; float16 / bfloat16 on the wire are
// converted here. Every error is an absl::Status (gRPC codes map 1:1; a
// per-request error on a stream carries the server's code and message).
#ifndef SCATTERBRAIN_CLIENT_CPP_CLIENT_H_
#define SCATTERBRAIN_CLIENT_CPP_CLIENT_H_

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/request_stats.h"
#include "kernels/params.h"
#include "scatterbrain/v1/attention.grpc.pb.h"

namespace grpc {
class Channel;
class ChannelCredentials;
}  // namespace grpc

namespace scatterbrain {
namespace client {

namespace v1 = ::scatterbrain::v1;

struct ClientOptions {
  // Where the server is:
  //  "host:port"                      one endpoint (gRPC's dns resolver);
  //  "10.0.0.1:50051,10.0.0.2:50051"  several endpoints, IP literals (or
  //                                   localhost): an ipv4:/// (ipv6:///)
  //                                   address list, balanced round_robin;
  //  any gRPC target URI ("dns:///name:port", "ipv4:///...", "unix:...")
  //                                   passed through as is.
  std::string target = "localhost:50051";
  // Bytes of tensor data per TensorChunk message on Attend streams.
  int64_t chunk_bytes = int64_t{1} << 20;
  // Requests of one AttendStream on the wire at once (header sent, last
  // response not received); more wait in the client, in order, so a stream
  // never exceeds the server's max_inflight_per_stream (64 by default).
  // 0 = no limit.
  int max_inflight_per_stream = 32;
  // Deadline of each unary call and of each blocking Attend() (its stream);
  // streams from OpenStream() take theirs as an argument. Infinite = none.
  absl::Duration deadline = absl::InfiniteDuration();
  // Largest gRPC message sent or received (AttendUnary carries whole
  // tensors in one message; the server's own limit is in ServerInfo).
  int max_message_bytes = 256 << 20;
  // "" = round_robin: a list of endpoints, and a dns:/// name resolving to
  // several addresses, spread calls over all of them (set as the channel's
  // default service config). Any other gRPC policy name overrides it.
  std::string load_balancing_policy;
  // Retries of UNAVAILABLE (a server down, restarting or unreachable, or a
  // stream that broke before the request's answer was complete): the
  // computation is deterministic and side-effect free, so a whole request is
  // sent again, up to max_attempts tries in all (1 = no retry), waiting
  // initial_backoff, then x2 per try up to max_backoff, each wait with
  // +-20% jitter. Applies to Attend(), AttendUnary() and AttendStream
  // (whose unanswered requests are resubmitted on a new stream, same ids).
  // Other codes (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED...)
  // are never retried. The deadline applies to each try.
  int max_attempts = 5;
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(1);
  // Give this channel its own TCP connection(s) instead of sharing gRPC's
  // global subchannel pool with identical channels in the process (load
  // generators: one connection per simulated client).
  bool own_connection = false;
  // nullptr = insecure (plaintext), what scatterbrain_server serves.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

// [batch, heads, seq, dim] shapes of one request: q is [batch, heads,
// seq_q, dim], k [batch, heads, seq_k, dim], v [batch, heads, seq_k, dim_v],
// the output [batch, heads, seq_q, dim_v]. The core's type (kernels/params.h).
using TensorShape = ::scatterbrain::AttentionShape;

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

// What the server reported for one request (v1.Stats), as the core's type.
using Stats = ::scatterbrain::RequestStats;

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

enum class ServingStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
const char* ServingStatusName(ServingStatus s);

// Many requests in flight on one Attend stream. Thread-safe: Submit from any
// thread. Callbacks run on gRPC's callback threads (or the stream's retry
// thread), one at a time per response, and must not block (nor destroy this
// stream). When the stream fails with UNAVAILABLE (its server died), the
// requests without a complete answer are resubmitted, same ids, on a new
// stream after a backoff, up to ClientOptions.max_attempts tries each; each
// request still completes exactly once. Finish() then reports the status
// of the newest stream.
class AttendStream {
 public:
  using Callback = std::function<void(absl::StatusOr<AttendResult>)>;

  ~AttendStream();  // cancels requests still in flight, waits for the end
  AttendStream(const AttendStream&) = delete;
  AttendStream& operator=(const AttendStream&) = delete;

  // Queues a request; `done` gets its result or error exactly once (not at
  // all when Submit itself fails: bad input, stream finished, duplicate id).
  // Returns the request id.
  absl::StatusOr<std::string> Submit(const AttendInput& in, Callback done);
  absl::StatusOr<std::string> Submit(
      std::shared_ptr<const PreparedRequest> request, std::string request_id,
      Callback done);
  // The same with a future (Submit errors arrive through it).
  std::future<absl::StatusOr<AttendResult>> Submit(const AttendInput& in);
  std::future<absl::StatusOr<AttendResult>> Submit(
      std::shared_ptr<const PreparedRequest> request,
      std::string request_id = "");
  // Blocking convenience: Submit and wait.
  absl::StatusOr<AttendResult> Attend(const AttendInput& in);

  // Drops one request: its callback gets CANCELLED (now if it has not been
  // sent yet, else when the server confirms). Unknown ids are ignored.
  void Cancel(const std::string& request_id);
  // Requests submitted and not completed (waiting to be sent included).
  int64_t inflight() const;
  // Half-closes the stream and waits for every request in flight to
  // complete and the stream to end; returns the stream's final status.
  absl::Status Finish();
  // Ends the stream now: every request in flight gets CANCELLED.
  void TryCancel();

 private:
  friend class AttentionClient;
  class Reactor;  // one gRPC call
  class Impl;     // the calls (a new one after UNAVAILABLE) and retries
  explicit AttendStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class AttentionClient {
 public:
  using Options = ClientOptions;

  // INVALID_ARGUMENT for a malformed target or options. Does not connect
  // (gRPC connects lazily); see WaitForConnected.
  static absl::StatusOr<std::unique_ptr<AttentionClient>> Create(
      Options options);
  ~AttentionClient();

  // One request over its own Attend stream (chunked: any size). Retries
  // UNAVAILABLE as ClientOptions.max_attempts says.
  absl::StatusOr<AttendResult> Attend(const AttendInput& in);
  // One request in one message (limited by the message size). Retries
  // UNAVAILABLE as ClientOptions.max_attempts says.
  absl::StatusOr<AttendResult> AttendUnary(const AttendInput& in);
  // A stream for many requests in flight; `deadline` bounds the stream.
  std::unique_ptr<AttendStream> OpenStream(
      absl::Duration deadline = absl::InfiniteDuration());

  // grpc.health.v1 Check of `service` ("" = the whole server).
  absl::StatusOr<ServingStatus> Health(const std::string& service = "");
  absl::StatusOr<v1::ServerInfo> GetServerInfo();
  // True once the channel is READY (connects if idle).
  bool WaitForConnected(absl::Duration timeout);

  const Options& options() const { return options_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  AttentionClient(Options options, std::shared_ptr<grpc::Channel> channel);
  absl::StatusOr<AttendResult> AttendUnaryOnce(const AttendInput& in);

  Options options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AttentionService::Stub> stub_;
};

// --- helpers (exposed for the CLI and tests) ------------------------------

// The gRPC target and load-balancing policy ClientOptions resolve to.
struct ResolvedTarget {
  std::string uri;
  std::string lb_policy;  // "" = the client's default (round_robin)
};
absl::StatusOr<ResolvedTarget> ResolveTarget(const ClientOptions& options);

// The wait before retry number `retry` (1 = the first retry):
// initial * 2^(retry-1), capped at max, times a random factor in [0.8, 1.2].
absl::Duration RetryBackoff(const ClientOptions& options, int retry);

}  // namespace client
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CPP_CLIENT_H_
