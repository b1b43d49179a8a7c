// scatterbrain/client/cpp/client.h — C++ client of scatterbrain.v1.
//
// AttentionClient owns a channel. Attend() sends one request over an
// Attend stream (header + chunks of at most chunk_bytes, so tensors of any
// size travel); AttendStream multiplexes many requests in flight on one
// stream; AttendUnary() is the one-message call for small tensors. Inputs
// and outputs are float32 in memory; float16 / bfloat16 on the wire are
// converted here. Every error is an absl::Status (gRPC codes map 1:1; a
// per-request error on a stream carries the server's code and message).
//
// This header is the one users include: it brings the options, the request
// types, the stream, the target resolution, the retry policy and the health
// check with it (README.md in this folder says which file holds what).
#ifndef SCATTERBRAIN_CLIENT_CPP_CLIENT_H_
#define SCATTERBRAIN_CLIENT_CPP_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/cpp/attend_stream.h"
#include "client/cpp/credentials.h"
#include "client/cpp/health.h"
#include "client/cpp/options.h"
#include "client/cpp/prepare.h"
#include "client/cpp/retry.h"
#include "client/cpp/target.h"
#include "scatterbrain/v1/attention.grpc.pb.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace scatterbrain {
namespace client {

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
  // The stream starts its calls on this client's stub: destroy it first.
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

}  // namespace client
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CPP_CLIENT_H_
