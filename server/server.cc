// scatterbrain/server/server.cc — see server.h.
#include "server/server.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "kernels/backend.h"
#include "kernels/devices.h"

#ifndef SB_VERSION
#define SB_VERSION "dev"
#endif

namespace scatterbrain {
namespace server {
namespace {

absl::Status Bad(absl::string_view option, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(option, ": ", what));
}

v1::ServerInfo MakeInfo(const ServerOptions& o, const std::string& backend) {
  v1::ServerInfo info;
  info.set_version(SB_VERSION);
  for (const std::string& b : CompiledBackends()) info.add_backends(b);
  info.set_backend(backend);
  for (const std::string& d : CudaDevices()) info.add_devices(d);
  info.add_devices(absl::StrCat("cpu: ", std::thread::hardware_concurrency(),
                                " hardware threads"));
  v1::ServerLimits* l = info.mutable_limits();
  l->set_max_request_bytes(
      static_cast<uint64_t>(o.service.limits.max_request_bytes));
  l->set_max_message_bytes(static_cast<uint64_t>(o.max_message_bytes));
  l->set_chunk_bytes(static_cast<uint64_t>(o.service.chunk_bytes));
  l->set_max_seq(static_cast<uint32_t>(o.service.limits.max_seq));
  l->set_max_queue_requests(
      static_cast<uint32_t>(o.executor.batcher.max_queue_requests));
  l->set_max_inflight_per_stream(
      static_cast<uint32_t>(o.service.max_inflight_per_stream));
  l->set_max_batch_requests(
      static_cast<uint32_t>(o.executor.batcher.max_batch_requests));
  l->set_max_batch_tokens(
      static_cast<uint64_t>(o.executor.batcher.max_batch_tokens));
  l->set_max_queue_delay_us(
      static_cast<uint64_t>(o.executor.batcher.max_queue_delay_us));
  l->set_error_sample_rows(static_cast<uint32_t>(o.executor.error_sample_rows));
  l->set_max_request_flops(
      static_cast<uint64_t>(o.service.limits.max_request_flops));
  // Sessions: the limits as the registry resolves them against the budget.
  const SessionOptions so =
      ResolveSessionOptions(o.service.sessions, o.service.max_memory_bytes > 0
                                                    ? o.service.max_memory_bytes
                                                    : DefaultMaxMemoryBytes());
  l->set_max_session_bytes(static_cast<uint64_t>(so.max_session_bytes));
  l->set_max_bytes_per_session(static_cast<uint64_t>(so.max_bytes_per_session));
  l->set_max_sessions(static_cast<uint32_t>(so.max_sessions));
  l->set_kv_block_tokens(static_cast<uint32_t>(so.kv_block_tokens));
  l->set_max_session_tokens(static_cast<uint64_t>(so.max_session_tokens));
  l->set_default_session_ttl_seconds(so.default_ttl_s);
  l->set_max_session_ttl_seconds(so.max_ttl_s);
  return info;
}

}  // namespace

absl::Status ValidateServerOptions(const ServerOptions& o) {
  if (o.host.empty()) return Bad("host", "must not be empty");
  if (o.port < 0 || o.port > 65535)
    return Bad("port", absl::StrCat("must be in [0, 65535], got ", o.port));
  if (o.metrics_port < 0 || o.metrics_port > 65535)
    return Bad("metrics_port",
               absl::StrCat("must be in [0, 65535], got ", o.metrics_port));
  if (absl::Status st = ValidateHttpExposerOptions(o.metrics_http); !st.ok())
    return Bad("metrics_http", st.message());
  if (o.executor.backend != "auto" && o.executor.backend != "cpu" &&
      o.executor.backend != "cuda")
    return Bad("backend", absl::StrCat("must be auto, cpu or cuda, got '",
                                       o.executor.backend, "'"));
  const BackendOptions& bo = o.executor.backend_options;
  if (bo.device < 0) {
    return Bad("device", absl::StrCat("must be >= 0, got ", bo.device));
  }
  if (bo.streams < 1 || bo.streams > 64) {
    return Bad("streams", absl::StrCat("must be in [1, 64], got ", bo.streams));
  }
  if (bo.workspace_limit_bytes < 0) {
    return Bad("workspace_limit_bytes",
               absl::StrCat("must be >= 0, got ", bo.workspace_limit_bytes));
  }
  if (bo.threads < 0 || bo.threads > 1024) {
    return Bad("threads",
               absl::StrCat("must be in [0, 1024], got ", bo.threads));
  }
  if (o.executor.batcher.max_batch_requests < 1)
    return Bad("max_batch_requests",
               absl::StrCat("must be >= 1, got ",
                            o.executor.batcher.max_batch_requests));
  if (o.executor.batcher.max_batch_tokens < 1)
    return Bad("max_batch_tokens",
               absl::StrCat("must be >= 1, got ",
                            o.executor.batcher.max_batch_tokens));
  if (o.executor.batcher.max_queue_delay_us < 0)
    return Bad("max_queue_delay_us",
               absl::StrCat("must be >= 0, got ",
                            o.executor.batcher.max_queue_delay_us));
  if (o.executor.batcher.max_queue_requests < 1)
    return Bad("max_queue_requests",
               absl::StrCat("must be >= 1, got ",
                            o.executor.batcher.max_queue_requests));
  if (o.service.limits.max_request_bytes < 1)
    return Bad(
        "max_request_bytes",
        absl::StrCat("must be >= 1, got ", o.service.limits.max_request_bytes));
  if (o.max_message_bytes < 1024 || o.max_message_bytes > INT_MAX)
    return Bad("max_message_bytes",
               absl::StrCat("must be in [1024, ", INT_MAX, "], got ",
                            o.max_message_bytes));
  if (o.service.chunk_bytes < 4 || o.service.chunk_bytes > (int64_t{1} << 30))
    return Bad("chunk_bytes", absl::StrCat("must be in [4, 2^30], got ",
                                           o.service.chunk_bytes));
  if (o.executor.error_sample_rows < 0 || o.executor.error_sample_rows > 1024)
    return Bad("error_sample_rows", absl::StrCat("must be in [0, 1024], got ",
                                                 o.executor.error_sample_rows));
  if (!std::isfinite(o.drain_timeout_s) || o.drain_timeout_s < 0)
    return Bad("drain_timeout_s", absl::StrCat("must be finite and >= 0, got ",
                                               o.drain_timeout_s));
  if (o.service.max_inflight_per_stream < 1)
    return Bad(
        "max_inflight_per_stream",
        absl::StrCat("must be >= 1, got ", o.service.max_inflight_per_stream));
  if (o.service.limits.max_seq < 1)
    return Bad("max_seq",
               absl::StrCat("must be >= 1, got ", o.service.limits.max_seq));
  if (o.service.max_memory_bytes < 0)
    return Bad("max_memory_bytes",
               absl::StrCat("must be >= 0, got ", o.service.max_memory_bytes));
  const struct {
    const char* name;
    double value;
  } seconds[] = {
      {"upload_timeout_s", o.service.upload_timeout_s},
      {"stream_idle_timeout_s", o.service.stream_idle_timeout_s},
      {"send_timeout_s", o.service.send_timeout_s},
      {"handshake_timeout_s", o.connections.handshake_timeout_s},
      {"keepalive_time_s", o.connections.keepalive_time_s},
      {"keepalive_timeout_s", o.connections.keepalive_timeout_s},
      {"min_client_ping_interval_s", o.connections.min_client_ping_interval_s},
      {"max_connection_idle_s", o.connections.max_connection_idle_s},
      {"max_connection_age_s", o.connections.max_connection_age_s},
      {"max_connection_age_grace_s", o.connections.max_connection_age_grace_s},
  };
  for (const auto& s : seconds) {
    // Bounded so that milliseconds fit gRPC's int channel arguments.
    if (!std::isfinite(s.value) || s.value < 0 || s.value > 1e6)
      return Bad(s.name,
                 absl::StrCat("must be in [0, 1e6] seconds, got ", s.value));
  }
  if (o.connections.max_streams_per_connection < 1)
    return Bad("max_streams_per_connection",
               absl::StrCat("must be >= 1, got ",
                            o.connections.max_streams_per_connection));
  if (o.connections.max_ping_strikes < 0)
    return Bad(
        "max_ping_strikes",
        absl::StrCat("must be >= 0, got ", o.connections.max_ping_strikes));
  if (o.connections.transport_memory_bytes < 0)
    return Bad("transport_memory_bytes",
               absl::StrCat("must be >= 0, got ",
                            o.connections.transport_memory_bytes));
  SB_RETURN_IF_ERROR(ValidateSecurityOptions(o.security));
  SB_RETURN_IF_ERROR(ValidateSessionOptions(o.service.sessions));
  if (o.service.limits.max_request_flops < RequestLimits::kBackendDefault)
    return Bad("max_request_flops",
               absl::StrCat("must be >= 0 (0: no limit; -1: the backend's "
                            "default), got ",
                            o.service.limits.max_request_flops));
  return absl::OkStatus();
}

int64_t DefaultTransportMemoryBytes(int64_t max_message_bytes) {
  // Room for 32 messages at the size limit being received at once (far more
  // than clients' 1 MiB chunks need), at least 128 MiB, at most an eighth of
  // the memory. Measured: 4 unary messages of 256 MiB (over a 4 MiB limit)
  // took the server 400 MB above its baseline without a quota, 130 MB with
  // 64 MiB; the quota bounds what a client can make gRPC buffer.
  int64_t bytes = std::max<int64_t>(int64_t{128} << 20, 32 * max_message_bytes);
  const int64_t limit = MemoryLimitBytes();
  if (limit > 0)
    bytes = std::min(bytes, std::max<int64_t>(limit / 8, 16 << 20));
  return bytes;
}

namespace {

int Millis(double seconds) {
  return static_cast<int>(std::lround(seconds * 1e3));
}

// Connection limits as gRPC channel arguments (ConnectionOptions says what
// each protects against).
void ApplyConnectionOptions(const ConnectionOptions& c,
                            int64_t max_message_bytes,
                            grpc::ServerBuilder* builder) {
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                              c.max_streams_per_connection);
  if (c.handshake_timeout_s > 0) {
    builder->AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                                Millis(c.handshake_timeout_s));
  }
  if (c.keepalive_time_s > 0) {
    builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                                Millis(c.keepalive_time_s));
    builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                                Millis(c.keepalive_timeout_s));
  }
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder->AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
      Millis(c.min_client_ping_interval_s));
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES,
                              c.max_ping_strikes);
  if (c.max_connection_idle_s > 0) {
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                                Millis(c.max_connection_idle_s));
  }
  if (c.max_connection_age_s > 0) {
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                                Millis(c.max_connection_age_s));
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                                Millis(c.max_connection_age_grace_s));
  }
  int64_t quota = c.transport_memory_bytes;
  if (quota == 0) quota = DefaultTransportMemoryBytes(max_message_bytes);
  builder->SetResourceQuota(grpc::ResourceQuota("scatterbrain-transport")
                                .Resize(static_cast<size_t>(quota)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServerOptions& options, const Clock* clock) {
  SB_RETURN_IF_ERROR(ValidateServerOptions(options));
  std::unique_ptr<Server> s(new Server());
  s->options_ = options;
  s->metrics_ = std::make_unique<Metrics>();

  // Before the executor: nothing to stop if the token file fails here.
  SB_ASSIGN_OR_RETURN(
      s->auth_,
      Authenticator::Create(options.security.auth_token_file,
                            absl::Seconds(options.security.reload_interval_s),
                            s->metrics_.get()));
  SB_ASSIGN_OR_RETURN(s->executor_, Executor::Create(options.executor,
                                                     s->metrics_.get(), clock));
  ServerOptions resolved = options;
  RequestLimits& limits = resolved.service.limits;
  if (limits.max_request_flops < 0) {
    limits.max_request_flops =
        DefaultMaxRequestFlops(s->executor_->backend_name());
  }
  s->info_ = MakeInfo(resolved, s->executor_->backend_name());
  RequestDefaults& defaults = resolved.service.defaults;
  if (defaults.sparse == SparseSupport::kAuto) {
    AttentionParams probe;
    probe.method = Method::kScatterbrain;
    probe.sparse = SparseSupport::kAuto;
    if (const absl::Status st = s->executor_->Supports(probe); !st.ok()) {
      // The operator asked for auto (the default); say why it is not.
      std::fprintf(stderr,
                   "scatterbrain_server: default_sparse: the %s backend "
                   "cannot choose the support per head (%s); unset sparse "
                   "means lsh\n",
                   s->executor_->backend_name().c_str(),
                   std::string(st.message()).c_str());
      defaults.sparse = SparseSupport::kLsh;
    }
  }
  if (defaults.global_keys > 0) {
    AttentionParams probe;
    probe.method = Method::kScatterbrain;
    probe.global_keys = defaults.global_keys;
    if (const absl::Status st = s->executor_->Supports(probe); !st.ok()) {
      std::fprintf(stderr,
                   "scatterbrain_server: default_global_keys: the %s backend "
                   "cannot add global keys (%s); unset global_keys means 0\n",
                   s->executor_->backend_name().c_str(),
                   std::string(st.message()).c_str());
      defaults.global_keys = 0;
    }
  }

  ServiceOptions so = resolved.service;
  so.max_queued_answers = std::max<size_t>(so.max_queued_answers, 2);
  s->service_ = std::make_unique<AttentionServiceImpl>(
      so, s->info_, s->executor_.get(), s->metrics_.get(), clock,
      s->auth_.get());

  // Process-wide gRPC switches; both must precede the builder.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!options.security.reflection_enabled()) {
    builder.SetOption(WithoutReflection());
  }
  // Without this, a second server on a busy port would share it silently.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  ApplyConnectionOptions(options.connections, options.max_message_bytes,
                         &builder);
  const std::string address = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(address, MakeServerCredentials(options.security),
                           &s->port_);
  builder.RegisterService(s->service_.get());
  s->kserve_ = std::make_unique<KServeServiceImpl>(
      s->service_.get(), ShmRegistryOptions{}, SB_VERSION);
  builder.RegisterService(s->kserve_.get());
  s->unknown_methods_ = std::make_unique<UnknownMethodService>(
      std::vector<std::string>{
          v1::AttentionService::service_full_name(),
          inference::GRPCInferenceService::service_full_name(),
          "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"},
      s->metrics_.get());
  builder.RegisterCallbackGenericService(s->unknown_methods_.get());
  s->grpc_server_ = builder.BuildAndStart();
  if (s->grpc_server_ == nullptr || s->port_ == 0) {
    s->grpc_server_.reset();
    s->executor_->Stop();
    return absl::UnavailableError(absl::StrCat(
        "port: cannot listen on ", address, " (in use or not permitted)"));
  }
  if (grpc::HealthCheckServiceInterface* health =
          s->grpc_server_->GetHealthCheckService()) {
    health->SetServingStatus(true);
  }
  if (options.metrics_port > 0) {
    const absl::Status st = s->metrics_->Expose(
        absl::StrCat(options.host, ":", options.metrics_port),
        options.metrics_http);
    if (!st.ok()) {
      s->Shutdown();
      return absl::UnavailableError(
          absl::StrCat("metrics_port: cannot serve /metrics on ", options.host,
                       ":", options.metrics_port, ": ", st.message()));
    }
  }
  return s;
}

Server::~Server() { Shutdown(); }

std::string Server::address() const {
  return absl::StrCat(options_.host, ":", port_);
}

std::string Server::metrics_address() const {
  if (options_.metrics_port == 0) return "";
  return absl::StrCat(options_.host, ":", metrics_->exposed_port());
}

void Server::Shutdown() {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  if (grpc_server_ == nullptr) return;
  const absl::Time deadline =
      absl::Now() + absl::Seconds(options_.drain_timeout_s);
  // New requests are refused from here on; accepted ones (even those still
  // uploading) finish, their batches closing at the usual delay. Refusing
  // first means a client that sees NOT_SERVING never gets new work in.
  service_->StartDrain();
  if (grpc::HealthCheckServiceInterface* health =
          grpc_server_->GetHealthCheckService()) {
    health->SetServingStatus(false);
  }
  service_->WaitIdle(deadline);
  // Whatever still waits runs now; nothing new gets in.
  executor_->Drain();
  // Streams still open get until the deadline, then are cancelled (their
  // queued jobs leave the batcher; a running one completes first).
  grpc_server_->Shutdown(absl::ToChronoTime(std::max(deadline, absl::Now())));
  executor_->Stop();
}

}  // namespace server
}  // namespace scatterbrain
