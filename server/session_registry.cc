// scatterbrain/server/session_registry.cc — see session_registry.h.
#include "server/session_registry.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace scatterbrain {
namespace server {
namespace {

constexpr char kWhat[] = "session";

absl::Status Bad(absl::string_view option, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(option, ": ", what));
}

// One message for an unknown id and another owner's session: whether an id
// exists is not the caller's to know unless it is theirs.
absl::Status NotFound(absl::string_view field) {
  return absl::NotFoundError(absl::StrCat(
      field,
      ": no such session (never created, deleted, or evicted after idling "
      "past its TTL)"));
}

int64_t SecondsToMicros(double s) {
  return static_cast<int64_t>(std::llround(s * 1e6));
}

}  // namespace

absl::Status ValidateSessionOptions(const SessionOptions& o) {
  if (o.kv_block_tokens < 1 || o.kv_block_tokens > 65536) {
    return Bad("kv_block_tokens",
               absl::StrCat("must be in [1, 65536], got ", o.kv_block_tokens));
  }
  if (o.max_session_bytes < 0) {
    return Bad("max_session_bytes",
               absl::StrCat("must be >= 0 (0: half of max_memory_bytes), got ",
                            o.max_session_bytes));
  }
  if (o.max_bytes_per_session < 0) {
    return Bad("max_bytes_per_session",
               absl::StrCat("must be >= 0 (0: max_session_bytes), got ",
                            o.max_bytes_per_session));
  }
  if (o.max_sessions < 0) {
    return Bad(
        "max_sessions",
        absl::StrCat("must be >= 0 (0: no sessions), got ", o.max_sessions));
  }
  // Bounded so that microseconds cannot overflow.
  if (!std::isfinite(o.default_ttl_s) || o.default_ttl_s <= 0 ||
      o.default_ttl_s > 1e9) {
    return Bad("session_ttl_s",
               absl::StrCat("must be in (0, 1e9], got ", o.default_ttl_s));
  }
  if (!std::isfinite(o.max_ttl_s) || o.max_ttl_s < o.default_ttl_s ||
      o.max_ttl_s > 1e9) {
    return Bad(
        "max_session_ttl_s",
        absl::StrCat("must be in [session_ttl_s, 1e9], got ", o.max_ttl_s));
  }
  if (o.max_session_tokens < 1) {
    return Bad("max_session_tokens",
               absl::StrCat("must be >= 1, got ", o.max_session_tokens));
  }
  return absl::OkStatus();
}

SessionOptions ResolveSessionOptions(const SessionOptions& options,
                                     int64_t memory_budget_bytes) {
  SessionOptions o = options;
  if (o.max_session_bytes == 0) o.max_session_bytes = memory_budget_bytes / 2;
  if (o.max_bytes_per_session == 0)
    o.max_bytes_per_session = o.max_session_bytes;
  return o;
}

absl::StatusOr<std::string> NewSessionId() {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    const ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n > 0) {
      got += static_cast<size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      break;
    }
  }
  if (got < sizeof(bytes)) {
    // Kernels without getrandom(2) (before 3.17): the same source as a file.
    if (FILE* f = std::fopen("/dev/urandom", "rb")) {
      got = std::fread(bytes, 1, sizeof(bytes), f);
      std::fclose(f);
    }
  }
  if (got < sizeof(bytes)) {
    return absl::InternalError(
        "the server cannot get random bytes for a session id (getrandom and "
        "/dev/urandom failed)");
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

// The bytes all sessions hold, against max_session_bytes.
class SessionRegistry::Accounting {
 public:
  Accounting(int64_t max_total_bytes, MemoryBudget* budget)
      : max_total_bytes_(max_total_bytes), budget_(budget) {}

  // Whether `bytes` more would fit max_session_bytes and the memory budget
  // now (eviction stops when it would).
  bool Fits(int64_t bytes) const {
    {
      absl::MutexLock lock(&mu_);
      if (total_ + bytes > max_total_bytes_) return false;
    }
    return budget_->reserved_bytes() + bytes <= budget_->limit_bytes();
  }
  int64_t total() const {
    absl::MutexLock lock(&mu_);
    return total_;
  }
  // Adds `bytes` to the total, or RESOURCE_EXHAUSTED naming
  // max_session_bytes.
  absl::Status Add(int64_t bytes) {
    absl::MutexLock lock(&mu_);
    if (total_ + bytes > max_total_bytes_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          kWhat, ": needs ", bytes, " bytes more; sessions hold ", total_,
          " of the ", max_total_bytes_,
          " bytes all sessions may hold (max_session_bytes); delete idle "
          "sessions or retry later"));
    }
    total_ += bytes;
    return absl::OkStatus();
  }
  void Sub(int64_t bytes) {
    absl::MutexLock lock(&mu_);
    total_ -= bytes;
  }
  MemoryBudget* budget() const { return budget_; }

 private:
  const int64_t max_total_bytes_;
  MemoryBudget* const budget_;
  mutable absl::Mutex mu_;
  int64_t total_ ABSL_GUARDED_BY(mu_) = 0;
};

