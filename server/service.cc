// scatterbrain/server/service.cc — see service.h.
//
// Lifetime of a stream's reactor: gRPC owns it until OnDone; callers from
// outside gRPC's reactions (the executor's completions, the service's drain
// notice) hold a short extra reference (Ref/Unref), so the object is
// deleted by whichever lets go last. Finish is called exactly once, when the
// reads are over (or the server drains an idle stream), no job of the stream
// is still with the executor (its `done` callback points at the reactor)
// and no write is in flight. Finish, StartRead and StartWrite are never
// called under the reactor's mutex (a reaction may run inline), and Finish
// is the last thing a thread without a reference does with the reactor.
#include "server/service.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"

namespace scatterbrain {
namespace server {
namespace {

// Ids of failed or cancelled requests whose remaining chunks are dropped
// silently (one error per request, not one per chunk). Bounded: the oldest
// ids are forgotten first.
constexpr size_t kMaxDeadIds = 1024;
// Longest request id echoed back or remembered (the contract allows 128
// bytes; a longer one is an error, and must not cost memory).
constexpr size_t kMaxIdBytes = 128;

absl::Status Draining() {
  return absl::UnavailableError(
      "server is draining (shutting down): new requests are refused; retry "
      "on another server");
}

// Whether a cancellation is the call's deadline. The client cancels at its
// own deadline, which runs ahead of the server's copy (started when the call
// arrived), so a cancel shortly before our deadline is that deadline.
bool AtDeadline(const grpc::CallbackServerContext& ctx) {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(100) >=
         ctx.deadline();
}

}  // namespace

// ---------------------------------------------------------------------------
// Attend: one reactor per stream.
// ---------------------------------------------------------------------------
class AttentionServiceImpl::AttendReactor final
    : public grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse> {
 public:
  AttendReactor(AttentionServiceImpl* svc, grpc::CallbackServerContext* ctx)
      : svc_(svc), ctx_(ctx) {}

  void Begin() {
    const bool draining = svc_->Register(this);
    {
      absl::MutexLock lock(&mu_);
      draining_ = draining;
      ++read_callbacks_;  // until the first read is issued
    }
    StartRead(&read_msg_);
    {
      absl::MutexLock lock(&mu_);
      --read_callbacks_;
    }
    MaybeFinish();
  }

  void Ref() { refs_.fetch_add(1); }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  // The service started draining.
  void OnServerDrain() {
    {
      absl::MutexLock lock(&mu_);
      draining_ = true;
    }
    MaybeFinish();
  }

  void OnReadDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      ++read_callbacks_;
    }
    if (!ok) {
      EndOfReads();
    } else {
      svc_->metrics_->BytesReceived(
          static_cast<int64_t>(read_msg_.ByteSizeLong()));
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
          QueueError("",
                     absl::InvalidArgumentError(
                         "AttendRequest.kind: empty message (set header, "
                         "chunk or cancel)"),
                     "unknown");
          break;
      }
      bool restart;
      {
        absl::MutexLock lock(&mu_);
        // A client that sends faster than it reads (or floods bad input)
        // is not read further until its answers drain: bounded memory.
        read_paused_ =
            !finished_ && writes_.size() >= svc_->options_.max_queued_answers;
        restart = !finished_ && !read_paused_;
      }
      // Drop the last chunk's bytes now rather than at the next read.
      read_msg_.Clear();
      // read_callbacks_ > 0 keeps a drain from finishing the stream between
      // the check above and this call.
      if (restart) StartRead(&read_msg_);
    }
    {
      absl::MutexLock lock(&mu_);
      --read_callbacks_;
    }
    PumpWrites();
    MaybeFinish();
  }

  void OnWriteDone(bool ok) override {
    bool resume_reads = false;
    {
      absl::MutexLock lock(&mu_);
      write_in_flight_ = false;
      if (ok) svc_->metrics_->BytesSent(write_bytes_);
      if (finishing_ != nullptr) {
        // A request counts as answered once its last message is out; if
        // that write failed, the client never saw the answer.
        FinalizeLocked(finishing_->method, finishing_->accepted,
                       finishing_->start_us,
                       ok ? finishing_->error.code() : DroppedCodeLocked());
        if (finishing_->accepted) --queued_accepted_;
        finishing_.reset();
      }
      if (!ok) {
        writes_broken_ = true;
        DropWritesLocked();
      }
      if (read_paused_ && !finished_ &&
          writes_.size() <= svc_->options_.max_queued_answers / 2) {
        read_paused_ = false;
        resume_reads = true;
        ++read_callbacks_;  // as in OnReadDone: no drain-finish until issued
      }
    }
    if (resume_reads) {
      StartRead(&read_msg_);
      absl::MutexLock lock(&mu_);
      --read_callbacks_;
    }
    PumpWrites();
    MaybeFinish();
  }

  void OnCancel() override {
    const bool deadline = AtDeadline(*ctx_);
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      deadline_exceeded_ = deadline;
      writes_broken_ = true;
      for (auto& [id, live] : live_) {
        live.job->cancelled.store(true);
        FinalizeLocked(live.job->spec.method_label, /*accepted=*/true,
                       live.start_us, DroppedCodeLocked());
      }
      live_.clear();
      DropWritesLocked();
    }
    // Queued jobs of this stream leave the batcher now; their `done` runs
    // here (mu_ not held) and only counts them off.
    svc_->executor_->RemoveCancelled();
    MaybeFinish();
  }

  void OnDone() override {
    svc_->Unregister(this);
    Unref();
  }

 private:
  ~AttendReactor() override = default;

  struct Assembly {
    JobPtr job;
    TensorAssembler q, k, v;
  };
  // An accepted request not yet answered: uploading or with the executor.
  struct Live {
    JobPtr job;
    int64_t start_us = 0;
  };
  // One request's answer: an error message, or a computed output (the
  // response header, then the output in chunks, encoded as they are sent).
  struct Outgoing {
    std::string request_id;
    std::string method;
    bool accepted = false;  // counted in the service's in-flight requests
    int64_t start_us = 0;
    absl::Status error;  // not OK: one error message
    JobPtr job;
    JobResult result;
    int64_t sent_bytes = -1;  // output bytes sent; -1: header not yet sent
  };

  // --- read path (OnReadDone calls are serialised by the single read) ----

  void HandleHeader(const v1::RequestHeader& header) {
    const std::string& id = header.request_id();
    std::string method = MethodLabel(header.settings().method());
    ForgetDead(id);
    JobPtr duplicate;
    bool duplicate_submitted = false;
    bool over_limit = false;
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      auto it = live_.find(id);
      if (it != live_.end()) {
        // The id names a request in flight: drop both, answer once, so the
        // id's one final message stays unambiguous for the client.
        duplicate = it->second.job;
        const int64_t start_us = it->second.start_us;
        live_.erase(it);
        duplicate->cancelled.store(true);
        duplicate_submitted = assembling_.find(id) == assembling_.end();
        QueueLocked(MakeError(
            id,
            absl::InvalidArgumentError(absl::StrCat(
                "header.request_id: '", id,
                "' is already in flight on this stream (an id may be reused "
                "only after its last response); both requests are dropped")),
            duplicate->spec.method_label, /*accepted=*/true, start_us));
      } else {
        over_limit = static_cast<int64_t>(live_.size() + queued_accepted_) >=
                     svc_->options_.max_inflight_per_stream;
      }
    }
    if (duplicate != nullptr) {
      assembling_.erase(id);
      MarkDead(id);
      if (duplicate_submitted) svc_->executor_->Cancel(duplicate);
      return;
    }
    auto reject = [&](const absl::Status& st) {
      MarkDead(id);
      QueueError(id, st, method);
    };
    if (svc_->draining()) return reject(Draining());
    if (over_limit) {
      return reject(absl::ResourceExhaustedError(absl::StrCat(
          "header: ", svc_->options_.max_inflight_per_stream,
          " requests already in flight on this stream (the server's "
          "max_inflight_per_stream); wait for responses or open another "
          "stream")));
    }
    absl::StatusOr<RequestSpec> spec =
        SpecFromHeader(header, svc_->options_.limits, /*require_id=*/true);
    if (!spec.ok()) return reject(spec.status());
    auto assembly = std::make_unique<Assembly>();
    absl::Status st = assembly->q.Init("q", spec->dtype, spec->q_elements);
    if (st.ok()) st = assembly->k.Init("k", spec->dtype, spec->k_elements);
    if (st.ok()) st = assembly->v.Init("v", spec->dtype, spec->v_elements);
    if (!st.ok()) return reject(st);
    if (!svc_->TryAccept()) return reject(Draining());
    assembly->job = std::make_shared<Job>();
    assembly->job->spec = *std::move(spec);
    const int64_t now = svc_->clock_->NowMicros();
    {
      absl::MutexLock lock(&mu_);
      live_[id] = Live{assembly->job, now};
    }
    assembling_[id] = std::move(assembly);
  }

  void HandleChunk(const v1::TensorChunk& chunk) {
    const std::string& id = chunk.request_id();
    auto it = assembling_.find(id);
    if (it == assembling_.end()) {
      if (dead_ids_.contains(id)) return;  // already answered
      JobPtr job;
      {
        absl::MutexLock lock(&mu_);
        auto live = live_.find(id);
        if (live != live_.end()) job = live->second.job;
      }
      MarkDead(id);
      if (job != nullptr) {
        // All of its bytes were there and it was submitted: a chunk too many.
        FailSubmitted(id, job,
                      absl::InvalidArgumentError(absl::StrCat(
                          "chunk.offset: ", chunk.offset(), " for tensor ",
                          TensorLabel(chunk.tensor()), " of request '", id,
                          "', whose tensors were already complete")));
      } else {
        QueueError(id,
                   absl::InvalidArgumentError(absl::StrCat(
                       "chunk.request_id: no request '", id,
                       "' in flight on this stream (its header must come "
                       "first)")),
                   "unknown");
      }
      return;
    }
    Assembly& a = *it->second;
    TensorAssembler* t = nullptr;
    switch (chunk.tensor()) {
      case v1::TENSOR_NAME_Q:
        t = &a.q;
        break;
      case v1::TENSOR_NAME_K:
        t = &a.k;
        break;
      case v1::TENSOR_NAME_V:
        t = &a.v;
        break;
      default:
        return FailAssembling(
            id, absl::InvalidArgumentError(absl::StrCat(
                    "chunk.tensor: must be TENSOR_NAME_Q, TENSOR_NAME_K or "
                    "TENSOR_NAME_V, got ",
                    TensorLabel(chunk.tensor()))));
    }
    const absl::Status st = t->Append(chunk.offset(), chunk.data());
    if (!st.ok()) return FailAssembling(id, st);
    if (a.q.complete() && a.k.complete() && a.v.complete()) Submit(id);
  }

  void HandleCancel(const std::string& id) {
    MarkDead(id);  // chunks still on their way are dropped
    auto it = assembling_.find(id);
    JobPtr job;
    {
      absl::MutexLock lock(&mu_);
      auto live = live_.find(id);
      if (live == live_.end()) return;  // unknown or already answered
      job = live->second.job;
      const int64_t start_us = live->second.start_us;
      live_.erase(live);
      job->cancelled.store(true);
      QueueLocked(MakeError(
          id,
          absl::CancelledError(absl::StrCat(
              "request '", id, "' cancelled by the client (CancelRequest)")),
          job->spec.method_label, /*accepted=*/true, start_us));
    }
    if (it != assembling_.end()) {
      assembling_.erase(it);
    } else {
      svc_->executor_->Cancel(job);  // nothing computed for it from now on
    }
  }

  // The client half-closed (or the stream broke): requests still uploading
  // can never complete.
  void EndOfReads() {
    // Reads also end when the call is cancelled, possibly before OnCancel
    // runs: then nobody is listening for an answer.
    const bool cancelled = ctx_->IsCancelled();
    for (auto& [id, assembly] : assembling_) {
      absl::MutexLock lock(&mu_);
      auto live = live_.find(id);
      if (live == live_.end() || live->second.job != assembly->job) continue;
      const int64_t start_us = live->second.start_us;
      live_.erase(live);
      if (cancelled) {
        FinalizeLocked(assembly->job->spec.method_label, /*accepted=*/true,
                       start_us,
                       AtDeadline(*ctx_) ? absl::StatusCode::kDeadlineExceeded
                                         : absl::StatusCode::kCancelled);
        continue;
      }
      const TensorAssembler* missing = !assembly->q.complete()   ? &assembly->q
                                       : !assembly->k.complete() ? &assembly->k
                                                                 : &assembly->v;
      const char* name = missing == &assembly->q   ? "q"
                         : missing == &assembly->k ? "k"
                                                   : "v";
      QueueLocked(MakeError(
          id,
          absl::InvalidArgumentError(absl::StrCat(
              "chunk: the stream's requests ended before request '", id,
              "' was complete (tensor ", name, ": ", missing->received_bytes(),
              " of ", missing->total_bytes(), " bytes)")),
          assembly->job->spec.method_label, /*accepted=*/true, start_us));
    }
    assembling_.clear();
    absl::MutexLock lock(&mu_);
    reads_done_ = true;
  }

  void Submit(const std::string& id) {
    auto node = assembling_.extract(id);
    Assembly& a = *node.mapped();
    JobPtr job = a.job;
    job->q = a.q.Take();
    job->k = a.k.Take();
    job->v = a.v.Take();
    job->done = [this](const JobPtr& j, JobResult r) {
      OnJobDone(j, std::move(r));
    };
    {
      absl::MutexLock lock(&mu_);
      auto live = live_.find(id);
      if (live == live_.end() || live->second.job != job) return;
      ++pending_jobs_;  // before Submit: `done` may run before it returns
    }
    const absl::Status st = svc_->executor_->Submit(job);
    if (st.ok()) return;
    absl::MutexLock lock(&mu_);
    --pending_jobs_;
    auto live = live_.find(id);
    if (live == live_.end() || live->second.job != job) return;
    const int64_t start_us = live->second.start_us;
    live_.erase(live);
    QueueLocked(
        MakeError(id, st, job->spec.method_label, /*accepted=*/true, start_us));
  }

  void FailAssembling(const std::string& id, const absl::Status& st) {
    auto it = assembling_.find(id);
    const JobPtr job = it->second->job;
    assembling_.erase(it);
    MarkDead(id);
    absl::MutexLock lock(&mu_);
    auto live = live_.find(id);
    if (live == live_.end() || live->second.job != job) return;
    const int64_t start_us = live->second.start_us;
    live_.erase(live);
    QueueLocked(
        MakeError(id, st, job->spec.method_label, /*accepted=*/true, start_us));
  }

  void FailSubmitted(const std::string& id, const JobPtr& job,
                     const absl::Status& st) {
    {
      absl::MutexLock lock(&mu_);
      auto live = live_.find(id);
      if (live == live_.end() || live->second.job != job) return;
      const int64_t start_us = live->second.start_us;
      live_.erase(live);
      job->cancelled.store(true);
      QueueLocked(MakeError(id, st, job->spec.method_label, /*accepted=*/true,
                            start_us));
    }
    svc_->executor_->Cancel(job);
  }

  void MarkDead(const std::string& id) {
    if (id.size() > kMaxIdBytes || !dead_ids_.insert(id).second) return;
    dead_order_.push_back(id);
    if (dead_order_.size() > kMaxDeadIds) {
      dead_ids_.erase(dead_order_.front());
      dead_order_.pop_front();
    }
  }
  // A new header starts the id afresh.
  void ForgetDead(const std::string& id) {
    if (dead_ids_.erase(id) == 0) return;
    dead_order_.erase(std::find(dead_order_.begin(), dead_order_.end(), id));
  }


  // --- executor completions (dispatcher thread or a canceller) ------------

  void OnJobDone(const JobPtr& job, JobResult result) {
    // This runs outside gRPC's reactions (on the executor's thread), so
    // nothing stops another thread from finishing the stream once
    // pending_jobs_ drops below: hold a reference until we are done.
    // (Taken while pending_jobs_ > 0, so the reactor is surely alive.)
    Ref();
    {
      absl::MutexLock lock(&mu_);
      --pending_jobs_;
      auto live = live_.find(job->spec.request_id);
      // Not there (or another request reuses the id): it was cancelled or
      // failed meanwhile and has been answered; its result is discarded.
      if (live != live_.end() && live->second.job == job) {
        auto out = std::make_unique<Outgoing>();
        out->request_id = job->spec.request_id;
        out->method = job->spec.method_label;
        out->accepted = true;
        out->start_us = live->second.start_us;
        live_.erase(live);
        if (result.status.ok()) {
          out->job = job;
          out->result = std::move(result);
        } else {
          out->error = result.status;
        }
        QueueLocked(std::move(out));
      }
    }
    PumpWrites();
    MaybeFinish();
    Unref();
  }

  // --- write path ------------------------------------------------------------

  std::unique_ptr<Outgoing> MakeError(const std::string& id,
                                      const absl::Status& st,
                                      const std::string& method, bool accepted,
                                      int64_t start_us) {
    auto out = std::make_unique<Outgoing>();
    out->request_id = id.substr(0, kMaxIdBytes);
    out->method = method;
    out->accepted = accepted;
    out->start_us = start_us;
    out->error = st;
    return out;
  }

  // An error for a request that was never accepted.
  void QueueError(const std::string& id, const absl::Status& st,
                  const std::string& method) {
    absl::MutexLock lock(&mu_);
    QueueLocked(MakeError(id, st, method, /*accepted=*/false,
                          svc_->clock_->NowMicros()));
  }

  void QueueLocked(std::unique_ptr<Outgoing> out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writes_broken_ || finished_) {
      FinalizeLocked(out->method, out->accepted, out->start_us,
                     DroppedCodeLocked());
      return;
    }
    if (out->accepted) ++queued_accepted_;
    writes_.push_back(std::move(out));
  }

  // Drops queued answers that can no longer be sent. The front entry is
  // the writer's while a write is in flight (it may be filling it).
  void DropWritesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const size_t keep = write_in_flight_ && !writes_.empty() ? 1 : 0;
    while (writes_.size() > keep) {
      const Outgoing& o = *writes_.back();
      FinalizeLocked(o.method, o.accepted, o.start_us, DroppedCodeLocked());
      if (o.accepted) --queued_accepted_;
      writes_.pop_back();
    }
  }

  // The code a request dropped with the stream is counted under.
  absl::StatusCode DroppedCodeLocked() const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return deadline_exceeded_ ? absl::StatusCode::kDeadlineExceeded
                              : absl::StatusCode::kCancelled;
  }

  // Every answered request is counted once: requests_total, the duration
  // histogram and, if accepted, the in-flight gauge.
  void FinalizeLocked(const std::string& method, bool accepted,
                      int64_t start_us, absl::StatusCode code)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    svc_->metrics_->RequestDone(
        method, CodeName(code),
        std::max<int64_t>(svc_->clock_->NowMicros() - start_us, 0) * 1e-6);
    if (accepted) svc_->Finished();
  }

  // Starts the next write if none is in flight. The message is filled
  // (output encoded from float32) outside the lock: while write_in_flight_
  // is set, only this thread touches the front entry and write_msg_.
  void PumpWrites() {
    Outgoing* front;
    {
      absl::MutexLock lock(&mu_);
      if (write_in_flight_ || finished_) return;
      if (writes_broken_) {
        DropWritesLocked();
        return;
      }
      if (writes_.empty()) return;
      write_in_flight_ = true;
      front = writes_.front().get();
    }
    write_msg_.Clear();
    const bool last = Fill(*front, &write_msg_);
    write_bytes_ = static_cast<int64_t>(write_msg_.ByteSizeLong());
    if (last) {
      absl::MutexLock lock(&mu_);
      finishing_ = std::move(writes_.front());
      writes_.pop_front();
    }
    StartWrite(&write_msg_);
  }

  // The next message of `o`; true when it is the last.
  bool Fill(Outgoing& o, v1::AttendResponse* msg) {
    msg->set_request_id(o.request_id);
    if (!o.error.ok()) {
      v1::RequestError* e = msg->mutable_error();
      e->set_code(static_cast<int>(o.error.code()));
      e->set_message(std::string(o.error.message()));
      msg->set_last(true);
      return true;
    }
    const RequestSpec& spec = o.job->spec;
    if (o.sent_bytes < 0) {
      FillResponseHeader(spec, o.result.stats, msg->mutable_header());
      o.sent_bytes = 0;
      msg->set_last(false);
      return false;
    }
    const int elem = DTypeBytes(spec.output_dtype);
    const int64_t chunk_elems =
        std::max<int64_t>(svc_->options_.chunk_bytes / elem, 1);
    const int64_t first = o.sent_bytes / elem;
    const int64_t n = std::min(chunk_elems, spec.out_elements - first);
    v1::TensorChunk* c = msg->mutable_chunk();
    c->set_request_id(o.request_id);
    c->set_tensor(v1::TENSOR_NAME_OUTPUT);
    c->set_offset(static_cast<uint64_t>(o.sent_bytes));
    std::string* data = c->mutable_data();
    data->resize(static_cast<size_t>(n * elem));
    // The output's one copy: float32 straight into the message's bytes.
    EncodeFromFloat(spec.output_dtype, o.result.out.data.get() + first, n,
                    data->data());
    o.sent_bytes += n * elem;
    const bool last = first + n == spec.out_elements;
    if (last) o.result.out.Release();
    msg->set_last(last);
    return last;
  }

  void MaybeFinish() {
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || write_in_flight_ || pending_jobs_ > 0) return;
      if (cancelled_ || writes_broken_) {
        // A read still outstanding holds the reactor until it fails.
        if (!reads_done_ && !read_paused_) return;
        status = grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled");
      } else if (reads_done_) {
        if (!writes_.empty() || !live_.empty()) return;
        status = grpc::Status::OK;
      } else if (draining_) {
        // Idle stream of a draining server: end it (a read is outstanding;
        // it completes with ok=false).
        if (read_callbacks_ > 0 || !writes_.empty() || !live_.empty()) return;
        status = ToGrpcStatus(Draining());
      } else {
        return;
      }
      finished_ = true;
      DropWritesLocked();
    }
    Finish(status);  // OnDone may run from here on (see the file comment)
  }

  AttentionServiceImpl* const svc_;
  grpc::CallbackServerContext* const ctx_;
  std::atomic<int> refs_{1};  // gRPC's, released in OnDone

  // Read path only.
  v1::AttendRequest read_msg_;
  absl::flat_hash_map<std::string, std::unique_ptr<Assembly>> assembling_;
  absl::flat_hash_set<std::string> dead_ids_;
  std::deque<std::string> dead_order_;

  // The writer's (whoever set write_in_flight_).
  v1::AttendResponse write_msg_;
  int64_t write_bytes_ = 0;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Live> live_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Outgoing>> writes_ ABSL_GUARDED_BY(mu_);
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_broken_ ABSL_GUARDED_BY(mu_) = false;  // no write can succeed
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool deadline_exceeded_ ABSL_GUARDED_BY(mu_) = false;
  // The answer whose last message is being written.
  std::unique_ptr<Outgoing> finishing_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  int read_callbacks_ ABSL_GUARDED_BY(mu_) = 0;    // OnReadDone running
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;  // no read outstanding
  // Accepted requests whose answer is queued or being written: with live_,
  // the stream's requests in flight (max_inflight_per_stream).
  size_t queued_accepted_ ABSL_GUARDED_BY(mu_) = 0;
  int pending_jobs_ ABSL_GUARDED_BY(mu_) = 0;  // with the executor
};

