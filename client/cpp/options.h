// scatterbrain/client/cpp/options.h — ClientOptions: where the server is and
// how calls to it behave (chunking, in-flight window, deadline, retries),
// and how it proves who it is (TLS, client certificates, bearer token).
//
// Its own header because every part of the client reads it: the target
// resolution, the retry policy, the stream and AttentionClient.
#ifndef SCATTERBRAIN_CLIENT_CPP_OPTIONS_H_
#define SCATTERBRAIN_CLIENT_CPP_OPTIONS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/time/time.h"

namespace grpc {
class ChannelCredentials;
}  // namespace grpc

namespace scatterbrain {
namespace client {

struct ClientOptions {
  // Where the server is:
  //  "host:port"                      one endpoint (gRPC's dns resolver);
  //  "10.0.0.1:50051,10.0.0.2:50051"  several endpoints, IP literals (or
  //                                   localhost): an ipv4:/// (ipv6:///)
  //                                   address list, balanced round_robin;
  //  any gRPC target URI ("dns:///name:port", "ipv4:///...", "unix:...")
  //                                   passed through as is.
  std::string target = "localhost:50051";
  // Bytes of tensor data per TensorChunk message on Attend streams.
  int64_t chunk_bytes = int64_t{1} << 20;
  // Requests of one AttendStream on the wire at once (header sent, last
  // response not received); more wait in the client, in order, so a stream
  // never exceeds the server's max_inflight_per_stream (64 by default).
  // 0 = no limit.
  int max_inflight_per_stream = 32;
  // Deadline of each unary call and of each blocking Attend() (its stream);
  // streams from OpenStream() take theirs as an argument. Infinite = none.
  absl::Duration deadline = absl::InfiniteDuration();
  // Largest gRPC message sent or received (AttendUnary carries whole
  // tensors in one message; the server's own limit is in ServerInfo).
  int max_message_bytes = 256 << 20;
  // "" = round_robin: a list of endpoints, and a dns:/// name resolving to
  // several addresses, spread calls over all of them (set as the channel's
  // default service config). Any other gRPC policy name overrides it.
  std::string load_balancing_policy;
  // Retries of UNAVAILABLE (a server down, restarting or unreachable, or a
  // stream that broke before the request's answer was complete) and of
  // CANCELLED that the client did not ask for (a server shutting down
  // cancels the calls it has not started): the computation is deterministic
  // and side-effect free, so a whole request is sent again. Waits:
  // initial_backoff, then x2 per try up to max_backoff, each +-20% jitter.
  // A retry is made while it starts within retry_budget of the request's
  // first failure (not its first try: a long computation cut off by a dying
  // server is still retried) and, when max_attempts > 0, fewer than
  // max_attempts tries were made (1 = no retry; 0 = the budget decides).
  // The 5 s budget outlasts a server restart (~1.2 s measured on a loaded
  // 2-core machine), which the previous 5 tries (~0.9 s of waits) did not.
  // The channel reconnects on the same backoff (gRPC's own starts at 1 s
  // and grows to 2 min). Applies to Attend(), AttendUnary() and
  // AttendStream (whose unanswered requests are resubmitted on a new
  // stream, same ids). Other codes (INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
  // DEADLINE_EXCEEDED...) are never retried. The deadline is per try.
  int max_attempts = 0;
  absl::Duration retry_budget = absl::Seconds(5);
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(1);
  // Give this channel its own TCP connection(s) instead of sharing gRPC's
  // global subchannel pool with identical channels in the process (load
  // generators: one connection per simulated client).
  bool own_connection = false;
  // --- security (credentials.h builds the channel's credentials) ---
  // TLS to the server. Also on when any tls_* field below is set.
  bool use_tls = false;
  // PEM CA bundle that verifies the server's certificate; "" = gRPC's
  // default roots (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, else its bundled ones).
  std::string tls_ca_file;
  // PEM certificate chain and (unencrypted) key this client presents, for
  // a server that requires mutual TLS; both or neither.
  std::string tls_cert_file;
  std::string tls_key_file;
  // The name the server's certificate must carry when it is not the
  // target's host (a certificate for "attention.internal" reached at an IP
  // address); "" = the target's host.
  std::string tls_server_name;
  // Bearer token sent as `authorization: Bearer <token>` on every call
  // (Attend streams, unary calls, GetServerInfo and health), plaintext or
  // TLS; or the file holding it (the first token of a token file: one per
  // line, blank and '#' lines ignored), read once by Create. At most one of
  // the two; "" = none.
  std::string auth_token;
  std::string auth_token_file;
  // Channel credentials of your own (call credentials, ALTS, ...); set, the
  // tls_* fields must be empty. nullptr = from the fields above: TLS when
  // asked for, else insecure (plaintext), scatterbrain_server's default.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

}  // namespace client
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CPP_OPTIONS_H_
