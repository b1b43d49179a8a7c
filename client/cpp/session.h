// scatterbrain/client/cpp/session.h — Session: a K/V cache held by the
// server (CreateSession), filled by appends (AppendKV) and attended by
// requests that carry only their queries, or a decode step's query, key and
// value (one round trip per token).
//
// A Session keeps one Attend stream open for its attends and steps (a step
// costs one message each way, no stream setup), and calls the unary
// session RPCs on the same channel as the AttentionClient it was created
// from (its credentials, token and limits). Inputs and outputs are float32
// in memory; the wire dtype is the session's `dtype`, converted here with
// the codec Attend uses (prepare.h), and uploads are cut into chunks of
// ClientOptions.chunk_bytes by the same chunker.
//
// Retries follow ClientOptions (retry.h), except where a retry could apply
// data twice:
//  - Create, Info and a step-less Attend are retried on UNAVAILABLE (and
//    CANCELLED the client did not ask for). A Create whose answer was lost
//    may leave an orphan session on a live server; its TTL evicts it.
//  - Append is retried only while the upload had not been half-closed: the
//    server applies an append when the client's writes are done, so an
//    append broken before that was not applied. After it, an UNAVAILABLE is
//    returned as is (Info() tells whether the lengths grew).
//  - Step (append and attend in one message) is never retried: an
//    UNAVAILABLE may or may not have appended (Info() tells).
//  - Close is retried; a NOT_FOUND on a retry means the first try deleted.
// ClientOptions.deadline bounds each unary call and AppendKV upload, and
// each Attend/Step (the request is cancelled on the server when it passes).
#ifndef SCATTERBRAIN_CLIENT_CPP_SESSION_H_
#define SCATTERBRAIN_CLIENT_CPP_SESSION_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/cpp/client.h"
#include "client/cpp/prepare.h"
#include "scatterbrain/v1/attention.pb.h"

namespace scatterbrain {
namespace client {

// Sequences and heads of a session, and the head dims of its keys (and
// queries) and values.
struct SessionShape {
  int64_t batch = 1;  // sequences
  int64_t heads = 1;
  int64_t dim = 0;    // of keys and queries; must be set
  int64_t dim_v = 0;  // of values and outputs; 0 = dim
};

// What CreateSession takes, and how this client sends the session's data.
struct SessionSpec {
  // The method and its settings, fixed for the session's life (`causal` is
  // not used: each Attend says how its queries see the keys).
  v1::MethodSettings settings;
  SessionShape shape;
  // How the server stores K and V: FLOAT32 (UNSPECIFIED), FLOAT16 or
  // BFLOAT16 (half the memory).
  v1::DType kv_dtype = v1::DTYPE_FLOAT32;
  // Idle time after which the server may evict the session; zero = the
  // server's default (ServerLimits.default_session_ttl_seconds), above its
  // maximum = that maximum.
  absl::Duration ttl = absl::ZeroDuration();
  // Of q, k and v on the wire (appends and attends); float32 in memory.
  v1::DType dtype = v1::DTYPE_FLOAT32;
  // Of outputs on the wire; UNSPECIFIED = `dtype`.
  v1::DType output_dtype = v1::DTYPE_UNSPECIFIED;
};

// Serialized bytes of the messages a session's calls wrote and read
// (protobuf encoding plus gRPC's 5-byte message prefix; HTTP/2 framing and
// metadata not counted).
struct WireBytes {
  int64_t sent = 0;
  int64_t received = 0;
};

// A session on the server. Move-only; the destructor closes it (deletes it
// on the server, errors ignored) unless Close() was called. Thread-safe:
// calls on one Session run one at a time, in the order they take its lock.
// Every call on a closed or moved-from Session is FAILED_PRECONDITION.
class Session {
 public:
  // CreateSession on `client`'s channel with its options (the client may
  // be destroyed before the session: the session shares the channel).
  // INVALID_ARGUMENT for a bad spec (here or the server's), and the
  // server's errors (RESOURCE_EXHAUSTED when the session cannot fit).
  static absl::StatusOr<Session> Create(const AttentionClient& client,
                                        const SessionSpec& spec);
  ~Session();
  Session(Session&& other) noexcept;
  Session& operator=(Session&& other) noexcept;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // The session's id (128 random bits, hex) and the server's answer to
  // CreateSession (limits, shape, settings as the server fills them).
  const std::string& id() const;
  const v1::SessionInfo& created() const;
  // The shape the server confirmed (batch, heads, dim, dim_v filled in).
  const SessionShape& shape() const;

  // Appends `count` tokens to every sequence: k is [batch, heads, count,
  // dim], v is [batch, heads, count, dim_v]. Returns the session after
  // the append. All or nothing on the server.
  absl::StatusOr<v1::SessionInfo> Append(int64_t count,
                                         absl::Span<const float> k,
                                         absl::Span<const float> v);
  // Appends counts[b] tokens to sequence b (`batch` counts): k holds, for
  // each sequence in order, its new keys as [heads, counts[b], dim]; v
  // likewise with dim_v.
  absl::StatusOr<v1::SessionInfo> Append(absl::Span<const int64_t> counts,
                                         absl::Span<const float> k,
                                         absl::Span<const float> v);

  // Queries q ([batch, heads, seq_q, dim], seq_q from its size) attend to
  // the stored keys: causal relative to each sequence's length L_b (row i
  // sees keys j <= L_b - seq_q + i) unless `see_all` (every row sees all
  // L_b keys). The result's stats carry session_lengths and incremental.
  absl::StatusOr<AttendResult> Attend(absl::Span<const float> q,
                                      bool see_all = false);
  // A decode step: k ([batch, heads, seq_q, dim]) and v ([..., dim_v]) are
  // appended, then q ([batch, heads, seq_q, dim]) attends causally, in one
  // message each way. Never retried (see the file comment).
  absl::StatusOr<AttendResult> Step(absl::Span<const float> q,
                                    absl::Span<const float> k,
                                    absl::Span<const float> v);

  // GetSession: lengths, bytes held, appends, steps, refits, idle time.
  absl::StatusOr<v1::SessionInfo> Info();
  // Ends the session's stream and deletes it on the server; returns the
  // bytes the server freed (0 when a retry found it already deleted). The
  // Session is closed afterwards whatever the outcome (a session whose
  // delete failed is evicted after its TTL).
  absl::StatusOr<int64_t> Close();
  bool closed() const;

  // Bytes of every call of this session so far (create, appends, attends,
  // info, close).
  WireBytes wire_bytes() const;

 private:
  class Impl;
  explicit Session(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace client
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CPP_SESSION_H_