// ---------------------------------------------------------------------------
// AttendUnary
// ---------------------------------------------------------------------------
class AttentionServiceImpl::UnaryReactor final
    : public grpc::ServerUnaryReactor {
 public:
  UnaryReactor(AttentionServiceImpl* svc, grpc::CallbackServerContext* ctx,
               const v1::AttendUnaryRequest* request,
               v1::AttendUnaryResponse* response)
      : svc_(svc), ctx_(ctx), request_(request), response_(response) {}

  void Start() {
    start_us_ = svc_->clock_->NowMicros();
    method_ = MethodLabel(request_->header().settings().method());
    svc_->metrics_->BytesReceived(
        static_cast<int64_t>(request_->ByteSizeLong()));
    if (svc_->draining()) return Reject(Draining());
    absl::StatusOr<RequestSpec> spec = SpecFromHeader(
        request_->header(), svc_->options_.limits, /*require_id=*/false);
    if (!spec.ok()) return Reject(spec.status());
    const struct {
      const char* name;
      const std::string& bytes;
      int64_t want;
      int64_t elements;
    } tensors[] = {{"q", request_->q(), spec->q_bytes, spec->q_elements},
                   {"k", request_->k(), spec->k_bytes, spec->k_elements},
                   {"v", request_->v(), spec->v_bytes, spec->v_elements}};
    for (const auto& t : tensors) {
      if (static_cast<int64_t>(t.bytes.size()) != t.want) {
        return Reject(absl::InvalidArgumentError(absl::StrCat(
            t.name, ": ", t.bytes.size(), " bytes, expected ", t.want,
            " for header.shape and header.dtype ", DTypeName(spec->dtype))));
      }
    }
    auto job = std::make_shared<Job>();
    FloatBuffer* dst[] = {&job->q, &job->k, &job->v};
    for (int i = 0; i < 3; ++i) {
      TensorAssembler a;
      absl::Status st =
          a.Init(tensors[i].name, spec->dtype, tensors[i].elements);
      if (st.ok()) st = a.Append(0, tensors[i].bytes);
      if (!st.ok()) return Reject(st);
      *dst[i] = a.Take();
    }
    method_ = spec->method_label;
    job->spec = *std::move(spec);
    if (!svc_->TryAccept()) return Reject(Draining());
    job->done = [this](const JobPtr& j, JobResult r) {
      OnJobDone(j, std::move(r));
    };
    {
      absl::MutexLock lock(&mu_);
      job_ = job;
    }
    const absl::Status st = svc_->executor_->Submit(job);
    if (!st.ok()) {
      svc_->Finished();
      Reject(st);
    }
  }

  void OnCancel() override {
    JobPtr job;
    {
      absl::MutexLock lock(&mu_);
      job = job_;
    }
    if (job != nullptr) svc_->executor_->Cancel(job);
  }

  void OnDone() override { delete this; }

 private:
  void Reject(const absl::Status& st) {
    svc_->metrics_->RequestDone(method_, CodeName(st.code()), Seconds());
    Finish(ToGrpcStatus(st));
  }

  void OnJobDone(const JobPtr& job, JobResult result) {
    if (result.status.ok()) {
      const RequestSpec& spec = job->spec;
      FillResponseHeader(spec, result.stats, response_->mutable_header());
      std::string* out = response_->mutable_output();
      out->resize(static_cast<size_t>(spec.out_bytes));
      EncodeFromFloat(spec.output_dtype, result.out.data.get(),
                      spec.out_elements, out->data());
      result.out.Release();
      svc_->metrics_->BytesSent(
          static_cast<int64_t>(response_->ByteSizeLong()));
    }
    absl::StatusCode code = result.status.code();
    if (code == absl::StatusCode::kCancelled && AtDeadline(*ctx_)) {
      code = absl::StatusCode::kDeadlineExceeded;  // dropped at its deadline
    }
    svc_->metrics_->RequestDone(method_, CodeName(code), Seconds());
    svc_->Finished();
    Finish(ToGrpcStatus(result.status));
  }

  double Seconds() const {
    return std::max<int64_t>(svc_->clock_->NowMicros() - start_us_, 0) * 1e-6;
  }

  AttentionServiceImpl* const svc_;
  grpc::CallbackServerContext* const ctx_;
  const v1::AttendUnaryRequest* const request_;
  v1::AttendUnaryResponse* const response_;
  int64_t start_us_ = 0;
  std::string method_;
  absl::Mutex mu_;
  JobPtr job_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------
AttentionServiceImpl::AttentionServiceImpl(const ServiceOptions& options,
                                           v1::ServerInfo info,
                                           Executor* executor, Metrics* metrics,
                                           const Clock* clock)
    : options_(options),
      info_(std::move(info)),
      executor_(executor),
      metrics_(metrics),
      clock_(clock) {}

AttentionServiceImpl::~AttentionServiceImpl() = default;

grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse>*
AttentionServiceImpl::Attend(grpc::CallbackServerContext* context) {
  auto* reactor = new AttendReactor(this, context);
  reactor->Begin();
  return reactor;
}

grpc::ServerUnaryReactor* AttentionServiceImpl::AttendUnary(
    grpc::CallbackServerContext* context, const v1::AttendUnaryRequest* request,
    v1::AttendUnaryResponse* response) {
  auto* reactor = new UnaryReactor(this, context, request, response);
  reactor->Start();
  return reactor;
}

grpc::ServerUnaryReactor* AttentionServiceImpl::GetServerInfo(
    grpc::CallbackServerContext* context,
    const v1::GetServerInfoRequest* /*request*/, v1::ServerInfo* response) {
  *response = info_;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

void AttentionServiceImpl::StartDrain() {
  std::vector<AttendReactor*> reactors;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    for (AttendReactor* r : reactors_) {
      r->Ref();  // alive until we are done with it, even past its OnDone
      reactors.push_back(r);
    }
  }
  for (AttendReactor* r : reactors) {
    r->OnServerDrain();
    r->Unref();
  }
}

bool AttentionServiceImpl::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

bool AttentionServiceImpl::WaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  const auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return inflight_ == 0;
  };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

int64_t AttentionServiceImpl::inflight() const {
  absl::MutexLock lock(&mu_);
  return inflight_;
}

bool AttentionServiceImpl::TryAccept() {
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return false;
    ++inflight_;
  }
  metrics_->InflightAdd(1);
  return true;
}

void AttentionServiceImpl::Finished() {
  {
    absl::MutexLock lock(&mu_);
    --inflight_;
  }
  metrics_->InflightAdd(-1);
}

bool AttentionServiceImpl::Register(AttendReactor* reactor) {
  absl::MutexLock lock(&mu_);
  reactors_.insert(reactor);
  return draining_;
}

void AttentionServiceImpl::Unregister(AttendReactor* reactor) {
  absl::MutexLock lock(&mu_);
  reactors_.erase(reactor);
}

}  // namespace server
}  // namespace scatterbrain
