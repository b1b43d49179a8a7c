// scatterbrain/client/cpp/attend_stream.cc — see attend_stream.h.
#include "client/cpp/attend_stream.h"

#include <algorithm>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/cpp/retry.h"
#include "client/cpp/stream_call.h"

namespace scatterbrain {
namespace client {

using internal::StreamCall;

// What AttendStream is: the call (StreamCall) its requests currently go to,
// the calls it replaced (kept until they end: their reactions may still
// run), and every request not yet completed, so that one that failed with
// UNAVAILABLE can be resubmitted on a new stream. The waits between tries
// run on a thread started at the first retry (callbacks must not block).
// Lock order: Impl::mu_, then StreamCall::mu_ (StreamCall::Submit); a call
// calls back into OnResult without holding its own lock.
class AttendStream::Impl {
 public:
  Impl(v1::AttentionService::Stub* stub, const ClientOptions& options,
       absl::Duration deadline)
      : stub_(stub), options_(options), deadline_(deadline) {
    absl::MutexLock lock(&mu_);
    RollLocked();
  }

  ~Impl() {
    if (inflight() > 0) TryCancel();
    Finish().IgnoreError();
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
      cv_.SignalAll();
    }
    if (retrier_.joinable()) retrier_.join();
  }

  absl::StatusOr<std::string> Submit(std::shared_ptr<const PreparedRequest> req,
                                     std::string id, Callback done) {
    absl::MutexLock lock(&mu_);
    if (closing_) {
      return absl::FailedPreconditionError(
          "the Attend stream is closed (Finish was called); open a new one");
    }
    // Ids are unique across the streams this one spans (a resubmitted
    // request keeps its id).
    if (id.empty()) {
      do {
        id = absl::StrCat("r", next_id_++);
      } while (pending_.count(id));
    } else if (pending_.count(id)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "request_id: '", id, "' is already in flight on this stream"));
    }
    Pending& p = pending_[id];
    p.req = req;
    p.done = std::move(done);
    p.call = current_.get();
    absl::StatusOr<std::string> s =
        current_->Submit(std::move(req), id, Wrap(id));
    if (!s.ok()) {
      if (std::optional<absl::Duration> wait = MayRetryLocked(p, s.status())) {
        ScheduleRetryLocked(id, &p, *wait);
        return id;
      }
      pending_.erase(id);
      return s.status();
    }
    return id;
  }

  void Cancel(const std::string& id) {
    Callback done;
    StreamCall* call = nullptr;
    {
      absl::MutexLock lock(&mu_);
      auto it = pending_.find(id);
      if (it == pending_.end()) return;
      if (it->second.waiting) {  // between tries: not on any stream
        done = std::move(it->second.done);
        pending_.erase(it);
        cv_.SignalAll();
      } else {
        it->second.cancelled = true;  // no retry from now on
        call = it->second.call;
      }
    }
    if (done) done(absl::CancelledError("request cancelled by the client"));
    if (call != nullptr) call->Cancel(id);
  }

  int64_t inflight() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int64_t>(pending_.size());
  }

  // Sums `count` over every call of this stream.
  int64_t SumOverCalls(int64_t (StreamCall::*count)() const) const {
    absl::MutexLock lock(&mu_);
    int64_t n = (current_.get()->*count)();
    for (const auto& r : old_) n += (r.get()->*count)();
    return n;
  }

  absl::Status Finish() {
    std::vector<StreamCall*> calls;
    {
      absl::MutexLock lock(&mu_);
      closing_ = true;
      while (!pending_.empty()) cv_.Wait(&mu_);
      // Nothing pending and no Submit accepted: the set of streams is final.
      for (auto& r : old_) calls.push_back(r.get());
      calls.push_back(current_.get());
    }
    absl::Status status;
    for (StreamCall* r : calls) status = r->Finish();  // the current one's
    return status;
  }

  void TryCancel() {
    std::vector<Callback> waiting;
    std::vector<StreamCall*> calls;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (it->second.waiting) {
          waiting.push_back(std::move(it->second.done));
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
      for (auto& r : old_) calls.push_back(r.get());
      calls.push_back(current_.get());
      cv_.SignalAll();
    }
    for (Callback& cb : waiting) {
      if (cb) cb(absl::CancelledError("request cancelled by the client"));
    }
    for (StreamCall* r : calls) r->TryCancel();
  }

 private:
  struct Pending {
    std::shared_ptr<const PreparedRequest> req;
    Callback done;                    // the caller's
    StreamCall* call = nullptr;       // the call of its current try
    StreamCall* failed_on = nullptr;  // the call of its last failed try
    int attempts = 1;
    // When its first try failed (the retry budget runs from there).
    absl::Time first_failure = absl::InfiniteFuture();
    bool waiting = false;    // between tries (in no stream)
    bool cancelled = false;  // by Cancel: never retried
  };

  // A request's final error, saying how many tries it had when retried.
  static absl::Status WithTries(const absl::Status& s, int attempts) {
    if (attempts <= 1) return s;
    return absl::Status(
        s.code(), absl::StrCat(s.message(), " (after ", attempts, " tries)"));
  }

  Callback Wrap(const std::string& id) {
    return [this, id](absl::StatusOr<AttendResult> r) {
      OnResult(id, std::move(r));
    };
  }

  // Whether `p`, whose try failed with `status`, gets another one, and
  // after what wait. A request or stream the caller cancelled is never
  // retried, so a CANCELLED retried here is the server's (shutting down).
  std::optional<absl::Duration> MayRetryLocked(Pending& p,
                                               const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (p.cancelled || cancelled_) return std::nullopt;
    if (p.first_failure == absl::InfiniteFuture()) {
      p.first_failure = absl::Now();
    }
    return internal::RetryDelay(options_, status, p.attempts, p.first_failure);
  }

  void ScheduleRetryLocked(const std::string& id, Pending* p,
                           absl::Duration wait)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    p->waiting = true;
    p->failed_on = p->call;
    p->call = nullptr;
    retries_.emplace_back(absl::Now() + wait, id);
    ++p->attempts;
    if (!retrier_.joinable()) retrier_ = std::thread([this] { RetryLoop(); });
    cv_.SignalAll();
  }

  // A call's answer for `id` (each call answers each id once).
  void OnResult(const std::string& id, absl::StatusOr<AttendResult> r) {
    Callback done;
    {
      absl::MutexLock lock(&mu_);
      auto it = pending_.find(id);
      if (it == pending_.end()) return;
      if (!r.ok()) {
        if (std::optional<absl::Duration> wait =
                MayRetryLocked(it->second, r.status())) {
          ScheduleRetryLocked(id, &it->second, *wait);
          return;
        }
      }
      if (!r.ok()) r = WithTries(r.status(), it->second.attempts);
      done = std::move(it->second.done);
      pending_.erase(it);
      cv_.SignalAll();
    }
    if (done) done(std::move(r));
  }

  // Replaces the current stream by a new call (round_robin picks a live
  // server for it); the old one is half-closed and kept until it ends.
  void RollLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (current_ != nullptr) {
      current_->Close();
      old_.push_back(std::move(current_));
    }
    current_ = std::make_unique<StreamCall>(stub_, options_.chunk_bytes,
                                            options_.max_inflight_per_stream,
                                            deadline_);
  }

  void RetryLoop() {
    for (;;) {
      std::vector<std::string> due;
      {
        absl::MutexLock lock(&mu_);
        for (;;) {
          if (stop_) return;
          const absl::Time now = absl::Now();
          absl::Time next = absl::InfiniteFuture();
          for (const auto& [t, id] : retries_) next = std::min(next, t);
          if (next <= now) break;
          cv_.WaitWithDeadline(&mu_, next);
        }
        const absl::Time now = absl::Now();
        for (auto it = retries_.begin(); it != retries_.end();) {
          if (it->first <= now) {
            due.push_back(std::move(it->second));
            it = retries_.erase(it);
          } else {
            ++it;
          }
        }
      }
      for (const std::string& id : due) Resubmit(id);
    }
  }

  void Resubmit(const std::string& id) {
    Callback done;
    absl::Status error;
    {
      absl::MutexLock lock(&mu_);
      auto it = pending_.find(id);
      if (it == pending_.end() || !it->second.waiting) return;  // cancelled
      Pending& p = it->second;
      p.waiting = false;
      if (cancelled_) {
        error = absl::CancelledError("request cancelled by the client");
      } else {
        // The failed stream (the current one, or one already replaced) is
        // not reused: a request retried goes on a stream opened after its
        // failure.
        if (current_.get() == p.failed_on || current_->Broken()) {
          RollLocked();
        }
        absl::StatusOr<std::string> s = current_->Submit(p.req, id, Wrap(id));
        if (s.ok()) {
          p.call = current_.get();
          return;
        }
        if (std::optional<absl::Duration> wait =
                MayRetryLocked(p, s.status())) {
          ScheduleRetryLocked(id, &p, *wait);
          return;
        }
        error = WithTries(s.status(), p.attempts);
      }
      done = std::move(p.done);
      pending_.erase(it);
      cv_.SignalAll();
    }
    if (done) done(error);
  }

  v1::AttentionService::Stub* const stub_;
  const ClientOptions options_;
  const absl::Duration deadline_;

  mutable absl::Mutex mu_;
  absl::CondVar cv_;  // pending_ shrank, retries_ grew, stop_ / cancel
  std::unique_ptr<StreamCall> current_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<StreamCall>> old_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<absl::Time, std::string>> retries_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread retrier_;
};

