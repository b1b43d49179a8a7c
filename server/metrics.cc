// scatterbrain/server/metrics.cc — Metrics on prometheus-cpp.
//
// Labelled children are looked up once per label value and cached behind a
// reader lock, so the hot paths neither build a prometheus::Labels map nor
// take prometheus-cpp's family mutex after the first call for a value.
#include "server/metrics.h"

#include <cmath>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "server/http_exposer.h"

namespace scatterbrain {
namespace server {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

// Seconds, 100 us .. 60 s (1-2.5-5 steps): covers a tiny exact call up to a
// queue stalled behind long requests.
const Histogram::BucketBoundaries& SecondsBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
      0.1,  0.25,   0.5,  1.0,  2.5,    5.0,  10.0, 30.0,   60.0};
  return *b;
}

// Relative error 0.001 .. 10 (1-2-5 steps): approximations are expected in
// the 1e-2 .. 1 range; beyond 1 the output is useless and worth seeing.
const Histogram::BucketBoundaries& ErrorBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0};
  return *b;
}

// Requests per batch, powers of two 1 .. 256 (max_queue_requests default).
const Histogram::BucketBoundaries& BatchBuckets() {
  static const auto* b =
      new Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256};
  return *b;
}

// Session steps, 10 us .. 10 s (1-2.5-5 steps): an incremental decode step
// takes well under a millisecond; a prefill or exact step over a long
// context takes seconds.
const Histogram::BucketBoundaries& StepBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      1e-5,   2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
      2.5e-2, 5e-2,   0.1,  0.25, 0.5,    1.0,  2.5,  5.0,    10.0};
  return *b;
}

// Clock skew or a caller bug must not poison a histogram's _sum (NaN stays
// NaN forever) or count a negative duration.
bool Observable(double v) { return std::isfinite(v) && v >= 0; }

}  // namespace

struct Metrics::Impl {
  // The histograms of one method, resolved together on first use.
  struct MethodMetrics {
    Histogram* request_seconds;
    Histogram* queue_seconds;
    Histogram* compute_seconds;
    Histogram* approx_error;
  };

  std::shared_ptr<prometheus::Registry> registry =
      std::make_shared<prometheus::Registry>();

  Family<Counter>& requests = prometheus::BuildCounter()
                                  .Name("scatterbrain_requests_total")
                                  .Help(
                                      "Finished requests by method and gRPC "
                                      "status code.")
                                  .Register(*registry);
  Family<Histogram>& request_duration =
      prometheus::BuildHistogram()
          .Name("scatterbrain_request_duration_seconds")
          .Help(
              "End-to-end time of successful requests, first byte "
              "received to last byte sent.")
          .Register(*registry);
  Family<Histogram>& queue_duration =
      prometheus::BuildHistogram()
          .Name("scatterbrain_queue_duration_seconds")
          .Help("Time a request waited in the batcher before its batch ran.")
          .Register(*registry);
  Family<Histogram>& compute_duration =
      prometheus::BuildHistogram()
          .Name("scatterbrain_compute_duration_seconds")
          .Help("Compute time of the batch a request ran in.")
          .Register(*registry);
  Family<Histogram>& batch_size_family =
      prometheus::BuildHistogram()
          .Name("scatterbrain_batch_size")
          .Help("Requests per executed batch.")
          .Register(*registry);
  Family<Counter>& memory_saved_family =
      prometheus::BuildCounter()
          .Name("scatterbrain_attention_memory_saved_bytes_total")
          .Help(
              "Dense attention-matrix bytes minus the bytes actually "
              "used, summed over requests.")
          .Register(*registry);
  Family<Histogram>& approx_error_family =
      prometheus::BuildHistogram()
          .Name("scatterbrain_approx_relative_error")
          .Help(
              "Estimated relative error of approximate outputs (sampled "
              "rows against exact).")
          .Register(*registry);
  Family<Counter>& head_plans_family =
      prometheus::BuildCounter()
          .Name("scatterbrain_head_plans_total")
          .Help(
              "Per (batch, head) choices of Scatterbrain requests that choose "
              "per head (sparse=auto, global_keys, target_error), by the "
              "support used, or exact where the error target fell back to "
              "exact attention.")
          .Register(*registry);
  Family<Counter>& denominator_guard_family =
      prometheus::BuildCounter()
          .Name("scatterbrain_denominator_guard_total")
          .Help(
              "Rows whose softmax denominator estimate was clamped by the "
              "positivity guard.")
          .Register(*registry);
  Family<Gauge>& inflight_family =
      prometheus::BuildGauge()
          .Name("scatterbrain_inflight_requests")
          .Help("Requests received and not yet answered.")
          .Register(*registry);
  Family<Gauge>& queue_depth_family =
      prometheus::BuildGauge()
          .Name("scatterbrain_queue_depth")
          .Help("Requests waiting in the batcher.")
          .Register(*registry);
  Family<Counter>& received_family =
      prometheus::BuildCounter()
          .Name("scatterbrain_received_bytes_total")
          .Help("Tensor bytes received from clients.")
          .Register(*registry);
  Family<Counter>& sent_family = prometheus::BuildCounter()
                                     .Name("scatterbrain_sent_bytes_total")
                                     .Help("Tensor bytes sent to clients.")
                                     .Register(*registry);
  Family<Gauge>& device_memory =
      prometheus::BuildGauge()
          .Name("scatterbrain_device_memory_used_bytes")
          .Help("Memory in use on each compute device.")
          .Register(*registry);
  Family<Counter>& auth_refused_family =
      prometheus::BuildCounter()
          .Name("scatterbrain_auth_refused_total")
          .Help(
              "AttentionService calls refused UNAUTHENTICATED, by reason "
              "(missing, malformed or invalid bearer token).")
          .Register(*registry);

