// scatterbrain/server/kserve_stream.cc — ModelStreamInfer: many requests
// on one stream, each answered in completion order by a
// ModelStreamInferResponse; a failed request is answered in-band
// (error_message) and the stream goes on. One read and one write at a
// time; completions only enqueue and maybe start the write, so no
// reaction blocks. The stream ends (OK) once the client half-closed and
// every request's answer is written.
#include <deque>
#include <memory>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "server/kserve_service.h"
#include "server/proto_convert.h"

namespace scatterbrain {
namespace server {

class KServeServiceImpl::StreamReactor final
    : public grpc::ServerBidiReactor<inference::ModelInferRequest,
                                     inference::ModelStreamInferResponse> {
 public:
  // `refused`: not OK for a call that may not start (UNAUTHENTICATED).
  StreamReactor(KServeServiceImpl* svc, Ctx* ctx, const grpc::Status& refused)
      : svc_(svc), ctx_(ctx) {
    if (!refused.ok()) {
      {
        absl::MutexLock lock(&mu_);
        finished_ = true;
      }
      Finish(refused);
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // half-close, or the call ended
      {
        absl::MutexLock lock(&mu_);
        reads_done_ = true;
      }
      MaybeFinish();
      return;
    }
    const int limit = svc_->attention_->options_.max_inflight_per_stream;
    bool over;
    {
      absl::MutexLock lock(&mu_);
      over = inflight_ >= limit;
      ++inflight_;
    }
    if (over) {
      inference::ModelInferResponse response;
      response.set_model_name(request_.model_name());
      response.set_id(request_.id());
      OnInferDone(nullptr,
                  absl::ResourceExhaustedError(absl::StrCat(
                      "more than ", limit,
                      " requests in flight on this stream (the server's "
                      "max_inflight_per_stream); wait for answers")),
                  &response);
    } else {
      svc_->Infer(
          *ctx_, request_,
          [this](const JobPtr& job) {
            absl::MutexLock lock(&mu_);
            jobs_[job.get()] = job;
          },
          [this](const Job* job, absl::Status st,
                 inference::ModelInferResponse* response) {
            OnInferDone(job, std::move(st), response);
          });
    }
    StartRead(&request_);
  }

  void OnWriteDone(bool ok) override {
    const inference::ModelStreamInferResponse* next = nullptr;
    {
      absl::MutexLock lock(&mu_);
      queue_.pop_front();
      if (!ok) {  // the call is broken: nothing more will be written
        broken_ = true;
        queue_.clear();
      }
      writing_ = !broken_ && !queue_.empty();
      if (writing_) next = &queue_.front();
    }
    if (next != nullptr) {
      StartWrite(next);
    } else {
      MaybeFinish();
    }
  }

  void OnCancel() override {
    std::vector<JobPtr> jobs;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [ptr, job] : jobs_) jobs.push_back(job);
    }
    for (const JobPtr& job : jobs) svc_->attention_->executor_->Cancel(job);
  }

  void OnDone() override { delete this; }

 private:
  void OnInferDone(const Job* job, absl::Status st,
                   inference::ModelInferResponse* response) {
    inference::ModelStreamInferResponse answer;
    if (!st.ok()) {
      answer.set_error_message(
          absl::StrCat(CodeName(st.code()), ": ", st.message()));
    }
    *answer.mutable_infer_response() = std::move(*response);
    const inference::ModelStreamInferResponse* next = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (job != nullptr) jobs_.erase(job);
      --inflight_;
      if (!broken_) queue_.push_back(std::move(answer));
      if (!writing_ && !queue_.empty()) {
        writing_ = true;
        next = &queue_.front();
      }
    }
    if (next != nullptr) {
      StartWrite(next);
    } else {
      MaybeFinish();
    }
  }

  // Finishes once reads are done, nothing is in flight and nothing is
  // being written; the last thing that touches `this`.
  void MaybeFinish() {
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || !reads_done_ || inflight_ > 0 || writing_) return;
      finished_ = true;
    }
    Finish(grpc::Status::OK);
  }

  KServeServiceImpl* const svc_;
  Ctx* const ctx_;
  inference::ModelInferRequest request_;  // the read in progress
  absl::Mutex mu_;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  int inflight_ ABSL_GUARDED_BY(mu_) = 0;
  // Written one at a time from the front; references stay valid while
  // others are appended (std::deque).
  std::deque<inference::ModelStreamInferResponse> queue_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<const Job*, JobPtr> jobs_ ABSL_GUARDED_BY(mu_);
};

grpc::ServerBidiReactor<inference::ModelInferRequest,
                        inference::ModelStreamInferResponse>*
KServeServiceImpl::ModelStreamInfer(Ctx* ctx) {
  return new StreamReactor(this, ctx, attention_->Authorize(*ctx));
}

}  // namespace server
}  // namespace scatterbrain
