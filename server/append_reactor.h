// scatterbrain/server/append_reactor.h — one AppendKV call: a header naming
// the session, then K's and V's chunks in order into staging buffers
// (reserved from the memory budget at the header), applied to the session
// all or nothing once the client half-closes. A cancelled, broken or
// timed-out stream applies nothing; bad sizes or offsets are
// INVALID_ARGUMENT naming the field.
//
// Lifetime: gRPC owns the reactor until OnDone; the service's timer holds a
// reference (Ref/Unref) while it checks the upload timeout. Finish is
// called exactly once, by whoever leaves the read path last once an end is
// decided (the read path, or the timer when no read callback is running),
// so StartRead is never called after Finish. The append itself runs on the
// gRPC thread that sees the half-close (KvSession::Append is synchronous;
// the staging buffers are complete by then).
#ifndef SCATTERBRAIN_SERVER_APPEND_REACTOR_H_
#define SCATTERBRAIN_SERVER_APPEND_REACTOR_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "scatterbrain/v1/attention.pb.h"
#include "server/memory_budget.h"
#include "server/service.h"
#include "server/session_registry.h"
#include "server/tensor_assembler.h"

namespace scatterbrain {
namespace server {

class AttentionServiceImpl::AppendReactor final
    : public grpc::ServerReadReactor<v1::AppendKVRequest> {
 public:
  AppendReactor(AttentionServiceImpl* svc, grpc::CallbackServerContext* ctx,
                v1::SessionInfo* response);

  // Registers for the timer and issues the first read.
  void Begin();
  void Ref() { refs_.fetch_add(1); }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }
  // The timer: past upload_timeout_s since the call began and not yet
  // applying, the call ends DEADLINE_EXCEEDED and nothing is applied.
  void CheckTimeouts(int64_t now_us);

  void OnReadDone(bool ok) override;
  void OnCancel() override { cancelled_.store(true); }
  void OnDone() override;

 private:
  ~AppendReactor() override = default;

  // One message: OK to read on, else the call's status.
  absl::Status Process();
  absl::Status HandleHeader(const v1::AppendKVHeader& header);
  absl::Status HandleChunk(const v1::TensorChunk& chunk);
  // Reads are over: applies the append (client half-close) or not.
  absl::Status AtEndOfReads();
  // The call ends with `st` (the first reason stands); Finish happens when
  // no read callback is running.
  void EndWith(const absl::Status& st);
  // Leaves the read path; finishes if an end is decided and nobody else is
  // in it.
  void Leave();

  AttentionServiceImpl* const svc_;
  grpc::CallbackServerContext* const ctx_;
  v1::SessionInfo* const response_;
  const std::string identity_;
  std::atomic<int> refs_{1};  // gRPC's, released in OnDone
  std::atomic<bool> cancelled_{false};

  // Read path only (one read callback at a time).
  v1::AppendKVRequest msg_;
  bool have_header_ = false;
  bool accepted_ = false;  // counted in the service's in-flight requests
  SessionView view_;
  std::vector<int64_t> counts_;
  DType dtype_ = DType::kFloat32;
  TensorAssembler k_, v_;
  MemoryReservation staging_;

  absl::Mutex mu_;
  const int64_t start_us_;
  int busy_ ABSL_GUARDED_BY(mu_) = 0;  // read callbacks running
  bool applying_ ABSL_GUARDED_BY(mu_) = false;
  bool end_decided_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status end_status_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_APPEND_REACTOR_H_