// One session's memory: its own limit, then all sessions', then the
// server's budget. Called with the session's mutex held; takes only leaf
// locks (its own, the accounting's, the budget's).
class SessionRegistry::Memory final : public SessionMemory {
 public:
  Memory(std::shared_ptr<Accounting> accounting, int64_t max_bytes)
      : accounting_(std::move(accounting)), max_bytes_(max_bytes) {
    // A reservation of 0 bytes never fails; it grows with the session.
    absl::StatusOr<MemoryReservation> r =
        accounting_->budget()->Reserve(0, kWhat);
    if (r.ok()) reservation_ = *std::move(r);
  }
  ~Memory() override {
    absl::MutexLock lock(&mu_);
    accounting_->Sub(held_);
  }

  absl::Status Reserve(int64_t bytes) override {
    if (bytes <= 0) return absl::OkStatus();
    absl::MutexLock lock(&mu_);
    if (held_ + bytes > max_bytes_) {
      // Eviction cannot help a session over its own limit.
      return absl::ResourceExhaustedError(
          absl::StrCat(kWhat, ": holds ", held_, " bytes; ", bytes,
                       " more would pass the limit of ", max_bytes_,
                       " bytes per session (max_bytes_per_session)"));
    }
    absl::Status st = accounting_->Add(bytes);
    if (st.ok()) {
      st = reservation_.Grow(bytes, kWhat);
      if (!st.ok()) accounting_->Sub(bytes);
    }
    if (!st.ok()) {
      refused_ = bytes;
      return st;
    }
    held_ += bytes;
    return absl::OkStatus();
  }

  void Release(int64_t bytes) override {
    if (bytes <= 0) return;
    absl::MutexLock lock(&mu_);
    bytes = std::min(bytes, held_);
    held_ -= bytes;
    accounting_->Sub(bytes);
    reservation_.Shrink(bytes);
  }

  int64_t held() const {
    absl::MutexLock lock(&mu_);
    return held_;
  }
  // The bytes of the last refusal that eviction could help (all sessions'
  // limit, the memory budget); 0 if none since the last call.
  int64_t TakeRefused() {
    absl::MutexLock lock(&mu_);
    return std::exchange(refused_, 0);
  }

 private:
  const std::shared_ptr<Accounting> accounting_;
  const int64_t max_bytes_;
  mutable absl::Mutex mu_;
  MemoryReservation reservation_ ABSL_GUARDED_BY(mu_);
  int64_t held_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t refused_ ABSL_GUARDED_BY(mu_) = 0;
};

struct SessionRegistry::Entry {
  std::string id;
  std::string owner;
  int64_t ttl_us = 0;
  std::shared_ptr<Memory> memory;
  // Its deleter holds `memory` too: a call still using the session after
  // it left the registry releases into a live Memory.
  std::shared_ptr<KvSession> session;
  // Guarded by the registry's mu_.
  int64_t last_use_us = 0;
  int64_t kv_bytes = 0;     // as last seen (Info)
  int64_t state_bytes = 0;  // as last seen
  int64_t refits = 0;       // as last seen
};

SessionRegistry::SessionRegistry(const SessionOptions& options,
                                 MemoryBudget* budget, Metrics* metrics,
                                 const Clock* clock)
    : options_(ResolveSessionOptions(options, budget->limit_bytes())),
      budget_(budget),
      metrics_(metrics),
      clock_(clock),
      accounting_(
          std::make_shared<Accounting>(options_.max_session_bytes, budget)) {
  metrics_->SetSessionsOpen(0);
  metrics_->SetSessionBytes(0, 0);
}