  Family<Counter>& protocol_errors =
      prometheus::BuildCounter()
          .Name("scatterbrain_protocol_errors_total")
          .Help(
              "Stream-level errors that are not requests: unparseable or "
              "empty messages, unknown request ids, timeouts, unknown "
              "methods.")
          .Register(*registry);
  Family<Gauge>& memory_budget_family =
      prometheus::BuildGauge()
          .Name("scatterbrain_memory_budget_bytes")
          .Help("The memory budget for request buffers (max_memory_bytes).")
          .Register(*registry);
  Family<Gauge>& memory_reserved_family =
      prometheus::BuildGauge()
          .Name("scatterbrain_memory_reserved_bytes")
          .Help("Request-buffer bytes reserved against the budget now.")
          .Register(*registry);

  Family<Counter>& stopped_family =
      prometheus::BuildCounter()
          .Name("scatterbrain_requests_stopped_total")
          .Help(
              "Requests stopped because their caller cancelled them or their "
              "deadline passed: before they ran (stage=queued) or while "
              "computing (stage=running).")
          .Register(*registry);
  // [reason][stage], every series from the start (fixed label values).
  Counter* stopped[2][2] = {
      {&stopped_family.Add({{"reason", "cancelled"}, {"stage", "queued"}}),
       &stopped_family.Add({{"reason", "cancelled"}, {"stage", "running"}})},
      {&stopped_family.Add(
           {{"reason", "deadline_exceeded"}, {"stage", "queued"}}),
       &stopped_family.Add(
           {{"reason", "deadline_exceeded"}, {"stage", "running"}})}};

  Family<Gauge>& sessions_open_family =
      prometheus::BuildGauge()
          .Name("scatterbrain_sessions_open")
          .Help("Server-held K/V sessions open now.")
          .Register(*registry);
  Family<Gauge>& session_kv_family =
      prometheus::BuildGauge()
          .Name("scatterbrain_session_kv_bytes")
          .Help("Keys and values all sessions hold, as stored.")
          .Register(*registry);
  Family<Gauge>& session_state_family =
      prometheus::BuildGauge()
          .Name("scatterbrain_session_state_bytes")
          .Help(
              "Incremental state all sessions hold: running low-rank sums, "
              "LSH indexes and centroids, calibration rows.")
          .Register(*registry);
  Family<Counter>& session_evictions_family =
      prometheus::BuildCounter()
          .Name("scatterbrain_session_evictions_total")
          .Help(
              "Sessions evicted idle past their TTL: by the periodic sweep "
              "(reason=ttl) or to make room for a new session or new bytes "
              "(reason=memory).")
          .Register(*registry);
  Family<Counter>& session_appends_family =
      prometheus::BuildCounter()
          .Name("scatterbrain_session_appends_total")
          .Help("Appends applied to sessions (AppendKV and appending steps).")
          .Register(*registry);
  Family<Histogram>& session_step_family =
      prometheus::BuildHistogram()
          .Name("scatterbrain_session_step_seconds")
          .Help(
              "Compute time of Attend requests on sessions, by whether they "
              "ran on the incremental state (O(budget) per query row).")
          .Register(*registry);
  Family<Counter>& session_refits_family =
      prometheus::BuildCounter()
          .Name("scatterbrain_session_refits_total")
          .Help("k-means refits of sessions' LSH indexes (all heads, rounds).")
          .Register(*registry);

