// scatterbrain/server/main.cc — scatterbrain_server: flags, startup, and a
// graceful drain on SIGTERM/SIGINT.
//
// Exit codes: 0 after a clean drain (or --help / --version); 1 when the
// server cannot start (backend unavailable, port in use); 2 for bad flags.
// SIGHUP re-reads the token file (--auth_token_file) and goes on serving.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/validate.h"
#include "server/server.h"

#ifndef SB_VERSION
#define SB_VERSION "dev"
#endif

namespace {
const scatterbrain::server::ServerOptions kDefaults;
}  // namespace

ABSL_FLAG(std::string, host, kDefaults.host,
          "Address the gRPC endpoint and /metrics bind to (0.0.0.0: every "
          "interface; 127.0.0.1: this machine only).");
ABSL_FLAG(int, port, kDefaults.port,
          "gRPC port (0: pick a free one; the startup line prints it).");
ABSL_FLAG(int, metrics_port, kDefaults.metrics_port,
          "Prometheus /metrics HTTP port (0: off).");
ABSL_FLAG(std::string, backend, kDefaults.executor.backend,
          "auto (cuda when a GPU is present, else cpu), cpu or cuda "
          "(cuda without a usable GPU is a startup error).");
ABSL_FLAG(int, device, kDefaults.executor.backend_options.device,
          "CUDA device ordinal the cuda backend runs on.");
ABSL_FLAG(int, streams, kDefaults.executor.backend_options.streams,
          "CUDA streams: batches with the device at once (one uploads while "
          "another computes).");
ABSL_FLAG(int64_t, workspace_limit_bytes,
          kDefaults.executor.backend_options.workspace_limit_bytes,
          "Device scratch per stream beyond which a batch fails with "
          "RESOURCE_EXHAUSTED (0: the device's free memory).");
ABSL_FLAG(int, threads, kDefaults.executor.backend_options.threads,
          "CPU backend worker threads per call (0: hardware concurrency).");
ABSL_FLAG(int, max_batch_requests,
          kDefaults.executor.batcher.max_batch_requests,
          "A batch closes when it holds this many requests.");
ABSL_FLAG(int64_t, max_batch_tokens,
          kDefaults.executor.batcher.max_batch_tokens,
          "...or this many tokens (batch * heads * (seq_q + seq_k) summed).");
ABSL_FLAG(int64_t, max_queue_delay_us,
          kDefaults.executor.batcher.max_queue_delay_us,
          "...or when its oldest request has waited this long (0: no wait).");
ABSL_FLAG(int, max_queue_requests,
          kDefaults.executor.batcher.max_queue_requests,
          "Requests waiting for a batch, all queues together; beyond: "
          "UNAVAILABLE.");
ABSL_FLAG(int64_t, max_request_bytes,
          kDefaults.service.limits.max_request_bytes,
          "q + k + v bytes of one request (and its output's); beyond: "
          "RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, max_message_bytes, kDefaults.max_message_bytes,
          "Largest gRPC message accepted (one chunk, or a whole AttendUnary "
          "request).");
ABSL_FLAG(int64_t, chunk_bytes, kDefaults.service.chunk_bytes,
          "Output bytes per response chunk.");
ABSL_FLAG(int, error_sample_rows, kDefaults.executor.error_sample_rows,
          "Query rows per (batch, head) recomputed exactly to estimate each "
          "approximate request's error (0: off).");
ABSL_FLAG(std::string, default_sparse,
          scatterbrain::SparseName(kDefaults.service.defaults.sparse),
          "Scatterbrain's support for requests that leave sparse unset: "
          "lsh, local, both or auto (per head, the one holding the most "
          "attention mass). auto falls back to lsh, with a line on stderr, "
          "on a backend that cannot choose per head (cuda for now).");
ABSL_FLAG(int, default_global_keys, kDefaults.service.defaults.global_keys,
          "Scatterbrain's global keys for requests that leave global_keys "
          "unset: up to this many keys every query attends to join each "
          "row's support, within its budget (0: none). 0, with a line on "
          "stderr, on a backend that cannot add them (cuda for now).");
ABSL_FLAG(double, drain_timeout_s, kDefaults.drain_timeout_s,
          "On SIGTERM/SIGINT, seconds in-flight work may take before it is "
          "cancelled.");
