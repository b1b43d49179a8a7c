// scatterbrain/server/attend_reactor.cc — see attend_reactor.h.
#include "server/attend_reactor.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/proto_convert.h"

namespace scatterbrain {
namespace server {

AttentionServiceImpl::AttendReactor::AttendReactor(
    AttentionServiceImpl* svc, grpc::CallbackServerContext* ctx)
    : svc_(svc), ctx_(ctx), answers_(svc->options_.max_queued_answers) {
  last_activity_us_ = svc->clock_->NowMicros();
}

void AttentionServiceImpl::AttendReactor::Begin() {
  const bool draining = svc_->Register(this);
  {
    absl::MutexLock lock(&mu_);
    if (draining) EndWhenIdleLocked(DrainingError());
    ++read_callbacks_;  // until the first read is issued
  }
  StartRead(&read_buf_);
  {
    absl::MutexLock lock(&mu_);
    --read_callbacks_;
  }
  MaybeFinish();
}

void AttentionServiceImpl::AttendReactor::OnServerDrain() {
  {
    absl::MutexLock lock(&mu_);
    EndWhenIdleLocked(DrainingError());
  }
  MaybeFinish();
}

void AttentionServiceImpl::AttendReactor::CheckTimeouts(int64_t now_us) {
  const ServiceOptions& o = svc_->options_;
  const auto past = [now_us](int64_t since_us, double timeout_s) {
    return timeout_s > 0 &&
           static_cast<double>(now_us - since_us) >= timeout_s * 1e6;
  };
  bool cancel_stream = false;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    for (const std::string& id : live_.IdsWhere([&](const LiveRequest& r) {
           return r.uploading && past(r.start_us, o.upload_timeout_s);
         })) {
      // The read path frees its buffers at its next message, or when the
      // stream ends (uploads whose job is cancelled are dropped).
      JobPtr job = FailLiveLocked(
          id, nullptr,
          absl::DeadlineExceededError(absl::StrCat(
              "request '", id, "': its tensors were not complete ",
              o.upload_timeout_s,
              " s after its header (the server's upload_timeout_s); it is "
              "dropped")));
      if (job != nullptr) job->cancelled.store(true);
      uploads_timed_out_.store(true);
      svc_->metrics_->ProtocolErrorSeen(ProtocolError::kUploadTimeout);
    }
    if (write_in_flight_ && !send_timed_out_ &&
        past(write_started_us_, o.send_timeout_s)) {
      send_timed_out_ = true;  // once: the cancel takes effect shortly
      // Until TryCancel has returned, the stream must not finish: ctx_ is
      // gRPC's and goes with OnDone.
      cancelling_ = true;
      cancel_stream = true;
    } else if (!ending_ && live_.empty() && answers_.empty() &&
               pending_jobs_ == 0 && !write_in_flight_ &&
               past(last_activity_us_, o.stream_idle_timeout_s)) {
      EndWhenIdleLocked(absl::UnavailableError(
          absl::StrCat("stream idle for ", o.stream_idle_timeout_s,
                       " s with no request in flight (the server's "
                       "stream_idle_timeout_s); open a new stream")));
      svc_->metrics_->ProtocolErrorSeen(ProtocolError::kIdleTimeout);
    }
  }
  if (cancel_stream) {
    // The client stopped reading: what its answers hold goes now (OnCancel
    // drops them).
    svc_->metrics_->ProtocolErrorSeen(ProtocolError::kSendTimeout);
    ctx_->TryCancel();
    {
      absl::MutexLock lock(&mu_);
      cancelling_ = false;
    }
    MaybeFinish();
    return;
  }
  PumpWrites();
  MaybeFinish();
}

void AttentionServiceImpl::AttendReactor::OnReadDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    ++read_callbacks_;
    if (ok) last_activity_us_ = svc_->clock_->NowMicros();
  }
  bool parsed = false;
  if (!ok) {
    EndOfReads("the stream's requests ended");
  } else {
    ++messages_read_;
    const size_t bytes = read_buf_.Length();
    svc_->metrics_->BytesReceived(static_cast<int64_t>(bytes));
    // Uploads timed out meanwhile (the timer cannot touch uploads_): free
    // their buffers.
    if (uploads_timed_out_.exchange(false)) uploads_.DropCancelled();
    read_msg_.Clear();
    parsed = grpc::SerializationTraits<v1::AttendRequest>::Deserialize(
                 &read_buf_, &read_msg_)
                 .ok();
    if (!parsed) BrokenMessage(messages_read_, bytes);
  }
  if (parsed) {
    switch (read_msg_.kind_case()) {
      case v1::AttendRequest::kHeader:
        HandleHeader(read_msg_.header());
        break;
      case v1::AttendRequest::kChunk:
        HandleChunk(read_msg_.chunk());
        break;
      case v1::AttendRequest::kCancel:
        HandleCancel(read_msg_.cancel().request_id());
        break;
      default:
        svc_->metrics_->ProtocolErrorSeen(ProtocolError::kEmptyMessage);
        QueueError("",
                   absl::InvalidArgumentError(
                       "AttendRequest.kind: empty message (set header, "
                       "chunk or cancel)"),
                   /*method=*/"");
        break;
    }
    bool restart;
    {
      absl::MutexLock lock(&mu_);
      // A client that sends faster than it reads (or floods bad input) is
      // not read further until its answers drain: bounded memory.
      read_paused_ = !finished_ && answers_.ShouldPauseReads();
      restart = !finished_ && !read_paused_;
    }
    // Drop the last chunk's bytes now rather than at the next read.
    read_msg_.Clear();
    // read_callbacks_ > 0 keeps a drain from finishing the stream between
    // the check above and this call.
    if (restart) StartRead(&read_buf_);
  }
  {
    absl::MutexLock lock(&mu_);
    --read_callbacks_;
  }
  PumpWrites();
  MaybeFinish();
}

