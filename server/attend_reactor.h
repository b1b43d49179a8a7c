// scatterbrain/server/attend_reactor.h — one Attend stream: its reads
// (headers, chunks, cancels), its requests' lifecycle, its single write in
// flight, and when it finishes.
//
// Lifetime: gRPC owns the reactor until OnDone; code running outside gRPC's
// reactions (the executor's completions, the service's drain notice) holds
// a short extra reference (Ref/Unref), so the object is deleted by
// whichever lets go last. Finish is called exactly once, when the reads are
// over (or the server drains an idle stream), no job of the stream is still
// with the executor (its `done` callback points at the reactor) and no
// write is in flight. Finish, StartRead and StartWrite are never called
// under the reactor's mutex (a reaction may run inline), and Finish is the
// last thing a thread without a reference does with the reactor.
#ifndef SCATTERBRAIN_SERVER_ATTEND_REACTOR_H_
#define SCATTERBRAIN_SERVER_ATTEND_REACTOR_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "scatterbrain/v1/attention.pb.h"
#include "server/answer_writer.h"
#include "server/executor.h"
#include "server/service.h"
#include "server/stream_requests.h"

namespace scatterbrain {
namespace server {

class AttentionServiceImpl::AttendReactor final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  AttendReactor(AttentionServiceImpl* svc, grpc::CallbackServerContext* ctx);

  // Registers with the service and issues the first read.
  void Begin();
  void Ref() { refs_.fetch_add(1); }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }
  // The service started draining: an idle stream ends now (UNAVAILABLE).
  void OnServerDrain();
  // The timer (service.h): fails uploads past upload_timeout_s, ends the
  // stream when idle past stream_idle_timeout_s, cancels it when a write has
  // waited past send_timeout_s. `now_us` from the service's clock.
  void CheckTimeouts(int64_t now_us);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  ~AttendReactor() override = default;

  // --- read path (OnReadDone calls are serialised by the single read) ----
  void HandleHeader(const v1::RequestHeader& header);
  void HandleChunk(const v1::TensorChunk& chunk);
  void HandleCancel(const std::string& id);
  // The client half-closed (or the stream broke): uploads can never finish.
  // `why` ends each incomplete upload's error message.
  void EndOfReads(const std::string& why);
  // Message `n` did not parse: reading stops, uploads fail, and once the
  // requests already submitted are answered the stream ends with
  // INVALID_ARGUMENT.
  void BrokenMessage(int64_t n, size_t bytes);
  // The stream is to end with `status` once nothing is in flight (drain,
  // idle timeout, a broken message); the first reason given stands.
  void EndWhenIdleLocked(absl::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The upload `id` is complete: its job goes to the executor.
  void Submit(const std::string& id);
  // An upload failed: the request is answered with `st`, late chunks of it
  // are dropped.
  void FailUpload(const std::string& id, const absl::Status& st);
  // A submitted request turned out bad: answered with `st` and cancelled.
  void FailSubmitted(const std::string& id, const JobPtr& job,
                     const absl::Status& st);

  // The one place a live request becomes an error answer: removes `id`
  // (only if it is still `job`'s, when given) and queues `st` for it.
  // Returns its job, or null when `id` was not live.
  JobPtr FailLiveLocked(const std::string& id, const JobPtr& job,
                        const absl::Status& st)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // --- executor completions (dispatcher thread or a canceller) ------------
  void OnJobDone(const JobPtr& job, JobResult result);

  // --- write path --------------------------------------------------------
  // An error for a request that was never accepted.
  void QueueError(const std::string& id, const absl::Status& st,
                  const std::string& method);
  void QueueLocked(std::unique_ptr<Answer> answer)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops queued answers that can no longer be sent. The front one is the
  // writer's while a write is in flight (it may be filling it).
  void DropWritesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The code a request dropped with the stream is counted under.
  absl::StatusCode DroppedCodeLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Every answered request is counted once: requests_total, the duration
  // histogram and, if accepted, the in-flight gauge.
  void FinalizeLocked(const std::string& method, bool accepted,
                      int64_t start_us, absl::StatusCode code)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts the next write if none is in flight. The message is filled
  // (output encoded from float32) outside the lock: while write_in_flight_
  // is set, only this thread touches the front answer and write_msg_.
  void PumpWrites();
  void MaybeFinish();

  AttentionServiceImpl* const svc_;
  grpc::CallbackServerContext* const ctx_;
  std::atomic<int> refs_{1};  // gRPC's, released in OnDone

  // Read path only.
  grpc::ByteBuffer read_buf_;
  v1::AttendRequest read_msg_;
  int64_t messages_read_ = 0;
  Uploads uploads_;
  // Set by the timer when it failed an upload: the read path then frees it.
  std::atomic<bool> uploads_timed_out_{false};

  // The writer's (whoever set write_in_flight_).
  v1::AttendResponse write_msg_;
  grpc::ByteBuffer write_buf_;
  int64_t write_bytes_ = 0;

  absl::Mutex mu_;
  LiveRequests live_ ABSL_GUARDED_BY(mu_);
  AnswerQueue answers_ ABSL_GUARDED_BY(mu_);
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_broken_ ABSL_GUARDED_BY(mu_) = false;  // no write can succeed
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool deadline_exceeded_ ABSL_GUARDED_BY(mu_) = false;
  // Set when the stream is to end once idle with this status (a stream-level
  // error, the idle timeout); OK when not set.
  absl::Status end_status_ ABSL_GUARDED_BY(mu_);
  bool ending_ ABSL_GUARDED_BY(mu_) = false;  // end when idle (drain or idle)
  int64_t last_activity_us_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t write_started_us_ ABSL_GUARDED_BY(mu_) = 0;
  bool send_timed_out_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelling_ ABSL_GUARDED_BY(mu_) = false;  // the timer's TryCancel
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  int read_callbacks_ ABSL_GUARDED_BY(mu_) = 0;    // OnReadDone running
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;  // no read outstanding
  int pending_jobs_ ABSL_GUARDED_BY(mu_) = 0;      // with the executor
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_ATTEND_REACTOR_H_