SessionRegistry::~SessionRegistry() {
  absl::flat_hash_map<std::string, EntryPtr> entries;
  {
    absl::MutexLock lock(&mu_);
    entries.swap(entries_);
  }
  // Sessions are destroyed here, outside mu_.
}

bool SessionRegistry::Expired(const Entry& e, int64_t now_us) const {
  return now_us - e.last_use_us >= e.ttl_us;
}

SessionView SessionRegistry::ViewOf(const Entry& e, int64_t now_us) const {
  SessionView v;
  v.id = e.id;
  v.session = e.session;
  v.ttl_s = e.ttl_us * 1e-6;
  v.idle_s = std::max<int64_t>(now_us - e.last_use_us, 0) * 1e-6;
  v.max_bytes = options_.max_bytes_per_session;
  return v;
}

void SessionRegistry::PublishCountLocked() {
  metrics_->SetSessionsOpen(static_cast<int64_t>(entries_.size()));
  metrics_->SetSessionBytes(kv_bytes_, state_bytes_);
}

int SessionRegistry::EvictExpiredLocked(const std::function<bool()>& want,
                                        SessionEviction reason,
                                        std::vector<EntryPtr>* evicted) {
  const int64_t now = clock_->NowMicros();
  std::vector<EntryPtr> expired;
  for (const auto& [id, e] : entries_) {
    if (Expired(*e, now)) expired.push_back(e);
  }
  std::sort(expired.begin(), expired.end(),
            [](const EntryPtr& a, const EntryPtr& b) {
              return a->last_use_us < b->last_use_us;
            });
  int n = 0;
  for (EntryPtr& e : expired) {
    if (want && !want()) break;
    entries_.erase(e->id);
    kv_bytes_ -= e->kv_bytes;
    state_bytes_ -= e->state_bytes;
    metrics_->SessionEvicted(reason);
    ++n;
    if (!want) {
      evicted->push_back(std::move(e));  // destroyed by the caller
      continue;
    }
    // The next want() must see this one's memory back: drop the session
    // now (outside mu_), unless a call still holds it.
    std::shared_ptr<KvSession> session = std::move(e->session);
    evicted->push_back(std::move(e));
    mu_.Unlock();
    session.reset();
    mu_.Lock();
  }
  if (n > 0) PublishCountLocked();
  return n;
}

bool SessionRegistry::EvictForBytes(int64_t bytes) {
  std::vector<EntryPtr> evicted;
  {
    absl::MutexLock lock(&mu_);
    const auto want = [this, bytes] { return !accounting_->Fits(bytes); };
    if (!want()) return false;
    EvictExpiredLocked(want, SessionEviction::kMemory, &evicted);
  }
  return !evicted.empty();
}

void SessionRegistry::MakeRoom(int64_t bytes) { EvictForBytes(bytes); }

absl::StatusOr<SessionView> SessionRegistry::Create(SessionConfig config,
                                                    double ttl_s,
                                                    const std::string& owner) {
  config.block_tokens = options_.kv_block_tokens;
  config.max_tokens = options_.max_session_tokens;
  absl::Status st = ValidateSessionConfig(config);
  if (!st.ok()) return st;
  if (!std::isfinite(ttl_s) || ttl_s < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ttl_seconds: must be finite and >= 0 (0: the server's default), "
        "got ",
        ttl_s));
  }
  if (ttl_s == 0) ttl_s = options_.default_ttl_s;
  ttl_s = std::min(ttl_s, options_.max_ttl_s);
  const auto full = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return static_cast<int64_t>(entries_.size()) >= options_.max_sessions;
  };
  const auto too_many = [this] {
    return absl::ResourceExhaustedError(absl::StrCat(
        "session: ", options_.max_sessions,
        " sessions are open, the server's limit (max_sessions); delete "
        "sessions or retry later"));
  };
  {
    std::vector<EntryPtr> evicted;
    absl::MutexLock lock(&mu_);
    if (full()) {
      EvictExpiredLocked([&]()
                             ABSL_NO_THREAD_SAFETY_ANALYSIS { return full(); },
                         SessionEviction::kMemory, &evicted);
      if (full()) return too_many();
    }
  }
  absl::StatusOr<std::string> id = NewSessionId();
  if (!id.ok()) return id.status();

  auto memory =
      std::make_shared<Memory>(accounting_, options_.max_bytes_per_session);
  absl::StatusOr<std::unique_ptr<KvSession>> made =
      KvSession::Create(config, memory.get());
  if (absl::IsResourceExhausted(made.status())) {
    const int64_t refused = memory->TakeRefused();
    if (refused > 0 && EvictForBytes(refused)) {
      made = KvSession::Create(config, memory.get());
    }
  }
  if (!made.ok()) return made.status();
  auto entry = std::make_shared<Entry>();
  entry->id = *id;
  entry->owner = owner;
  entry->ttl_us = SecondsToMicros(ttl_s);
  entry->memory = memory;
  entry->session = std::shared_ptr<KvSession>(
      made->release(), [memory](KvSession* s) { delete s; });
  const SessionInfo info = entry->session->Info();
  entry->kv_bytes = info.kv_bytes;
  entry->state_bytes = info.state_bytes;
  entry->refits = info.refits;
  const int64_t now = clock_->NowMicros();
  entry->last_use_us = now;
  {
    absl::MutexLock lock(&mu_);
    // Others may have filled the last places meanwhile.
    if (full()) return too_many();
    entries_.emplace(entry->id, entry);
    kv_bytes_ += entry->kv_bytes;
    state_bytes_ += entry->state_bytes;
    PublishCountLocked();
  }
  return ViewOf(*entry, now);
}