void AttentionServiceImpl::AttendReactor::OnWriteDone(bool ok) {
  bool resume_reads = false;
  {
    absl::MutexLock lock(&mu_);
    write_in_flight_ = false;
    last_activity_us_ = svc_->clock_->NowMicros();
    if (ok) svc_->metrics_->BytesSent(write_bytes_);
    // A request counts as answered once its last message is out; if that
    // write failed, the client never saw the answer.
    if (std::unique_ptr<Answer> done = answers_.FinishWritten()) {
      FinalizeLocked(done->method, done->accepted, done->start_us,
                     ok ? done->error.code() : DroppedCodeLocked());
    }
    if (!ok) {
      writes_broken_ = true;
      DropWritesLocked();
    }
    if (read_paused_ && !finished_ && answers_.CanResumeReads()) {
      read_paused_ = false;
      resume_reads = true;
      ++read_callbacks_;  // as in OnReadDone: no drain-finish until issued
    }
  }
  if (resume_reads) {
    StartRead(&read_buf_);
    absl::MutexLock lock(&mu_);
    --read_callbacks_;
  }
  PumpWrites();
  MaybeFinish();
}

void AttentionServiceImpl::AttendReactor::OnCancel() {
  const bool deadline = AtDeadline(*ctx_);
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    deadline_exceeded_ = deadline;
    writes_broken_ = true;
    live_.TakeAll([this](const std::string&,
                         LiveRequest& live) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      live.job->cancelled.store(true);
      FinalizeLocked(live.job->spec.method_label,
                     /*accepted=*/true, live.start_us, DroppedCodeLocked());
    });
    DropWritesLocked();
  }
  // Queued jobs of this stream leave the batcher now; their `done` runs
  // here (mu_ not held) and only counts them off.
  svc_->executor_->RemoveCancelled();
  MaybeFinish();
}

void AttentionServiceImpl::AttendReactor::OnDone() {
  svc_->Unregister(this);
  Unref();
}

// --- read path ---------------------------------------------------------------

