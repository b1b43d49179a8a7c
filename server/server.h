// scatterbrain/server/server.h — the whole server: options, wiring of
// metrics, executor (backend + batcher), the gRPC service with health and
// reflection, and the graceful drain.
#ifndef SCATTERBRAIN_SERVER_SERVER_H_
#define SCATTERBRAIN_SERVER_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "scatterbrain/v1/attention.pb.h"
#include "server/batcher.h"
#include "server/clock.h"
#include "server/executor.h"
#include "server/http_exposer.h"
#include "server/metrics.h"
#include "server/service.h"

namespace scatterbrain {
namespace server {

struct ServerOptions {
  // Address the gRPC endpoint and the metrics bind to.
  std::string host = "0.0.0.0";
  // gRPC port; 0 picks a free one (Server::port() says which).
  int port = 50051;
  // Prometheus /metrics port; 0 turns the HTTP endpoint off.
  int metrics_port = 9464;
  // The /metrics endpoint's timeouts and caps (defaults: HttpExposerOptions).
  HttpExposerOptions metrics_http;
  // Largest gRPC message the server accepts (a chunk plus its framing; an
  // AttendUnary request in full).
  int64_t max_message_bytes = int64_t{4} << 20;
  // On Shutdown, how long in-flight work may take before it is cancelled.
  double drain_timeout_s = 30;
  // The backend, the batcher and error sampling (defaults: ExecutorOptions).
  ExecutorOptions executor;
  // Per-request and per-stream limits, output chunking (defaults:
  // ServiceOptions; max_queued_answers is not a flag).
  ServiceOptions service;
};

// INVALID_ARGUMENT naming the option for out-of-range values.
absl::Status ValidateServerOptions(const ServerOptions& options);

class Server {
 public:
  // Validates the options, creates the backend, binds the ports and starts
  // serving (health SERVING). Errors: a bad option, an unavailable backend,
  // a port in use.
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const ServerOptions& options, const Clock* clock = RealClock::Get());
  ~Server();  // Shutdown()

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Graceful drain, then stop: health NOT_SERVING; new requests get
  // UNAVAILABLE; accepted requests run to completion for up to
  // drain_timeout_s (idle streams are ended at once); then the gRPC server
  // shuts down (cancelling what is left) and the executor stops.
  // Idempotent; returns when everything has stopped.
  void Shutdown();

  int port() const { return port_; }
  // "host:port" of the gRPC endpoint and of /metrics ("" when off).
  std::string address() const;
  std::string metrics_address() const;
  const std::string& backend_name() const { return executor_->backend_name(); }
  const v1::ServerInfo& info() const { return info_; }
  Metrics& metrics() { return *metrics_; }
  // Accepted requests not answered yet; requests waiting in the batcher.
  int64_t inflight_requests() const { return service_->inflight(); }
  int queued_requests() const { return executor_->queued(); }

 private:
  Server() = default;

  ServerOptions options_;
  int port_ = 0;
  v1::ServerInfo info_;
  // Destroyed bottom-up: the gRPC server before the service it calls, the
  // service before the executor, everything before the metrics.
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<AttentionServiceImpl> service_;
  std::unique_ptr<grpc::Server> grpc_server_;

  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_SERVER_H_
