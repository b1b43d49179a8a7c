// scatterbrain/server/service.h — the AttentionService on gRPC's callback
// API: the shell that accepts calls, counts requests in flight and drains.
//
// Attend: one reactor per stream (attend_reactor.h). Its read path
// assembles requests (header, then each tensor's chunks in order, converted
// to float32 as they arrive) and submits complete ones to the Executor; its
// write path sends, one StartWrite at a time, a queue of per-request
// answers (answer_writer.h: a header with the stats then output chunks, or
// one error). Executor completions only enqueue and maybe start a write: no
// reaction ever blocks. A bad request fails alone, as an
// AttendResponse{error, last=true}; the stream goes on.
//
// AttendUnary (unary_reactor.h): the same validation, batching and stats for
// one request in one message. GetServerInfo: version, backends, devices,
// limits.
#ifndef SCATTERBRAIN_SERVER_SERVICE_H_
#define SCATTERBRAIN_SERVER_SERVICE_H_

#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "scatterbrain/v1/attention.grpc.pb.h"
#include "server/clock.h"
#include "server/executor.h"
#include "server/metrics.h"
#include "server/request.h"

namespace scatterbrain {
namespace server {

struct ServiceOptions {
  RequestLimits limits;
  // Requests on one stream from their header until their last response
  // message is sent; beyond: RESOURCE_EXHAUSTED for the new request.
  int max_inflight_per_stream = 64;
  // Output bytes per response chunk (rounded down to whole elements).
  int64_t chunk_bytes = int64_t{1} << 20;
  // Answers (errors, outputs) queued on one stream and not yet sent beyond
  // which the stream's reads pause until half have gone: a client that
  // sends without reading cannot grow the server's memory without bound.
  size_t max_queued_answers = 1024;
};

class AttentionServiceImpl final
    : public v1::AttentionService::CallbackService {
 public:
  // `info` is what GetServerInfo answers. The executor, metrics and clock
  // must outlive the service, and the service the grpc::Server it is
  // registered with.
  AttentionServiceImpl(const ServiceOptions& options, v1::ServerInfo info,
                       Executor* executor, Metrics* metrics,
                       const Clock* clock);
  ~AttentionServiceImpl() override;

  grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse>* Attend(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* AttendUnary(
      grpc::CallbackServerContext* context,
      const v1::AttendUnaryRequest* request,
      v1::AttendUnaryResponse* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(
      grpc::CallbackServerContext* context,
      const v1::GetServerInfoRequest* request,
      v1::ServerInfo* response) override;

  // From now on new requests get UNAVAILABLE; requests already accepted
  // (including ones still uploading) run to completion; streams with
  // nothing in flight end with UNAVAILABLE, so idle clients do not hold
  // the shutdown up.
  void StartDrain();
  bool draining() const;
  // Waits until no accepted request is in flight, or `deadline`. True when
  // idle.
  bool WaitIdle(absl::Time deadline);
  // Accepted requests whose last response has not been sent yet.
  int64_t inflight() const;

 private:
  class AttendReactor;
  class UnaryReactor;

  // UNAVAILABLE for requests refused while draining.
  static absl::Status DrainingError();
  // Whether a cancellation is the call's deadline.
  static bool AtDeadline(const grpc::CallbackServerContext& ctx);
  // The call's deadline on clock_ (Job::deadline_us), or Job::kNoDeadline.
  int64_t DeadlineMicros(const grpc::CallbackServerContext& ctx) const;

  // An accepted request counts in the in-flight gauge until Finished. False
  // (nothing counted) when draining.
  bool TryAccept();
  void Finished();
  // Streams register for drain notices; returns the draining flag at
  // registration (atomic with it).
  bool Register(AttendReactor* reactor);
  void Unregister(AttendReactor* reactor);

  const ServiceOptions options_;
  const v1::ServerInfo info_;
  Executor* const executor_;
  Metrics* const metrics_;
  const Clock* const clock_;

  mutable absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  int64_t inflight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_set<AttendReactor*> reactors_ ABSL_GUARDED_BY(mu_);
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_SERVICE_H_
