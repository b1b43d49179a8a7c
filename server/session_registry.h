// scatterbrain/server/session_registry.h — the server's K/V sessions
// (kernels/session/kv_session.h) by id: who owns each, when it was last
// used, how long it may stay idle, and the memory they all hold.
//
// Ids are 128 bits from the OS CSPRNG (getrandom(2)), hex: unguessable, so
// an id is a capability only its creator learns. Every lookup is scoped by
// the caller's identity (server/auth.h's Identity): another caller's
// session is NOT_FOUND with exactly the message an unknown id gets, so a
// session's existence is never revealed.
//
// Memory: each session reserves through its own SessionMemory against (a)
// max_bytes_per_session, (b) max_session_bytes for all sessions together
// and (c) the service's MemoryBudget, which requests in flight draw on too:
// requests and sessions share one admission. When a create or an append
// does not fit, sessions idle past their TTL are evicted, least recently
// used first, and it is tried once more; else RESOURCE_EXHAUSTED naming the
// limit. Sweep() (the service's timer) evicts every session idle past its
// TTL.
//
// Locking: the registry's map mutex is never held while calling into a
// session (KvSession takes its own mutex and calls Reserve/Release with it
// held); the accounting behind SessionMemory is a leaf lock (it only calls
// the MemoryBudget, another leaf). Evicted sessions are destroyed outside
// every registry lock. Core types only: no protobuf or gRPC.
#ifndef SCATTERBRAIN_SERVER_SESSION_REGISTRY_H_
#define SCATTERBRAIN_SERVER_SESSION_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kernels/session/kv_session.h"
#include "server/clock.h"
#include "server/memory_budget.h"
#include "server/metrics.h"

namespace scatterbrain {
namespace server {

struct SessionOptions {
  // Tokens per K/V storage block (the unit of allocation), 1 .. 65536.
  int64_t kv_block_tokens = 64;
  // Bytes all sessions together may hold (K/V blocks and incremental
  // state), part of the server's memory budget. 0: half of that budget.
  int64_t max_session_bytes = 0;
  // Bytes one session may hold. 0: max_session_bytes.
  int64_t max_bytes_per_session = 0;
  // Sessions open at once.
  int max_sessions = 4096;
  // Idle seconds after which a session may be evicted, when its creator
  // asks for no TTL (CreateSession.ttl_seconds 0).
  double default_ttl_s = 600;
  // The longest TTL a creator may ask for (longer requests get this).
  double max_ttl_s = 86400;
  // Tokens per sequence beyond which an append is refused.
  int64_t max_session_tokens = int64_t{1} << 20;
};

// INVALID_ARGUMENT naming the flag for out-of-range values.
absl::Status ValidateSessionOptions(const SessionOptions& options);

// `options` with the 0 defaults made concrete for a server whose memory
// budget is `memory_budget_bytes` (what ServerInfo reports).
SessionOptions ResolveSessionOptions(const SessionOptions& options,
                                     int64_t memory_budget_bytes);

// What a caller learns of one session.
struct SessionView {
  std::string id;
  std::shared_ptr<KvSession> session;
  double ttl_s = 0;
  double idle_s = 0;      // since its last use
  int64_t max_bytes = 0;  // the most it may hold
};

class SessionRegistry {
 public:
  // `budget`, `metrics` and `clock` must outlive the registry, and the
  // registry every session it handed out (the service stops its executor
  // and calls before it goes).
  SessionRegistry(const SessionOptions& options, MemoryBudget* budget,
                  Metrics* metrics, const Clock* clock);
  ~SessionRegistry();

  SessionRegistry(const SessionRegistry&) = delete;
  SessionRegistry& operator=(const SessionRegistry&) = delete;

  // Makes a session owned by `owner`. `config`'s block_tokens and
  // max_tokens are the registry's (kv_block_tokens, max_session_tokens);
  // `ttl_s` 0 is default_ttl_s, above max_ttl_s is max_ttl_s. Errors:
  // INVALID_ARGUMENT (ValidateSessionConfig's, naming the field),
  // RESOURCE_EXHAUSTED (max_sessions, memory), INTERNAL (no randomness).
  absl::StatusOr<SessionView> Create(SessionConfig config, double ttl_s,
                                     const std::string& owner);
  // The session `id` if `owner` owns it, else NOT_FOUND (the same message
  // for an unknown id and another owner's session; `field` names the id's
  // field in it). Marks it used now unless `touch` is false.
  absl::StatusOr<SessionView> Lookup(const std::string& id,
                                     const std::string& owner,
                                     absl::string_view field,
                                     bool touch = true);
  // Removes `owner`'s session `id`: the bytes it held (freed once no call
  // uses it any more), or NOT_FOUND as Lookup.
  absl::StatusOr<int64_t> Delete(const std::string& id,
                                 const std::string& owner,
                                 absl::string_view field);

  // Runs `op` (an append to `view`'s session) and, when it fails
  // RESOURCE_EXHAUSTED for memory, evicts sessions idle past their TTL
  // (least recently used first) and runs it once more. Then refreshes the
  // metrics and the session's last use.
  absl::Status Append(const SessionView& view,
                      const std::function<absl::Status()>& op);
  // Before an appending step: evicts expired sessions (LRU first) until
  // `bytes` more would fit the session limits and the memory budget, or
  // none is left. The step itself reserves (and may still be refused).
  void MakeRoom(int64_t bytes);
  // After a call on session `id` (an attend, an append): marks it used
  // now and refreshes the bytes gauges and the refit count.
  void Used(const std::string& id);

  // Evicts every session idle past its TTL (the service's timer).
  void Sweep();

  int64_t open_sessions() const;
  // Bytes all sessions hold (K/V blocks and state), as reserved.
  int64_t held_bytes() const;
  const SessionOptions& options() const { return options_; }

 private:
  class Accounting;
  class Memory;
  struct Entry;
  using EntryPtr = std::shared_ptr<Entry>;

  // Removes expired entries, least recently used first, while `want` says
  // more room is needed (or all expired ones when `want` is null), into
  // `evicted` (destroyed by the caller, outside mu_). Returns how many.
  int EvictExpiredLocked(const std::function<bool()>& want,
                         SessionEviction reason, std::vector<EntryPtr>* evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Evicts expired sessions (LRU first) until `bytes` more would fit; true
  // when any was evicted.
  bool EvictForBytes(int64_t bytes);
  bool Expired(const Entry& e, int64_t now_us) const;
  void PublishCountLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishBytes();
  SessionView ViewOf(const Entry& e, int64_t now_us) const;

  const SessionOptions options_;
  MemoryBudget* const budget_;
  Metrics* const metrics_;
  const Clock* const clock_;
  const std::shared_ptr<Accounting> accounting_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, EntryPtr> entries_ ABSL_GUARDED_BY(mu_);
  // Sums of the entries' last-seen kv_bytes and state_bytes (the gauges).
  int64_t kv_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t state_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

// 128 random bits from the OS (getrandom(2), else /dev/urandom) as 32 hex
// digits; INTERNAL when neither gives any.
absl::StatusOr<std::string> NewSessionId();

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_SESSION_REGISTRY_H_