ABSL_FLAG(int, max_inflight_per_stream,
          kDefaults.service.max_inflight_per_stream,
          "Requests in flight on one Attend stream; beyond: "
          "RESOURCE_EXHAUSTED.");
ABSL_FLAG(int, max_seq, kDefaults.service.limits.max_seq,
          "Largest seq_q / seq_k; beyond: RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, max_memory_bytes, kDefaults.service.max_memory_bytes,
          "Bytes all requests in flight may hold in buffers (inputs, output); "
          "a request that does not fit gets RESOURCE_EXHAUSTED (0: half the "
          "machine's or container's memory).");
ABSL_FLAG(double, upload_timeout_s, kDefaults.service.upload_timeout_s,
          "Seconds from a request's header to its last tensor byte; beyond: "
          "DEADLINE_EXCEEDED (0: no limit).");
ABSL_FLAG(double, stream_idle_timeout_s,
          kDefaults.service.stream_idle_timeout_s,
          "A stream with nothing in flight and no message for this long is "
          "ended with UNAVAILABLE (0: never).");
ABSL_FLAG(double, send_timeout_s, kDefaults.service.send_timeout_s,
          "A response write the client does not take for this long cancels its "
          "stream (0: never).");
ABSL_FLAG(int, max_streams_per_connection,
          kDefaults.connections.max_streams_per_connection,
          "Concurrent calls per connection (HTTP/2 MAX_CONCURRENT_STREAMS).");
ABSL_FLAG(double, handshake_timeout_s,
          kDefaults.connections.handshake_timeout_s,
          "A new connection must complete its TLS/HTTP/2 handshake within this "
          "(0: gRPC's 120 s).");
ABSL_FLAG(double, keepalive_time_s, kDefaults.connections.keepalive_time_s,
          "Ping a connection silent this long (0: never)...");
ABSL_FLAG(double, keepalive_timeout_s,
          kDefaults.connections.keepalive_timeout_s,
          "...and close it if the ping is not answered within this.");
ABSL_FLAG(double, min_client_ping_interval_s,
          kDefaults.connections.min_client_ping_interval_s,
          "Clients pinging more often than this are sent GOAWAY after "
          "--max_ping_strikes pings.");
ABSL_FLAG(int, max_ping_strikes, kDefaults.connections.max_ping_strikes,
          "Too-frequent pings tolerated before GOAWAY.");
ABSL_FLAG(double, max_connection_idle_s,
          kDefaults.connections.max_connection_idle_s,
          "Close a connection with no call open for this long (0: never).");
ABSL_FLAG(double, max_connection_age_s,
          kDefaults.connections.max_connection_age_s,
          "Send GOAWAY to connections older than this, so clients rebalance "
          "over replicas (0: never)...");
ABSL_FLAG(double, max_connection_age_grace_s,
          kDefaults.connections.max_connection_age_grace_s,
          "...giving calls in flight this long to finish.");
ABSL_FLAG(int64_t, transport_memory_bytes,
          kDefaults.connections.transport_memory_bytes,
          "gRPC ResourceQuota for transport buffers of all connections (0: "
          "max(128 MiB, 32 * max_message_bytes), at most memory/8).");
ABSL_FLAG(std::string, tls_cert_file, kDefaults.security.tls_cert_file,
          "PEM certificate chain the server presents; with --tls_key_file, "
          "the gRPC port speaks TLS only (empty: plaintext).");
ABSL_FLAG(std::string, tls_key_file, kDefaults.security.tls_key_file,
          "PEM private key (unencrypted) of --tls_cert_file.");
ABSL_FLAG(std::string, tls_client_ca_file,
          kDefaults.security.tls_client_ca_file,
          "PEM CA bundle: set, mutual TLS — a client must present a "
          "certificate issued by one of these CAs.");
ABSL_FLAG(std::string, auth_token_file, kDefaults.security.auth_token_file,
          "Bearer tokens, one per line ('#' comments): set, AttentionService "
          "calls need metadata 'authorization: Bearer <token>' (health is "
          "exempt); else UNAUTHENTICATED. Re-read on change and on SIGHUP.");
ABSL_FLAG(int, security_reload_interval_s, kDefaults.security.reload_interval_s,
          "Seconds between checks of the TLS files and the token file for "
          "changes (new connections get new certificates).");