  // Unlabelled series exist from the start, so a scrape shows them as 0.
  Gauge& sessions_open = sessions_open_family.Add({});
  Gauge& session_kv_bytes = session_kv_family.Add({});
  Gauge& session_state_bytes = session_state_family.Add({});
  Counter* session_evictions[2] = {
      &session_evictions_family.Add({{"reason", "ttl"}}),
      &session_evictions_family.Add({{"reason", "memory"}})};
  Counter& session_appends = session_appends_family.Add({});
  Histogram* session_step[2] = {
      &session_step_family.Add({{"incremental", "false"}}, StepBuckets()),
      &session_step_family.Add({{"incremental", "true"}}, StepBuckets())};
  Counter& session_refits = session_refits_family.Add({});
  Histogram& batch_size = batch_size_family.Add({}, BatchBuckets());
  Counter& memory_saved = memory_saved_family.Add({});
  Counter& denominator_guards = denominator_guard_family.Add({});
  // Every label value from the start (at 0), indexed by kLsh, kLocal,
  // kBoth, then exact.
  Counter* head_plans[4] = {&head_plans_family.Add({{"sparse", "lsh"}}),
                            &head_plans_family.Add({{"sparse", "local"}}),
                            &head_plans_family.Add({{"sparse", "both"}}),
                            &head_plans_family.Add({{"sparse", "exact"}})};
  Gauge& inflight = inflight_family.Add({});
  Gauge& queue_depth = queue_depth_family.Add({});
  Counter& received = received_family.Add({});
  Counter& sent = sent_family.Add({});
  Gauge& memory_budget = memory_budget_family.Add({});
  Gauge& memory_reserved = memory_reserved_family.Add({});
  // Every kind from the start (a fixed set: the label cannot grow).
  std::vector<Counter*> protocol_error_counters = [this] {
    std::vector<Counter*> v;
    for (int k = 0; k <= static_cast<int>(ProtocolError::kUnknownMethod); ++k) {
      v.push_back(&protocol_errors.Add(
          {{"kind", ProtocolErrorName(static_cast<ProtocolError>(k))}}));
    }
    return v;
  }();
  // Every reason from the start (at 0), indexed by AuthRefusal.
  Counter* auth_refused[3] = {
      &auth_refused_family.Add({{"reason", "missing"}}),
      &auth_refused_family.Add({{"reason", "malformed"}}),
      &auth_refused_family.Add({{"reason", "invalid"}})};

  // Label-value caches. Pointers stay valid: prometheus-cpp owns children
  // by unique_ptr and we never Remove them.
  mutable absl::Mutex mu;
  absl::flat_hash_map<std::string, MethodMetrics> by_method ABSL_GUARDED_BY(mu);
  // Keyed by method + '\0' + code (neither contains NUL in practice; a
  // collision would only merge two series, never crash).
  absl::flat_hash_map<std::string, Counter*> by_method_code ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<std::string, Gauge*> by_device ABSL_GUARDED_BY(mu);

  absl::Mutex expose_mu;
  std::unique_ptr<HttpExposer> exposer ABSL_GUARDED_BY(expose_mu);

