// scatterbrain/server/unary_reactor.cc — see unary_reactor.h.
#include "server/unary_reactor.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/answer_writer.h"
#include "server/proto_convert.h"

namespace scatterbrain {
namespace server {

void AttentionServiceImpl::UnaryReactor::Start() {
  start_us_ = svc_->clock_->NowMicros();
  method_ = "unknown";
  if (!request_bytes_->Valid()) {
    // No message at all (an empty one is a valid, empty buffer): gRPC runs
    // a raw handler even when the call ended, cancelled or past its
    // deadline, before its message arrived whole. Not bytes that failed to
    // parse, so not a protocol error; nobody is listening for the answer.
    Finish(grpc::Status(grpc::StatusCode::CANCELLED,
                        "the call ended before its request message arrived"));
    return;
  }
  const size_t message_bytes = request_bytes_->Length();
  svc_->metrics_->BytesReceived(static_cast<int64_t>(message_bytes));
  {
    grpc::ByteBuffer bytes(*request_bytes_);  // shares the slices
    if (!grpc::SerializationTraits<v1::AttendUnaryRequest>::Deserialize(
             &bytes, &request_)
             .ok()) {
      svc_->metrics_->ProtocolErrorSeen(ProtocolError::kUnparseableMessage);
      Finish(ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
          "the request (", message_bytes,
          " bytes) is not a valid scatterbrain.v1.AttendUnaryRequest"))));
      return;
    }
  }
  method_ = MethodLabel(request_.header().settings().method());
  if (svc_->draining()) return Reject(DrainingError());
  std::shared_ptr<KvSession> session;  // set for header.session
  absl::StatusOr<RequestSpec> spec =
      svc_->SpecFor(request_.header(), *ctx_, /*require_id=*/false, &session);
  if (!spec.ok()) return Reject(spec.status());
  const WholeTensor tensors[3] = {
      {"q", request_.q()}, {"k", request_.k()}, {"v", request_.v()}};
  method_ = spec->method_label;
  absl::StatusOr<JobPtr> job = svc_->AdmitWhole(
      *std::move(spec), tensors, "header.shape and header.dtype",
      static_cast<int64_t>(message_bytes), *ctx_);
  if (!job.ok()) return Reject(job.status());
  request_.Clear();  // the tensors are in the job's buffers now
  (*job)->session = std::move(session);
  (*job)->done = [this](const JobPtr& j, JobResult r) {
    OnJobDone(j, std::move(r));
  };
  {
    absl::MutexLock lock(&mu_);
    job_ = *job;
  }
  if (const absl::Status st = svc_->SubmitAdmitted(*job); !st.ok()) {
    Reject(st);
  }
}

void AttentionServiceImpl::UnaryReactor::OnCancel() {
  JobPtr job;
  {
    absl::MutexLock lock(&mu_);
    job = job_;
  }
  if (job != nullptr) svc_->executor_->Cancel(job);
}

void AttentionServiceImpl::UnaryReactor::Reject(const absl::Status& st) {
  svc_->metrics_->RequestDone(method_, CodeName(st.code()), Seconds());
  Finish(ToGrpcStatus(st));
}

void AttentionServiceImpl::UnaryReactor::OnJobDone(const JobPtr& job,
                                                   JobResult result) {
  svc_->SessionUsed(*job);
  absl::Status status = result.status;
  if (status.ok()) {
    v1::AttendUnaryResponse response;
    FillUnaryResponse(job->spec, result, &response);
    bool own_buffer = false;
    if (grpc::SerializationTraits<v1::AttendUnaryResponse>::Serialize(
            response, response_, &own_buffer)
            .ok()) {
      svc_->metrics_->BytesSent(static_cast<int64_t>(response_->Length()));
    } else {
      status = absl::InternalError("the response could not be serialised");
    }
  }
  absl::StatusCode code = status.code();
  if (code == absl::StatusCode::kCancelled && AtDeadline(*ctx_)) {
    code = absl::StatusCode::kDeadlineExceeded;  // dropped at its deadline
  }
  svc_->metrics_->RequestDone(method_, CodeName(code), Seconds());
  svc_->Finished();
  Finish(ToGrpcStatus(status));
}

double AttentionServiceImpl::UnaryReactor::Seconds() const {
  return std::max<int64_t>(svc_->clock_->NowMicros() - start_us_, 0) * 1e-6;
}

}  // namespace server
}  // namespace scatterbrain