void AttentionServiceImpl::AttendReactor::HandleHeader(
    const v1::RequestHeader& header) {
  const std::string& id = header.request_id();
  const std::string method = MethodLabel(header.settings().method());
  uploads_.ForgetDead(id);
  JobPtr duplicate;
  bool duplicate_submitted = false;
  bool over_limit = false;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    if (live_.contains(id)) {
      // The id names a request in flight: drop both, answer once, so the
      // id's one final message stays unambiguous for the client.
      duplicate = FailLiveLocked(
          id, nullptr,
          absl::InvalidArgumentError(absl::StrCat(
              "header.request_id: '", id,
              "' is already in flight on this stream (an id may be reused "
              "only after its last response); both requests are dropped")));
      duplicate->cancelled.store(true);
      duplicate_submitted = !uploads_.contains(id);
    } else {
      over_limit = static_cast<int64_t>(live_.size() + answers_.accepted()) >=
                   svc_->options_.max_inflight_per_stream;
    }
  }
  if (duplicate != nullptr) {
    uploads_.Take(id);
    uploads_.MarkDead(id);
    if (duplicate_submitted) svc_->executor_->Cancel(duplicate);
    return;
  }
  auto reject = [&](const absl::Status& st) {
    uploads_.MarkDead(id);
    QueueError(id, st, method);
  };
  if (svc_->draining()) return reject(DrainingError());
  if (over_limit) {
    return reject(absl::ResourceExhaustedError(absl::StrCat(
        "header: ", svc_->options_.max_inflight_per_stream,
        " requests already in flight on this stream (the server's "
        "max_inflight_per_stream); wait for responses or open another "
        "stream")));
  }
  std::shared_ptr<KvSession> session;  // set for header.session
  absl::StatusOr<RequestSpec> spec =
      svc_->SpecFor(header, *ctx_, /*require_id=*/true, &session);
  if (!spec.ok()) return reject(spec.status());
  // Admission: the request's buffers must fit the server's budget before
  // anything is allocated.
  absl::StatusOr<MemoryReservation> memory =
      svc_->ReserveMemory(*spec, /*unary_bytes=*/0);
  if (!memory.ok()) return reject(memory.status());
  // The bytes land in the backend's host buffers (pinned on CUDA).
  // A backend that converts on its device gets the wire bytes as they are.
  const HostAllocator alloc = svc_->executor_->host_allocator();
  const bool wire = svc_->executor_->inputs_in_wire_dtype();
  auto upload = std::make_unique<Upload>();
  absl::Status st =
      upload->q.Init("q", spec->dtype, spec->q_elements, alloc, wire);
  if (st.ok()) {
    st = upload->k.Init("k", spec->dtype, spec->k_elements, alloc, wire);
  }
  if (st.ok()) {
    st = upload->v.Init("v", spec->dtype, spec->v_elements, alloc, wire);
  }
  if (!st.ok()) return reject(st);
  if (!svc_->TryAccept()) return reject(DrainingError());
  upload->job = std::make_shared<Job>();
  upload->job->spec = *std::move(spec);
  upload->job->memory = *std::move(memory);
  upload->job->session = std::move(session);
  const int64_t now = svc_->clock_->NowMicros();
  {
    absl::MutexLock lock(&mu_);
    live_.Add(id, LiveRequest{upload->job, now});
  }
  uploads_.Add(id, std::move(upload));
}