ABSL_FLAG(
    std::string, reflection,
    scatterbrain::server::ReflectionModeName(kDefaults.security.reflection),
    "gRPC server reflection: auto (on only without TLS and tokens), on "
    "or off.");
ABSL_FLAG(int64_t, max_request_flops,
          kDefaults.service.limits.max_request_flops,
          "Estimated floating-point operations of one request (from its "
          "method, shape and settings); beyond: RESOURCE_EXHAUSTED before "
          "its tensors are received. -1: the backend's default (1e12 on "
          "cpu, about a minute of a 2-core machine; 1e14 on cuda); 0: no "
          "limit.");
ABSL_FLAG(int64_t, kv_block_tokens, kDefaults.service.sessions.kv_block_tokens,
          "Sessions: tokens per K/V storage block (the unit of allocation), "
          "1 to 65536.");
ABSL_FLAG(int64_t, max_session_bytes,
          kDefaults.service.sessions.max_session_bytes,
          "Bytes all sessions together may hold (K/V and incremental state), "
          "part of --max_memory_bytes; 0: half of it.");
ABSL_FLAG(int64_t, max_bytes_per_session,
          kDefaults.service.sessions.max_bytes_per_session,
          "Bytes one session may hold; 0: --max_session_bytes.");
ABSL_FLAG(int, max_sessions, kDefaults.service.sessions.max_sessions,
          "Sessions open at once; beyond: RESOURCE_EXHAUSTED (after evicting "
          "sessions idle past their TTL).");
ABSL_FLAG(double, session_ttl_s, kDefaults.service.sessions.default_ttl_s,
          "Idle seconds after which a session may be evicted, for sessions "
          "created without a TTL.");
ABSL_FLAG(double, max_session_ttl_s, kDefaults.service.sessions.max_ttl_s,
          "The longest idle TTL a session may ask for.");
ABSL_FLAG(int64_t, max_session_tokens,
          kDefaults.service.sessions.max_session_tokens,
          "Tokens per sequence a session may hold.");

namespace {

// SIGTERM/SIGINT/SIGHUP -> one byte on this pipe (write is async-signal-safe);
// the main thread waits on it. A handler rather than a blocked mask + sigwait:
// threads started before main (OpenBLAS's pool) would not have the mask.
int g_signal_pipe[2] = {-1, -1};

extern "C" void OnStopSignal(int signal_number) {
  const char c = static_cast<char>(signal_number);
  const int saved = errno;
  if (write(g_signal_pipe[1], &c, 1) < 0) {
    // Nothing to do: the pipe is full only if a signal is already pending.
  }
  errno = saved;
}

constexpr const char* kFlagNames[] = {
    "host",
    "port",
    "metrics_port",
    "backend",
    "device",
    "streams",
    "workspace_limit_bytes",
    "threads",
    "max_batch_requests",
    "max_batch_tokens",
    "max_queue_delay_us",
    "max_queue_requests",
    "max_request_bytes",
    "max_message_bytes",
    "chunk_bytes",
    "error_sample_rows",
    "default_sparse",
    "default_global_keys",
    "drain_timeout_s",
    "max_inflight_per_stream",
    "max_seq",
    "max_memory_bytes",
    "upload_timeout_s",
    "stream_idle_timeout_s",
    "send_timeout_s",
    "max_streams_per_connection",
    "handshake_timeout_s",
    "keepalive_time_s",
    "keepalive_timeout_s",
    "min_client_ping_interval_s",
    "max_ping_strikes",
    "max_connection_idle_s",
    "max_connection_age_s",
    "max_connection_age_grace_s",
    "transport_memory_bytes",
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "auth_token_file",
    "security_reload_interval_s",
    "reflection",
    "max_request_flops",
    "kv_block_tokens",
    "max_session_bytes",
    "max_bytes_per_session",
    "max_sessions",
    "session_ttl_s",
    "max_session_ttl_s",
    "max_session_tokens",
};

void PrintUsage(FILE* out) {
  std::fprintf(out,
               "usage: scatterbrain_server [--flag=value ...]\n"
               "Serves scatterbrain.v1.AttentionService over gRPC (with health "
               "and, see --reflection, reflection), metrics at "
               "/metrics.\n\nflags:\n");
  for (const char* name : kFlagNames) {
    const absl::CommandLineFlag* f = absl::FindCommandLineFlag(name);
    if (f == nullptr) continue;
    std::fprintf(out, "  --%s (default %s)\n      %s\n", name,
                 f->DefaultValue().c_str(), f->Help().c_str());
  }
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "scatterbrain_server: %s (see --help)\n",
               message.c_str());
  return 2;
}