absl::StatusOr<SessionView> SessionRegistry::Lookup(const std::string& id,
                                                    const std::string& owner,
                                                    absl::string_view field,
                                                    bool touch) {
  const int64_t now = clock_->NowMicros();
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second->owner != owner) {
    return NotFound(field);
  }
  Entry& e = *it->second;
  SessionView view = ViewOf(e, now);
  if (touch) e.last_use_us = std::max(e.last_use_us, now);
  return view;
}

absl::StatusOr<int64_t> SessionRegistry::Delete(const std::string& id,
                                                const std::string& owner,
                                                absl::string_view field) {
  EntryPtr entry;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second->owner != owner) {
      return NotFound(field);
    }
    auto node = entries_.extract(id);
    entry = std::move(node.mapped());
    kv_bytes_ -= entry->kv_bytes;
    state_bytes_ -= entry->state_bytes;
    PublishCountLocked();
  }
  const int64_t held = entry->memory->held();
  // Destroyed here unless a call still uses it (then when that call ends).
  entry.reset();
  return held;
}

absl::Status SessionRegistry::Append(const SessionView& view,
                                     const std::function<absl::Status()>& op) {
  EntryPtr entry;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(view.id);
    if (it != entries_.end() && it->second->session == view.session) {
      entry = it->second;
    }
  }
  absl::Status st = op();
  if (absl::IsResourceExhausted(st) && entry != nullptr) {
    const int64_t refused = entry->memory->TakeRefused();
    if (refused > 0 && EvictForBytes(refused)) st = op();
  }
  if (st.ok()) metrics_->SessionAppended();
  Used(view.id);
  return st;
}

void SessionRegistry::Used(const std::string& id) {
  std::shared_ptr<KvSession> session;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    session = it->second->session;
  }
  const SessionInfo info = session->Info();  // the session's lock, not ours
  int64_t refits = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second->session != session) return;
    Entry& e = *it->second;
    e.last_use_us = std::max(e.last_use_us, clock_->NowMicros());
    kv_bytes_ += info.kv_bytes - e.kv_bytes;
    state_bytes_ += info.state_bytes - e.state_bytes;
    e.kv_bytes = info.kv_bytes;
    e.state_bytes = info.state_bytes;
    refits = info.refits - e.refits;
    e.refits = info.refits;
    metrics_->SetSessionBytes(kv_bytes_, state_bytes_);
  }
  metrics_->SessionRefits(refits);
}

void SessionRegistry::Sweep() {
  std::vector<EntryPtr> evicted;
  absl::MutexLock lock(&mu_);
  EvictExpiredLocked(nullptr, SessionEviction::kTtl, &evicted);
  // `evicted` goes after the lock (declared before it).
}

int64_t SessionRegistry::open_sessions() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(entries_.size());
}

int64_t SessionRegistry::held_bytes() const { return accounting_->total(); }

}  // namespace server
}  // namespace scatterbrain