  // By value: a later insertion may rehash the map under another caller.
  MethodMetrics ForMethod(const std::string& method) {
    {
      absl::ReaderMutexLock lock(&mu);
      auto it = by_method.find(method);
      if (it != by_method.end()) return it->second;
    }
    absl::MutexLock lock(&mu);
    auto it = by_method.find(method);
    if (it != by_method.end()) return it->second;  // raced with another
    const prometheus::Labels labels{{"method", method}};
    MethodMetrics m{&request_duration.Add(labels, SecondsBuckets()),
                    &queue_duration.Add(labels, SecondsBuckets()),
                    &compute_duration.Add(labels, SecondsBuckets()),
                    &approx_error_family.Add(labels, ErrorBuckets())};
    return by_method.emplace(method, m).first->second;
  }

  Counter& ForMethodCode(const std::string& method, const std::string& code) {
    std::string key = absl::StrCat(method, std::string(1, '\0'), code);
    {
      absl::ReaderMutexLock lock(&mu);
      auto it = by_method_code.find(key);
      if (it != by_method_code.end()) return *it->second;
    }
    absl::MutexLock lock(&mu);
    auto it = by_method_code.find(key);
    if (it != by_method_code.end()) return *it->second;
    Counter* c = &requests.Add({{"method", method}, {"code", code}});
    by_method_code.emplace(std::move(key), c);
    return *c;
  }

  Gauge& ForDevice(const std::string& device) {
    {
      absl::ReaderMutexLock lock(&mu);
      auto it = by_device.find(device);
      if (it != by_device.end()) return *it->second;
    }
    absl::MutexLock lock(&mu);
    auto it = by_device.find(device);
    if (it != by_device.end()) return *it->second;
    Gauge* g = &device_memory.Add({{"device", device}});
    by_device.emplace(device, g);
    return *g;
  }
};

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}

// The exposer (if any) is destroyed before the registry it serves: members
// are destroyed in reverse order, and it is declared last in Impl.
Metrics::~Metrics() = default;

const char* ProtocolErrorName(ProtocolError kind) {
  switch (kind) {
    case ProtocolError::kUnparseableMessage:
      return "unparseable_message";
    case ProtocolError::kEmptyMessage:
      return "empty_message";
    case ProtocolError::kUnknownRequestId:
      return "unknown_request_id";
    case ProtocolError::kUploadTimeout:
      return "upload_timeout";
    case ProtocolError::kIdleTimeout:
      return "idle_timeout";
    case ProtocolError::kSendTimeout:
      return "send_timeout";
    case ProtocolError::kUnknownMethod:
      return "unknown_method";
  }
  return "other";
}

void Metrics::RequestDone(const std::string& method, const std::string& code,
                          double request_seconds) {
  impl_->ForMethodCode(method, code).Increment();
  // Only successes: failed requests end early (validation) or late
  // (deadline), and mixing them in would hide the latency of real work.
  if (code == "OK" && Observable(request_seconds)) {
    impl_->ForMethod(method).request_seconds->Observe(request_seconds);
  }
}

void Metrics::QueueTime(const std::string& method, double seconds) {
  if (!Observable(seconds)) return;
  impl_->ForMethod(method).queue_seconds->Observe(seconds);
}

void Metrics::ComputeTime(const std::string& method, double seconds) {
  if (!Observable(seconds)) return;
  impl_->ForMethod(method).compute_seconds->Observe(seconds);
}

void Metrics::BatchExecuted(int requests) {
  if (requests <= 0) return;
  impl_->batch_size.Observe(static_cast<double>(requests));
}

void Metrics::MemorySaved(int64_t bytes) {
  if (bytes <= 0) return;  // counters only go up
  impl_->memory_saved.Increment(static_cast<double>(bytes));
}

void Metrics::ApproxError(const std::string& method, double relative_error) {
  if (!Observable(relative_error)) return;
  impl_->ForMethod(method).approx_error->Observe(relative_error);
}

void Metrics::HeadPlans(const std::vector<HeadPlan>& plans) {
  int64_t counts[4] = {0, 0, 0, 0};
  for (const HeadPlan& h : plans) {
    int i = 3;  // exact
    if (!h.exact) {
      switch (h.sparse) {
        case SparseSupport::kLsh:
          i = 0;
          break;
        case SparseSupport::kLocal:
          i = 1;
          break;
        case SparseSupport::kBoth:
        case SparseSupport::kAuto:  // never reported; both is what runs
          i = 2;
          break;
      }
    }
    ++counts[i];
  }
  for (int i = 0; i < 4; ++i) {
    if (counts[i] > 0) {
      impl_->head_plans[i]->Increment(static_cast<double>(counts[i]));
    }
  }
}