void AttentionServiceImpl::AttendReactor::HandleChunk(
    const v1::TensorChunk& chunk) {
  const std::string& id = chunk.request_id();
  Upload* upload = uploads_.Find(id);
  if (upload == nullptr) {
    if (uploads_.IsDead(id)) return;  // already answered
    JobPtr job;
    {
      absl::MutexLock lock(&mu_);
      job = live_.Find(id);
    }
    uploads_.MarkDead(id);
    if (job != nullptr) {
      // All of its bytes were there and it was submitted: a chunk too many.
      FailSubmitted(id, job,
                    absl::InvalidArgumentError(absl::StrCat(
                        "chunk.offset: ", chunk.offset(), " for tensor ",
                        TensorLabel(chunk.tensor()), " of request '", id,
                        "', whose tensors were already complete")));
    } else {
      // Not a request: counted as a protocol error, not in requests_total.
      svc_->metrics_->ProtocolErrorSeen(ProtocolError::kUnknownRequestId);
      QueueError(id,
                 absl::InvalidArgumentError(absl::StrCat(
                     "chunk.request_id: no request '", id,
                     "' in flight on this stream (its header must come "
                     "first)")),
                 /*method=*/"");
    }
    return;
  }
  if (upload->job->cancelled.load()) {  // timed out: answered already
    uploads_.Take(id);
    uploads_.MarkDead(id);
    return;
  }
  TensorAssembler* t = nullptr;
  switch (chunk.tensor()) {
    case v1::TENSOR_NAME_Q:
      t = &upload->q;
      break;
    case v1::TENSOR_NAME_K:
      t = &upload->k;
      break;
    case v1::TENSOR_NAME_V:
      t = &upload->v;
      break;
    default:
      return FailUpload(
          id, absl::InvalidArgumentError(absl::StrCat(
                  "chunk.tensor: must be TENSOR_NAME_Q, TENSOR_NAME_K or "
                  "TENSOR_NAME_V, got ",
                  TensorLabel(chunk.tensor()))));
  }
  const absl::Status st = t->Append(chunk.offset(), chunk.data());
  if (!st.ok()) return FailUpload(id, st);
  if (upload->complete()) Submit(id);
}

void AttentionServiceImpl::AttendReactor::HandleCancel(const std::string& id) {
  uploads_.MarkDead(id);  // chunks still on their way are dropped
  JobPtr job;
  {
    absl::MutexLock lock(&mu_);
    job = FailLiveLocked(
        id, nullptr,
        absl::CancelledError(absl::StrCat(
            "request '", id, "' cancelled by the client (CancelRequest)")));
    if (job == nullptr) return;  // unknown or already answered
    job->cancelled.store(true);
  }
  if (uploads_.Take(id) == nullptr) {
    svc_->executor_->Cancel(job);  // nothing computed for it from now on
  }
}

void AttentionServiceImpl::AttendReactor::BrokenMessage(int64_t n,
                                                        size_t bytes) {
  svc_->metrics_->ProtocolErrorSeen(ProtocolError::kUnparseableMessage);
  const std::string what =
      absl::StrCat("message ", n, " on this stream (", bytes,
                   " bytes) is not a valid scatterbrain.v1.AttendRequest");
  {
    absl::MutexLock lock(&mu_);
    EndWhenIdleLocked(absl::InvalidArgumentError(
        absl::StrCat(what,
                     "; the stream is ended (requests submitted before it were "
                     "answered, uploads still incomplete failed)")));
  }
  EndOfReads(absl::StrCat("the stream broke: ", what, ","));
}

void AttentionServiceImpl::AttendReactor::EndWhenIdleLocked(
    absl::Status status) {
  if (ending_) return;  // the first reason stands
  ending_ = true;
  end_status_ = std::move(status);
}

void AttentionServiceImpl::AttendReactor::EndOfReads(const std::string& why) {
  // Reads also end when the call is cancelled, possibly before OnCancel
  // runs: then nobody is listening for an answer.
  const bool cancelled = ctx_->IsCancelled();
  uploads_.TakeAll([&](const std::string& id, const Upload& upload) {
    absl::MutexLock lock(&mu_);
    const std::optional<LiveRequest> live = live_.Take(id, upload.job);
    if (!live.has_value()) return;
    if (cancelled) {
      FinalizeLocked(upload.job->spec.method_label, /*accepted=*/true,
                     live->start_us,
                     AtDeadline(*ctx_) ? absl::StatusCode::kDeadlineExceeded
                                       : absl::StatusCode::kCancelled);
      return;
    }
    const TensorAssembler& missing = upload.FirstIncomplete();
    QueueLocked(ErrorAnswer(
        id,
        absl::InvalidArgumentError(absl::StrCat(
            "chunk: ", why, " before request '", id, "' was complete (tensor ",
            missing.name(), ": ", missing.received_bytes(), " of ",
            missing.total_bytes(), " bytes)")),
        upload.job->spec.method_label, /*accepted=*/true, live->start_us));
  });
  absl::MutexLock lock(&mu_);
  reads_done_ = true;
}

