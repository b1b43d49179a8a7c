// scatterbrain/client/cpp/attend_stream.h — AttendStream: many requests in
// flight on one Attend stream, with UNAVAILABLE retried on a new stream.
//
// Its own file because it is the client's one stateful object: the requests
// not yet answered, the gRPC call they are on (internal::StreamCall, see
// stream_call.h) and the calls it replaced, and the retry thread. Open one
// with AttentionClient::OpenStream (client.h).
#ifndef SCATTERBRAIN_CLIENT_CPP_ATTEND_STREAM_H_
#define SCATTERBRAIN_CLIENT_CPP_ATTEND_STREAM_H_

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/cpp/options.h"
#include "client/cpp/prepare.h"
#include "scatterbrain/v1/attention.grpc.pb.h"

namespace scatterbrain {
namespace client {

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
  // Serialized bytes of the messages written to and read from the server
  // on every call of this stream so far (protobuf encoding plus gRPC's
  // 5-byte message prefix; HTTP/2 framing not counted).
  int64_t bytes_sent() const;
  int64_t bytes_received() const;
  // Half-closes the stream and waits for every request in flight to
  // complete and the stream to end; returns the stream's final status.
  absl::Status Finish();
  // Ends the stream now: every request in flight gets CANCELLED.
  void TryCancel();

 private:
  friend class AttentionClient;
  class Impl;  // the calls (a new one after UNAVAILABLE) and retries

  // A stream on `stub` (owned by the caller, outliving the stream).
  static std::unique_ptr<AttendStream> Open(v1::AttentionService::Stub* stub,
                                            const ClientOptions& options,
                                            absl::Duration deadline);
  explicit AttendStream(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace client
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CPP_ATTEND_STREAM_H_
