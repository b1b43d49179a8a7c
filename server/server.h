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
#include "server/auth.h"
#include "server/batcher.h"
#include "server/clock.h"
#include "server/executor.h"
#include "server/http_exposer.h"
#include "server/kserve_service.h"
#include "server/metrics.h"
#include "server/security.h"
#include "server/service.h"
#include "server/unknown_method.h"

namespace scatterbrain {
namespace server {

// Limits on connections, applied through gRPC's channel arguments and its
// ResourceQuota. A value of 0 turns a limit off unless said otherwise.
struct ConnectionOptions {
  // Concurrent streams (calls) one connection may open; more wait at the
  // client (HTTP/2 MAX_CONCURRENT_STREAMS). gRPC's default is unlimited.
  int max_streams_per_connection = 128;
  // A connection must finish its TLS and HTTP/2 handshake (send the
  // preface and SETTINGS) within this, else it is closed: idle TCP
  // connections cannot pile up. gRPC's default is 120 s.
  double handshake_timeout_s = 10;
  // The server pings a connection silent this long, and closes it if the
  // ping is not answered within keepalive_timeout_s: dead peers (a host
  // gone, a NAT entry dropped) free their streams.
  double keepalive_time_s = 60;
  double keepalive_timeout_s = 20;
  // Clients may ping at most this often; a client pinging faster is sent
  // GOAWAY after max_ping_strikes pings (keepalive enforcement). Pings are
  // allowed with no call open.
  double min_client_ping_interval_s = 10;
  int max_ping_strikes = 2;
  // A connection with no call open for this long is closed (GOAWAY; clients
  // reconnect when they next call).
  double max_connection_idle_s = 1800;
  // A connection older than this is sent GOAWAY (calls in flight get
  // max_connection_age_grace_s more): clients re-resolve and spread over
  // new replicas. Off by default (streams are long-lived); 1800 suits a
  // Deployment that scales.
  double max_connection_age_s = 0;
  double max_connection_age_grace_s = 300;
  // gRPC's ResourceQuota: the memory all connections' transport buffers may
  // use; under pressure gRPC shrinks flow-control windows and then cancels
  // streams (RESOURCE_EXHAUSTED). It is what bounds the memory a message over
  // max_message_bytes takes before gRPC refuses it (gRPC 1.51 receives a
  // message whole before checking its size). 0:
  // DefaultTransportMemoryBytes().
  int64_t transport_memory_bytes = 0;
};

// max(128 MiB, 32 * max_message_bytes), at most an eighth of the memory.
int64_t DefaultTransportMemoryBytes(int64_t max_message_bytes);

struct ServerOptions {
  // Address the gRPC endpoint and the metrics bind to. Default 0.0.0.0:
  // every interface (what a container needs); 127.0.0.1 keeps the server
  // to this machine.
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
  // Per-request and per-stream limits, memory budget, timeouts, output
  // chunking (defaults: ServiceOptions; max_queued_answers is not a flag).
  ServiceOptions service;
  ConnectionOptions connections;
  // TLS, mutual TLS, bearer tokens, reflection (defaults: SecurityOptions:
  // plaintext, no tokens, reflection on).
  SecurityOptions security;
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
  const AttentionServiceImpl& service() const { return *service_; }
  Metrics& metrics() { return *metrics_; }
  // Accepted requests not answered yet; requests waiting in the batcher.
  int64_t inflight_requests() const { return service_->inflight(); }
  int queued_requests() const { return executor_->queued(); }
  // Re-reads the token file now (SIGHUP); certificates are re-read by
  // gRPC's file watcher on its own. An error keeps the loaded tokens.
  absl::Status ReloadCredentials() { return auth_->Reload(); }

 private:
  Server() = default;

  ServerOptions options_;
  int port_ = 0;
  v1::ServerInfo info_;
  // Destroyed bottom-up: the gRPC server before the service it calls, the
  // service before the executor, everything before the metrics.
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<AttentionServiceImpl> service_;
  // inference.GRPCInferenceService (KServe v2) on the same port.
  std::unique_ptr<KServeServiceImpl> kserve_;
  std::unique_ptr<UnknownMethodService> unknown_methods_;
  std::unique_ptr<grpc::Server> grpc_server_;

  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_SERVER_H_