void AttentionServiceImpl::AttendReactor::Submit(const std::string& id) {
  std::unique_ptr<Upload> upload = uploads_.Take(id);
  JobPtr job = upload->job;
  job->q = upload->q.Take();
  job->k = upload->k.Take();
  job->v = upload->v.Take();
  job->done = [this](const JobPtr& j, JobResult r) {
    OnJobDone(j, std::move(r));
  };
  job->deadline_us = svc_->DeadlineMicros(*ctx_);  // the stream's deadline
  {
    absl::MutexLock lock(&mu_);
    LiveRequest* live = live_.Get(id);
    if (live == nullptr || live->job != job) return;
    live->uploading = false;
    ++pending_jobs_;  // before Submit: `done` may run before it returns
  }
  const absl::Status st = svc_->executor_->Submit(job);
  if (st.ok()) return;
  absl::MutexLock lock(&mu_);
  --pending_jobs_;
  FailLiveLocked(id, job, st);
}

void AttentionServiceImpl::AttendReactor::FailUpload(const std::string& id,
                                                     const absl::Status& st) {
  const std::unique_ptr<Upload> upload = uploads_.Take(id);
  uploads_.MarkDead(id);
  absl::MutexLock lock(&mu_);
  FailLiveLocked(id, upload->job, st);
}

void AttentionServiceImpl::AttendReactor::FailSubmitted(
    const std::string& id, const JobPtr& job, const absl::Status& st) {
  {
    absl::MutexLock lock(&mu_);
    if (FailLiveLocked(id, job, st) == nullptr) return;
    job->cancelled.store(true);
  }
  svc_->executor_->Cancel(job);
}

JobPtr AttentionServiceImpl::AttendReactor::FailLiveLocked(
    const std::string& id, const JobPtr& job, const absl::Status& st) {
  const std::optional<LiveRequest> live = live_.Take(id, job);
  if (!live.has_value()) return nullptr;
  QueueLocked(ErrorAnswer(id, st, live->job->spec.method_label,
                          /*accepted=*/true, live->start_us));
  return live->job;
}

// --- executor completions
// ------------------------------------------------------

void AttentionServiceImpl::AttendReactor::OnJobDone(const JobPtr& job,
                                                    JobResult result) {
  // This runs outside gRPC's reactions (on the executor's thread), so
  // nothing stops another thread from finishing the stream once
  // pending_jobs_ drops below: hold a reference until we are done.
  // (Taken while pending_jobs_ > 0, so the reactor is surely alive.)
  Ref();
  svc_->SessionUsed(*job);
  {
    absl::MutexLock lock(&mu_);
    --pending_jobs_;
    // Not there (or another request reuses the id): it was cancelled or
    // failed meanwhile and has been answered; its result is discarded.
    const std::string& id = job->spec.request_id;
    const std::optional<LiveRequest> live = live_.Take(id, job);
    if (live.has_value()) {
      if (result.status.ok()) {
        auto answer = std::make_unique<Answer>();
        answer->request_id = id;
        answer->method = job->spec.method_label;
        answer->accepted = true;
        answer->start_us = live->start_us;
        answer->job = job;
        answer->result = std::move(result);
        QueueLocked(std::move(answer));
      } else {
        QueueLocked(ErrorAnswer(id, result.status, job->spec.method_label,
                                /*accepted=*/true, live->start_us));
      }
    }
  }
  PumpWrites();
  MaybeFinish();
  Unref();
}

// --- write path
// ----------------------------------------------------------------