// Parses --name=value / --name value for the flags above only, so that any
// mistake exits with 2 (absl's own parser exits with 1).
// Returns -1 to go on, else the exit code.
int ParseFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h" || arg == "--helpfull") {
      PrintUsage(stdout);
      return 0;
    }
    if (arg == "--version") {
      std::printf("scatterbrain_server %s\n", SB_VERSION);
      return 0;
    }
    if (!absl::StartsWith(arg, "-")) {
      return UsageError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    arg = arg.substr(absl::StartsWith(arg, "--") ? 2 : 1);
    std::string name = arg, value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    bool known = false;
    for (const char* n : kFlagNames) known = known || name == n;
    absl::CommandLineFlag* flag =
        known ? absl::FindCommandLineFlag(name) : nullptr;
    if (flag == nullptr) {
      return UsageError(absl::StrCat("unknown flag --", name));
    }
    if (!has_value) {
      if (i + 1 >= argc) {
        return UsageError(absl::StrCat("flag --", name, " needs a value"));
      }
      value = argv[++i];
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return UsageError(
          absl::StrCat("flag --", name, "='", value, "': ", error));
    }
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  namespace sv = scatterbrain::server;
  if (const int code = ParseFlags(argc, argv); code >= 0) return code;

  sv::ServerOptions o;
  o.host = absl::GetFlag(FLAGS_host);
  o.port = absl::GetFlag(FLAGS_port);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  o.executor.backend = absl::GetFlag(FLAGS_backend);
  o.executor.backend_options.device = absl::GetFlag(FLAGS_device);
  o.executor.backend_options.streams = absl::GetFlag(FLAGS_streams);
  o.executor.backend_options.workspace_limit_bytes =
      absl::GetFlag(FLAGS_workspace_limit_bytes);
  o.executor.backend_options.threads = absl::GetFlag(FLAGS_threads);
  o.executor.batcher.max_batch_requests =
      absl::GetFlag(FLAGS_max_batch_requests);
  o.executor.batcher.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  o.executor.batcher.max_queue_delay_us =
      absl::GetFlag(FLAGS_max_queue_delay_us);
  o.executor.batcher.max_queue_requests =
      absl::GetFlag(FLAGS_max_queue_requests);
  o.service.limits.max_request_bytes = absl::GetFlag(FLAGS_max_request_bytes);
  o.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  o.service.chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
  o.executor.error_sample_rows = absl::GetFlag(FLAGS_error_sample_rows);
  if (!scatterbrain::ParseSparse(absl::GetFlag(FLAGS_default_sparse),
                                 &o.service.defaults.sparse)) {
    return UsageError(absl::StrCat("flag --default_sparse='",
                                   absl::GetFlag(FLAGS_default_sparse),
                                   "': must be lsh, local, both or auto"));
  }
  o.service.defaults.global_keys = absl::GetFlag(FLAGS_default_global_keys);
  if (o.service.defaults.global_keys < 0 ||
      o.service.defaults.global_keys > scatterbrain::kMaxGlobalKeys) {
    return UsageError(absl::StrCat(
        "flag --default_global_keys=", o.service.defaults.global_keys,
        ": must be in [0, ", scatterbrain::kMaxGlobalKeys, "]"));
  }
  o.drain_timeout_s = absl::GetFlag(FLAGS_drain_timeout_s);
  o.service.max_inflight_per_stream =
      absl::GetFlag(FLAGS_max_inflight_per_stream);
  o.service.limits.max_seq = absl::GetFlag(FLAGS_max_seq);
  o.service.max_memory_bytes = absl::GetFlag(FLAGS_max_memory_bytes);
  o.service.upload_timeout_s = absl::GetFlag(FLAGS_upload_timeout_s);
  o.service.stream_idle_timeout_s = absl::GetFlag(FLAGS_stream_idle_timeout_s);
  o.service.send_timeout_s = absl::GetFlag(FLAGS_send_timeout_s);
  o.connections.max_streams_per_connection =
      absl::GetFlag(FLAGS_max_streams_per_connection);
  o.connections.handshake_timeout_s = absl::GetFlag(FLAGS_handshake_timeout_s);
  o.connections.keepalive_time_s = absl::GetFlag(FLAGS_keepalive_time_s);
  o.connections.keepalive_timeout_s = absl::GetFlag(FLAGS_keepalive_timeout_s);
  o.connections.min_client_ping_interval_s =
      absl::GetFlag(FLAGS_min_client_ping_interval_s);
  o.connections.max_ping_strikes = absl::GetFlag(FLAGS_max_ping_strikes);
  o.connections.max_connection_idle_s =
      absl::GetFlag(FLAGS_max_connection_idle_s);
  o.connections.max_connection_age_s =
      absl::GetFlag(FLAGS_max_connection_age_s);
  o.connections.max_connection_age_grace_s =
      absl::GetFlag(FLAGS_max_connection_age_grace_s);
  o.connections.transport_memory_bytes =
      absl::GetFlag(FLAGS_transport_memory_bytes);
  o.security.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  o.security.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  o.security.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  o.security.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  sv::SessionOptions& so = o.service.sessions;
  so.kv_block_tokens = absl::GetFlag(FLAGS_kv_block_tokens);
  so.max_session_bytes = absl::GetFlag(FLAGS_max_session_bytes);
  so.max_bytes_per_session = absl::GetFlag(FLAGS_max_bytes_per_session);
  so.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  so.default_ttl_s = absl::GetFlag(FLAGS_session_ttl_s);
  so.max_ttl_s = absl::GetFlag(FLAGS_max_session_ttl_s);
  so.max_session_tokens = absl::GetFlag(FLAGS_max_session_tokens);
  o.security.reload_interval_s =
      absl::GetFlag(FLAGS_security_reload_interval_s);
  if (!sv::ParseReflectionMode(absl::GetFlag(FLAGS_reflection),
                               &o.security.reflection)) {
    return UsageError(absl::StrCat("flag --reflection='",
                                   absl::GetFlag(FLAGS_reflection),
                                   "': must be auto, on or off"));
  }
  o.service.limits.max_request_flops = absl::GetFlag(FLAGS_max_request_flops);
  if (const absl::Status st = sv::ValidateServerOptions(o); !st.ok()) {
    return UsageError(absl::StrCat("--", st.message()));
  }

  // Installed before the server starts, so a signal during startup is not
  // lost: it drains the server as soon as it is up.
  if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) {
    std::perror("scatterbrain_server: pipe2");
    return 1;
  }
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);  // reload the token file

  absl::StatusOr<std::unique_ptr<sv::Server>> server = sv::Server::Start(o);
  if (!server.ok()) {
    std::fprintf(stderr, "scatterbrain_server: cannot start: %s\n",
                 std::string(server.status().message()).c_str());
    return 1;
  }
  std::printf("scatterbrain_server %s: gRPC on %s (backend %s)\n", SB_VERSION,
              (*server)->address().c_str(), (*server)->backend_name().c_str());
  std::printf("scatterbrain_server: security: %s\n",
              sv::DescribeSecurity(o.security).c_str());
  if (o.metrics_port > 0) {
    std::printf("scatterbrain_server: metrics at http://%s/metrics\n",
                (*server)->metrics_address().c_str());
  } else {
    std::printf("scatterbrain_server: metrics endpoint off\n");
  }
  std::fflush(stdout);

  char signal_number = 0;
  while (true) {
    if (read(g_signal_pipe[0], &signal_number, 1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (signal_number != SIGHUP) break;
    const absl::Status st = (*server)->ReloadCredentials();
    const std::string what =
        st.ok() ? "credentials reloaded"
                : absl::StrCat("reload failed, the loaded tokens stay: ",
                               st.message());
    std::printf("scatterbrain_server: SIGHUP: %s\n", what.c_str());
    std::fflush(stdout);
  }
  // A second signal during the drain stops the process at once.
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  signal(SIGHUP, SIG_IGN);
  std::printf(
      "scatterbrain_server: %s: draining (up to %gs; a second signal "
      "stops at once)\n",
      signal_number == SIGTERM ? "SIGTERM" : "SIGINT", o.drain_timeout_s);
  std::fflush(stdout);
  (*server)->Shutdown();
  server->reset();
  std::printf("scatterbrain_server: stopped\n");
  std::fflush(stdout);
  return 0;
}
