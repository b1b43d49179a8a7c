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
//
// Attend and AttendUnary are registered raw (grpc::ByteBuffer): the service
// parses the messages itself, so a message that is not the RPC's type ends
// the call with INVALID_ARGUMENT saying so (gRPC's generated handler ended a
// stream with OK, dropping the requests after it, and answered a unary
// call UNIMPLEMENTED with no message).
//
// Admission: every accepted request reserves its buffers' bytes against the
// service's MemoryBudget (memory_budget.h) at its header. A timer thread
// enforces the upload, stream-idle and send timeouts (ServiceOptions).
#ifndef SCATTERBRAIN_SERVER_SERVICE_H_
#define SCATTERBRAIN_SERVER_SERVICE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "scatterbrain/v1/attention.grpc.pb.h"
#include "server/auth.h"
#include "server/clock.h"
#include "server/executor.h"
#include "server/memory_budget.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/session_registry.h"

namespace scatterbrain {
namespace server {

struct ServiceOptions {
  RequestLimits limits;
  // Settings a request leaves unset that the server chooses (default: the
  // support sparse=auto; see RequestDefaults).
  RequestDefaults defaults;
  // Requests on one stream from their header until their last response
  // message is sent; beyond: RESOURCE_EXHAUSTED for the new request.
  int max_inflight_per_stream = 64;
  // Output bytes per response chunk (rounded down to whole elements).
  int64_t chunk_bytes = int64_t{1} << 20;
  // Answers (errors, outputs) queued on one stream and not yet sent beyond
  // which the stream's reads pause until half have gone: a client that
  // sends without reading cannot grow the server's memory without bound.
  size_t max_queued_answers = 1024;
  // Bytes all requests in flight may hold in buffers (inputs, output, the
  // unary messages: RequestMemoryBytes); a request that does not fit is
  // refused with RESOURCE_EXHAUSTED. 0: DefaultMaxMemoryBytes() (half the
  // machine's or the container's memory).
  int64_t max_memory_bytes = 0;
  // A request's tensors must be complete this long after its header, else
  // it is answered DEADLINE_EXCEEDED and its buffers freed. 0: no limit.
  double upload_timeout_s = 120;
  // A stream with nothing in flight and no message for this long is ended
  // (UNAVAILABLE; clients reopen). 0: no limit.
  double stream_idle_timeout_s = 600;
  // A write the client does not take for this long (it stopped reading)
  // cancels the stream, freeing what its answers hold. 0: no limit.
  double send_timeout_s = 120;
  // How often the timeouts are checked (real time; the deadlines themselves
  // use the injected clock).
  int64_t timeout_check_interval_ms = 100;
  // Server-held K/V sessions: block size, memory and count limits, TTLs
  // (defaults: SessionOptions).
  SessionOptions sessions;
};

// Attend and AttendUnary raw (see the file comment), GetServerInfo and the
// session RPCs typed.
using AttentionServiceBase = v1::AttentionService::WithRawCallbackMethod_Attend<
    v1::AttentionService::WithRawCallbackMethod_AttendUnary<
        v1::AttentionService::WithCallbackMethod_GetServerInfo<
            v1::AttentionService::WithCallbackMethod_CreateSession<
                v1::AttentionService::WithCallbackMethod_AppendKV<
                    v1::AttentionService::WithCallbackMethod_GetSession<
                        v1::AttentionService::WithCallbackMethod_DeleteSession<
                            v1::AttentionService::Service>>>>>>>;

class AttentionServiceImpl final : public AttentionServiceBase {
 public:
  // `info` is what GetServerInfo answers. The executor, metrics and clock
  // must outlive the service, and the service the grpc::Server it is
  // registered with.
  // `auth` (may be null: no check) must outlive the service too.
  AttentionServiceImpl(const ServiceOptions& options, v1::ServerInfo info,
                       Executor* executor, Metrics* metrics, const Clock* clock,
                       Authenticator* auth = nullptr);
  ~AttentionServiceImpl() override;

  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Attend(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* AttendUnary(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(
      grpc::CallbackServerContext* context,
      const v1::GetServerInfoRequest* request,
      v1::ServerInfo* response) override;

  // Sessions (session_service.cc; append_reactor.h for AppendKV), each
  // scoped by the caller's identity: another caller's session is NOT_FOUND.
  grpc::ServerUnaryReactor* CreateSession(
      grpc::CallbackServerContext* context,
      const v1::CreateSessionRequest* request,
      v1::SessionInfo* response) override;
  grpc::ServerReadReactor<v1::AppendKVRequest>* AppendKV(
      grpc::CallbackServerContext* context, v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const v1::GetSessionRequest* request,
                                       v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* DeleteSession(
      grpc::CallbackServerContext* context,
      const v1::DeleteSessionRequest* request,
      v1::DeleteSessionResponse* response) override;

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
  const MemoryBudget& memory_budget() const { return budget_; }
  SessionRegistry& sessions() { return *sessions_; }
  // One request whose tensors are whole in memory (AttendUnary's and the
  // KServe ModelInfer's path; attend_reactor.cc assembles chunks itself):
  // checks each tensor's bytes against `spec` (the error names the tensor
  // and "for <expected_for>"), reserves the memory (`message_bytes`: the
  // request message, held twice until converted), converts the tensors into
  // a job's buffers and counts it in flight. The caller sets job->done and
  // submits it with SubmitAdmitted.
  struct WholeTensor {
    const char* name;
    absl::string_view bytes;
    // Set when `bytes` live in memory the caller keeps valid for as long as
    // this is held (a shared-memory region): float32 bytes, suitably
    // aligned, are then used in place instead of copied.
    std::shared_ptr<const void> owner = nullptr;
  };
  absl::StatusOr<JobPtr> AdmitWhole(RequestSpec spec,
                                    const WholeTensor (&tensors)[3],
                                    absl::string_view expected_for,
                                    int64_t message_bytes,
                                    const grpc::CallbackServerContext& ctx);
  // Submits an admitted job; on failure it is no longer counted in flight
  // and `done` will not be called.
  absl::Status SubmitAdmitted(const JobPtr& job);

  // Checks every stream's and append's timeouts and evicts sessions idle
  // past their TTL, now (the timer thread calls it; tests with a fake clock
  // may too).
  void CheckTimeouts();

 private:
  class AttendReactor;
  class UnaryReactor;
  class AppendReactor;
  // The KServe v2 front end (kserve_service.h) shares admission, the
  // executor, the drain and the caller's identity.
  friend class KServeServiceImpl;

  // OK, or UNAUTHENTICATED when the call lacks an accepted token.
  grpc::Status Authorize(const grpc::CallbackServerContext& ctx);
  // Who the caller is (auth.h's Identity; "anonymous" without an
  // authenticator): sessions are scoped by it.
  std::string IdentityOf(const grpc::CallbackServerContext& ctx) const;
  // A request header's spec: SpecFromHeader's, or for `header.session` the
  // session's (looked up for the caller: NOT_FOUND), returned in `session`;
  // an appending step makes room for its bytes first.
  absl::StatusOr<RequestSpec> SpecFor(const v1::RequestHeader& header,
                                      const grpc::CallbackServerContext& ctx,
                                      bool require_id,
                                      std::shared_ptr<KvSession>* session);
  // After a job on a session is done: its last use, the bytes gauges.
  void SessionUsed(const Job& job);
  // The SessionInfo of `view`'s session.
  void FillSessionInfo(const SessionView& view, v1::SessionInfo* out) const;
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
  // Streams register for drain notices and timeouts; returns the draining
  // flag at registration (atomic with it).
  bool Register(AttendReactor* reactor);
  void Unregister(AttendReactor* reactor);
  // Calls f(reactor) for every registered stream, each held by a reference
  // (alive even past its OnDone) and with no lock held.
  template <typename F>
  void ForEachStream(F f);
  // AppendKV calls register for the upload timeout.
  void RegisterAppend(AppendReactor* reactor);
  void UnregisterAppend(AppendReactor* reactor);
  // Reserves a request's buffer bytes; RESOURCE_EXHAUSTED naming the budget.
  absl::StatusOr<MemoryReservation> ReserveMemory(const RequestSpec& spec,
                                                  int64_t unary_bytes);
  void TimerLoop();

  const ServiceOptions options_;
  const v1::ServerInfo info_;
  Executor* const executor_;
  Metrics* const metrics_;
  const Clock* const clock_;
  Authenticator* const auth_;

  mutable absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  int64_t inflight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_set<AttendReactor*> reactors_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<AppendReactor*> appends_ ABSL_GUARDED_BY(mu_);
  bool stop_timer_ ABSL_GUARDED_BY(mu_) = false;

  MemoryBudget budget_;
  std::unique_ptr<SessionRegistry> sessions_;  // draws on budget_
  std::thread timer_;  // last: started when everything else exists
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_SERVICE_H_