void Metrics::DenominatorGuards(int64_t count) {
  if (count <= 0) return;
  impl_->denominator_guards.Increment(static_cast<double>(count));
}

void Metrics::InflightAdd(int64_t delta) {
  impl_->inflight.Increment(static_cast<double>(delta));
}

void Metrics::SetQueueDepth(int64_t depth) {
  impl_->queue_depth.Set(static_cast<double>(depth));
}

void Metrics::BytesReceived(int64_t bytes) {
  if (bytes <= 0) return;
  impl_->received.Increment(static_cast<double>(bytes));
}

void Metrics::BytesSent(int64_t bytes) {
  if (bytes <= 0) return;
  impl_->sent.Increment(static_cast<double>(bytes));
}

void Metrics::SetDeviceMemory(const std::string& device, int64_t bytes) {
  impl_->ForDevice(device).Set(static_cast<double>(bytes));
}

void Metrics::ProtocolErrorSeen(ProtocolError kind) {
  const size_t k = static_cast<size_t>(kind);
  if (k < impl_->protocol_error_counters.size()) {
    impl_->protocol_error_counters[k]->Increment();
  }
}

void Metrics::SetMemoryBudget(int64_t limit_bytes) {
  impl_->memory_budget.Set(static_cast<double>(limit_bytes));
}

void Metrics::SetMemoryReserved(int64_t bytes) {
  impl_->memory_reserved.Set(static_cast<double>(bytes));
}

void Metrics::AuthRefused(AuthRefusal reason) {
  impl_->auth_refused[static_cast<int>(reason)]->Increment();
}

void Metrics::RequestStopped(StopReason reason, StopStage stage) {
  impl_
      ->stopped[reason == StopReason::kDeadlineExceeded ? 1 : 0]
               [stage == StopStage::kRunning ? 1 : 0]
      ->Increment();
}

void Metrics::SetSessionsOpen(int64_t sessions) {
  impl_->sessions_open.Set(static_cast<double>(sessions));
}

void Metrics::SetSessionBytes(int64_t kv_bytes, int64_t state_bytes) {
  impl_->session_kv_bytes.Set(static_cast<double>(kv_bytes));
  impl_->session_state_bytes.Set(static_cast<double>(state_bytes));
}

void Metrics::SessionEvicted(SessionEviction reason) {
  impl_->session_evictions[reason == SessionEviction::kMemory ? 1 : 0]
      ->Increment();
}

void Metrics::SessionAppended() { impl_->session_appends.Increment(); }

void Metrics::SessionStep(bool incremental, double seconds) {
  if (!Observable(seconds)) return;
  impl_->session_step[incremental ? 1 : 0]->Observe(seconds);
}

void Metrics::SessionRefits(int64_t refits) {
  if (refits <= 0) return;
  impl_->session_refits.Increment(static_cast<double>(refits));
}

std::string Metrics::Serialize() const {
  return prometheus::TextSerializer().Serialize(impl_->registry->Collect());
}

int Metrics::exposed_port() const {
  absl::MutexLock lock(&impl_->expose_mu);
  return impl_->exposer == nullptr ? 0 : impl_->exposer->port();
}

absl::Status Metrics::Expose(const std::string& bind_address,
                             const HttpExposerOptions& options) {
  absl::MutexLock lock(&impl_->expose_mu);
  if (impl_->exposer != nullptr) {
    return absl::FailedPreconditionError(
        "metrics are already exposed; Expose may be called once");
  }
  // Our own endpoint, not prometheus-cpp's civetweb Exposer (see
  // http_exposer.h: its 100 KiB worker stacks overflow once OpenBLAS is
  // loaded).
  absl::StatusOr<std::unique_ptr<HttpExposer>> e = HttpExposer::Start(
      bind_address, [this] { return Serialize(); }, options);
  if (!e.ok()) return e.status();
  impl_->exposer = std::move(*e);
  return absl::OkStatus();
}

std::shared_ptr<prometheus::Registry> Metrics::registry() const {
  return impl_->registry;
}

}  // namespace server
}  // namespace scatterbrain
