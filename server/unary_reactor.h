// scatterbrain/server/unary_reactor.h — one AttendUnary call: the same
// validation, batching and stats as a stream's request, for a request whose
// tensors fit in one message.
#ifndef SCATTERBRAIN_SERVER_UNARY_REACTOR_H_
#define SCATTERBRAIN_SERVER_UNARY_REACTOR_H_

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "scatterbrain/v1/attention.pb.h"
#include "server/executor.h"
#include "server/service.h"

namespace scatterbrain {
namespace server {

// gRPC owns the reactor and deletes it in OnDone, which follows Finish;
// Finish is called exactly once: at a rejection, or when the job is done
// (the executor calls `done` exactly once for every job it accepted).
class AttentionServiceImpl::UnaryReactor final
    : public grpc::ServerUnaryReactor {
 public:
  // `request` is the message's bytes, parsed here; `response` receives the
  // serialised AttendUnaryResponse.
  UnaryReactor(AttentionServiceImpl* svc, grpc::CallbackServerContext* ctx,
               const grpc::ByteBuffer* request, grpc::ByteBuffer* response)
      : svc_(svc), ctx_(ctx), request_bytes_(request), response_(response) {}

  // Parses and validates the request, reserves its memory, converts the
  // tensors and submits the job.
  void Start();
  void OnCancel() override;
  void OnDone() override { delete this; }

 private:
  void Reject(const absl::Status& st);
  void OnJobDone(const JobPtr& job, JobResult result);
  double Seconds() const;

  AttentionServiceImpl* const svc_;
  grpc::CallbackServerContext* const ctx_;
  const grpc::ByteBuffer* const request_bytes_;
  grpc::ByteBuffer* const response_;
  v1::AttendUnaryRequest request_;  // parsed; its tensors freed once converted
  int64_t start_us_ = 0;
  std::string method_;
  absl::Mutex mu_;
  JobPtr job_ ABSL_GUARDED_BY(mu_);
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_UNARY_REACTOR_H_
