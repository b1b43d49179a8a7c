// scatterbrain/client/cpp/stream_call.h — StreamCall: one gRPC Attend call
// (a bidirectional stream) with many requests multiplexed on it. Internal to
// the client library; AttendStream (attend_stream.h) builds on it.
//
// Apart from AttendStream because the two have different jobs: StreamCall
// knows the wire (headers, chunks, cancels, the in-flight window, response
// reassembly) and nothing of retries; AttendStream knows retries and
// replaces a StreamCall that broke by a new one.
//
// Writes go one at a time (gRPC allows one write in flight): requests queue
// in `sending_`, and the next message (a header or a chunk of at most
// chunk_bytes) is cut from the queue's front only when the previous write is
// done, so a request's bytes exist once (in its PreparedRequest) however long
// the queue. A read is always outstanding until the stream ends; StartWrite
// from outside a reaction happens under mu_ and only while !read_closed_,
// which is what keeps OnDone from running concurrently with it (the
// outstanding read holds the call open).
#ifndef SCATTERBRAIN_CLIENT_CPP_STREAM_CALL_H_
#define SCATTERBRAIN_CLIENT_CPP_STREAM_CALL_H_

#include <grpcpp/client_context.h>
#include <grpcpp/support/client_callback.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "client/cpp/prepare.h"
#include "common/dtype.h"
#include "scatterbrain/v1/attention.grpc.pb.h"

namespace scatterbrain {
namespace client {
namespace internal {

class StreamCall
    : public grpc::ClientBidiReactor<v1::AttendRequest, v1::AttendResponse> {
 public:
  // Called once per request, on a gRPC callback thread, never under mu_.
  using Callback = std::function<void(absl::StatusOr<AttendResult>)>;

  // Starts the call. At most `max_on_wire` requests have their header sent
  // and their answer incomplete (0 = no limit); more wait here, in order.
  StreamCall(v1::AttentionService::Stub* stub, int64_t chunk_bytes,
             int max_on_wire, absl::Duration deadline);
  ~StreamCall() override = default;

  // Queues a request under `id` ("" = a fresh "r<n>"); `done` gets its
  // result or error exactly once unless Submit fails.
  absl::StatusOr<std::string> Submit(std::shared_ptr<const PreparedRequest> req,
                                     std::string id, Callback done);
  // Drops an unsent request at once, else tells the server (CancelRequest).
  void Cancel(const std::string& id);
  int64_t inflight() const;
  // Half-closes once the queue is sent and waits for the call's end.
  absl::Status Finish();
  void TryCancel() { ctx_.TryCancel(); }
  // The call failed or ended: a new request here would fail too.
  bool Broken() const;
  // Serialized bytes of the messages written and read so far (protobuf
  // encoding plus gRPC's 5-byte message prefix; HTTP/2 framing not
  // counted): what the benchmarks report per request.
  int64_t bytes_sent() const;
  int64_t bytes_received() const;
  // Half-closes without waiting (a stream replaced after a failure).
  void Close();

  // gRPC's reactions.
  void OnWriteDone(bool ok) override;
  void OnWritesDoneDone(bool /*ok*/) override {}
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  struct Outgoing {
    std::string id;
    std::shared_ptr<const PreparedRequest> req;
    bool header_sent = false;
    bool abandoned = false;  // cancelled while its chunks were being sent
    // Cuts q, k, v (set when the header is sent).
    std::optional<TensorChunker> chunks = std::nullopt;
  };
  struct Incoming {
    Callback done;
    bool cancel_sent = false;
    bool on_wire = false;  // its header was sent (counts in on_wire_)
    bool header = false;
    OutputFormat output;  // from the response header
    int64_t received_bytes = 0;
    AttendResult result;
  };

  // Fills write_msg_ with the next message; false when nothing is queued.
  bool FillNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeStartWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Consumes read_msg_; returns the finished request's result (and its
  // callback in *done) when this message completed one, else nullopt.
  std::optional<absl::StatusOr<AttendResult>> HandleResponse(Callback* done);

  grpc::ClientContext ctx_;
  const int64_t chunk_bytes_;
  const int max_on_wire_;

  mutable absl::Mutex mu_;
  int on_wire_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<v1::AttendRequest> control_ ABSL_GUARDED_BY(mu_);
  std::deque<Outgoing> sending_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, Incoming> inflight_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_done_ ABSL_GUARDED_BY(mu_) = false;
  bool read_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // The message of the write in flight (written under mu_ only while no
  // write is in flight; gRPC reads it until OnWriteDone).
  v1::AttendRequest write_msg_;
  // Touched only by OnReadDone (one read in flight) and under mu_.
  v1::AttendResponse read_msg_;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);  // set by OnDone
  int64_t bytes_sent_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t bytes_received_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Notification done_;
};

}  // namespace internal
}  // namespace client
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CPP_STREAM_CALL_H_
