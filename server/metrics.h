// scatterbrain/server/metrics.h — the service's Prometheus metrics
// (prometheus-cpp registry and text format). A Metrics object owns its
// registry and is injected into the service (no globals); Expose() serves it
// on /metrics through HttpExposer (http_exposer.h says why not civetweb). All
// methods are thread-safe and cheap (no I/O).
#ifndef SCATTERBRAIN_SERVER_METRICS_H_
#define SCATTERBRAIN_SERVER_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/params.h"
#include "server/http_exposer.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace scatterbrain {
namespace server {

// Names (base units, _total counters):
//   scatterbrain_requests_total{method,code}
//   scatterbrain_request_duration_seconds{method}   histogram
//   scatterbrain_queue_duration_seconds{method}     histogram
//   scatterbrain_compute_duration_seconds{method}   histogram
//   scatterbrain_batch_size                         histogram (requests)
//   scatterbrain_attention_memory_saved_bytes_total
//   scatterbrain_approx_relative_error{method}      histogram: a request's
//                                                   error_bound when it has
//                                                   one (target_error), else
//                                                   the sampled estimate
//   scatterbrain_head_plans_total{sparse}           per-head choices (lsh|
//                                                   local|both|exact)
//   scatterbrain_denominator_guard_total
//   scatterbrain_inflight_requests                  gauge
//   scatterbrain_queue_depth                        gauge
//   scatterbrain_received_bytes_total
//   scatterbrain_sent_bytes_total
//   scatterbrain_device_memory_used_bytes{device}   gauge
//   scatterbrain_protocol_errors_total{kind}        messages that are not a
//                                                   request (see ProtocolError)
//   scatterbrain_memory_budget_bytes                gauge (max_memory_bytes)
//   scatterbrain_memory_reserved_bytes              gauge
//
// Label values come from fixed sets: a client cannot mint series (an
// unknown method is "unknown", codes are gRPC's names).

// What a stream-level error was, for scatterbrain_protocol_errors_total.
// These are not requests, so they stay out of requests_total: a client
// sending 5,000 chunks with unknown ids must not look like 5,000 failed
// requests.
enum class ProtocolError {
  kUnparseableMessage,  // bytes that are not the RPC's message
  kEmptyMessage,        // an AttendRequest with no kind set
  kUnknownRequestId,    // a chunk or cancel for no request of the stream
  kUploadTimeout,       // header received, tensors not complete in time
  kIdleTimeout,         // a stream with nothing in flight, ended
  kSendTimeout,         // a client that stopped reading, cancelled
  kUnknownMethod,       // a call to a method this server does not serve
};
const char* ProtocolErrorName(ProtocolError kind);
//   scatterbrain_auth_refused_total{reason}         (missing|malformed|invalid)

// Why a call was refused UNAUTHENTICATED (auth.h): the label's only values.
enum class AuthRefusal { kMissing, kMalformed, kInvalid };
//   scatterbrain_requests_stopped_total{reason,stage}
//     reason: cancelled | deadline_exceeded; stage: queued | running

// Why the executor stopped a request, and where it was then (the labels of
// scatterbrain_requests_stopped_total: a fixed set, never client data).
enum class StopReason { kCancelled, kDeadlineExceeded };
enum class StopStage { kQueued, kRunning };
//   scatterbrain_sessions_open                      gauge
//   scatterbrain_session_kv_bytes                   gauge (K/V as stored)
//   scatterbrain_session_state_bytes                gauge (incremental state)
//   scatterbrain_session_evictions_total{reason}    ttl | memory
//   scatterbrain_session_appends_total              AppendKV + appending steps
//   scatterbrain_session_step_seconds{incremental}  histogram ("true"|"false")
//   scatterbrain_session_refits_total               k-means refits

// Why a session was evicted: idle past its TTL (the sweep), or idle past
// its TTL and in the way of a new session or new bytes (memory).
enum class SessionEviction { kTtl, kMemory };

class Metrics {
 public:
  Metrics();
  ~Metrics();

  // A finished request: its method ("exact", ...), gRPC code name
  // ("OK", "INVALID_ARGUMENT", ...), and end-to-end seconds (only observed
  // into the duration histogram when code is OK).
  void RequestDone(const std::string& method, const std::string& code,
                   double request_seconds);
  void QueueTime(const std::string& method, double seconds);
  void ComputeTime(const std::string& method, double seconds);
  void BatchExecuted(int requests);
  void MemorySaved(int64_t bytes);
  void ApproxError(const std::string& method, double relative_error);
  // A request's per (batch, head) choices (AttentionStats::head_plans):
  // one count per plan, labelled by its support, or "exact" when the error
  // target made the slice exact.
  void HeadPlans(const std::vector<HeadPlan>& plans);
  void DenominatorGuards(int64_t count);
  void InflightAdd(int64_t delta);
  void SetQueueDepth(int64_t depth);
  void BytesReceived(int64_t bytes);
  void BytesSent(int64_t bytes);
  void SetDeviceMemory(const std::string& device, int64_t bytes);
  void ProtocolErrorSeen(ProtocolError kind);
  void SetMemoryBudget(int64_t limit_bytes);
  void SetMemoryReserved(int64_t bytes);
  void AuthRefused(AuthRefusal reason);
  // A request dropped by its caller or its deadline: before it ran
  // (kQueued) or while it computed (kRunning: the backend stopped it).
  void RequestStopped(StopReason reason, StopStage stage);
  // Sessions (server/session_registry.h): the open count and the bytes all
  // of them hold, set whenever they change.
  void SetSessionsOpen(int64_t sessions);
  void SetSessionBytes(int64_t kv_bytes, int64_t state_bytes);
  void SessionEvicted(SessionEviction reason);
  void SessionAppended();
  // One Attend on a session: the batch's compute time, by whether it ran on
  // the incremental state.
  void SessionStep(bool incremental, double seconds);
  void SessionRefits(int64_t refits);

  // The text exposition format of everything registered (for tests).
  std::string Serialize() const;
  // Starts an HTTP exposer on host:port serving /metrics, with `options`'
  // timeouts and caps. Errors (port in use, bad options) come back as a
  // Status, never an abort.
  absl::Status Expose(const std::string& bind_address,
                      const HttpExposerOptions& options = {});
  // The port the exposer listens on (useful after binding port 0); 0 when
  // not exposed.
  int exposed_port() const;
  std::shared_ptr<prometheus::Registry> registry() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_METRICS_H_