AttendStream::AttendStream(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

AttendStream::~AttendStream() = default;

absl::StatusOr<std::string> AttendStream::Submit(const AttendInput& in,
                                                 Callback done) {
  absl::StatusOr<std::shared_ptr<const PreparedRequest>> req = Prepare(in);
  if (!req.ok()) return req.status();
  return impl_->Submit(*std::move(req), in.request_id, std::move(done));
}

absl::StatusOr<std::string> AttendStream::Submit(
    std::shared_ptr<const PreparedRequest> request, std::string request_id,
    Callback done) {
  if (request == nullptr) {
    return absl::InvalidArgumentError("request: null PreparedRequest");
  }
  return impl_->Submit(std::move(request), std::move(request_id),
                       std::move(done));
}

std::future<absl::StatusOr<AttendResult>> AttendStream::Submit(
    std::shared_ptr<const PreparedRequest> request, std::string request_id) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<AttendResult>>>();
  std::future<absl::StatusOr<AttendResult>> future = promise->get_future();
  absl::StatusOr<std::string> id =
      Submit(std::move(request), std::move(request_id),
             [promise](absl::StatusOr<AttendResult> r) {
               promise->set_value(std::move(r));
             });
  if (!id.ok()) promise->set_value(id.status());
  return future;
}

std::future<absl::StatusOr<AttendResult>> AttendStream::Submit(
    const AttendInput& in) {
  absl::StatusOr<std::shared_ptr<const PreparedRequest>> req = Prepare(in);
  if (!req.ok()) {
    std::promise<absl::StatusOr<AttendResult>> p;
    p.set_value(req.status());
    return p.get_future();
  }
  return Submit(*std::move(req), in.request_id);
}

absl::StatusOr<AttendResult> AttendStream::Attend(const AttendInput& in) {
  return Submit(in).get();
}

void AttendStream::Cancel(const std::string& request_id) {
  impl_->Cancel(request_id);
}

int64_t AttendStream::inflight() const { return impl_->inflight(); }

int64_t AttendStream::bytes_sent() const {
  return impl_->SumOverCalls(&StreamCall::bytes_sent);
}

int64_t AttendStream::bytes_received() const {
  return impl_->SumOverCalls(&StreamCall::bytes_received);
}

absl::Status AttendStream::Finish() { return impl_->Finish(); }

void AttendStream::TryCancel() { impl_->TryCancel(); }

std::unique_ptr<AttendStream> AttendStream::Open(
    v1::AttentionService::Stub* stub, const ClientOptions& options,
    absl::Duration deadline) {
  return std::unique_ptr<AttendStream>(
      new AttendStream(std::make_unique<Impl>(stub, options, deadline)));
}

}  // namespace client
}  // namespace scatterbrain