void AttentionServiceImpl::AttendReactor::QueueError(
    const std::string& id, const absl::Status& st, const std::string& method) {
  absl::MutexLock lock(&mu_);
  QueueLocked(ErrorAnswer(id, st, method, /*accepted=*/false,
                          svc_->clock_->NowMicros()));
}

void AttentionServiceImpl::AttendReactor::QueueLocked(
    std::unique_ptr<Answer> answer) {
  if (writes_broken_ || finished_) {
    FinalizeLocked(answer->method, answer->accepted, answer->start_us,
                   DroppedCodeLocked());
    return;
  }
  answers_.Push(std::move(answer));
}

void AttentionServiceImpl::AttendReactor::DropWritesLocked() {
  answers_.Drop(write_in_flight_,
                [this](const Answer& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                  FinalizeLocked(a.method, a.accepted, a.start_us,
                                 DroppedCodeLocked());
                });
}

absl::StatusCode AttentionServiceImpl::AttendReactor::DroppedCodeLocked()
    const {
  return deadline_exceeded_ ? absl::StatusCode::kDeadlineExceeded
                            : absl::StatusCode::kCancelled;
}

void AttentionServiceImpl::AttendReactor::FinalizeLocked(
    const std::string& method, bool accepted, int64_t start_us,
    absl::StatusCode code) {
  // An empty method marks an answer to a message that was not a request
  // (counted as a protocol error when queued).
  if (!method.empty()) {
    svc_->metrics_->RequestDone(
        method, CodeName(code),
        std::max<int64_t>(svc_->clock_->NowMicros() - start_us, 0) * 1e-6);
  }
  if (accepted) svc_->Finished();
}

void AttentionServiceImpl::AttendReactor::PumpWrites() {
  Answer* front;
  {
    absl::MutexLock lock(&mu_);
    if (write_in_flight_ || finished_) return;
    if (writes_broken_) {
      DropWritesLocked();
      return;
    }
    if (answers_.empty()) return;
    write_in_flight_ = true;
    write_started_us_ = svc_->clock_->NowMicros();
    front = answers_.front();
  }
  const bool last =
      NextMessage(*front, svc_->options_.chunk_bytes, &write_msg_);
  write_bytes_ = static_cast<int64_t>(write_msg_.ByteSizeLong());
  bool own_buffer = false;
  write_buf_.Clear();
  // Serialising our own message cannot fail short of memory exhaustion;
  // then the stream is cancelled rather than sending something wrong.
  const bool serialized =
      grpc::SerializationTraits<v1::AttendResponse>::Serialize(
          write_msg_, &write_buf_, &own_buffer)
          .ok();
  write_msg_.Clear();  // the bytes live in write_buf_ now
  if (last) {
    absl::MutexLock lock(&mu_);
    answers_.StartLast();
  }
  if (!serialized) {
    ctx_->TryCancel();
    OnWriteDone(false);  // as a failed write: the answers are dropped
    return;
  }
  StartWrite(&write_buf_);
}

void AttentionServiceImpl::AttendReactor::MaybeFinish() {
  grpc::Status status;
  {
    absl::MutexLock lock(&mu_);
    if (finished_ || write_in_flight_ || pending_jobs_ > 0 || cancelling_) {
      return;
    }
    if (cancelled_ || writes_broken_) {
      // A read still outstanding holds the reactor until it fails.
      if (!reads_done_ && !read_paused_) return;
      status = grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled");
    } else if (reads_done_) {
      if (!answers_.empty() || !live_.empty()) return;
      // OK after a half-close; a stream-level error (an unparseable message)
      // says so.
      status = ToGrpcStatus(end_status_);
    } else if (ending_) {
      // Draining, idle too long: end the stream once nothing is in flight
      // (a read is outstanding; it completes with ok=false).
      if (read_callbacks_ > 0 || !answers_.empty() || !live_.empty()) return;
      status = ToGrpcStatus(end_status_);
    } else {
      return;
    }
    finished_ = true;
    DropWritesLocked();
  }
  Finish(status);  // OnDone may run from here on (see the file comment)
}

}  // namespace server
}  // namespace scatterbrain
