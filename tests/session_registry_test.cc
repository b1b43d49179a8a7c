// tests/session_registry_test.cc — the server's session registry on a fake
// clock: unguessable ids, owner scoping (another owner's session is
// NOT_FOUND exactly as an unknown id), delete, the three memory limits
// (per session, all sessions, the server's budget) with the flag named,
// TTL eviction by the sweep, expired sessions evicted least recently used
// first to make room, max_sessions, and the metrics of all of it.
#include "server/session_registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "server/clock.h"
#include "server/memory_budget.h"
#include "server/metrics.h"
#include "tests/testutil/random.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace server {
namespace {

using ::testing::HasSubstr;
using testutil::StatusIs;

// A small exact session: 1 sequence, 2 heads of 8 (keys and values). With
// 4-token blocks a block holds 2 * 4 * 16 * 4 = 512 bytes; exact sessions
// keep no incremental state, so a session holds whole blocks only.
constexpr int64_t kBlockBytes = 512;

SessionConfig SmallConfig() {
  SessionConfig c;
  c.settings.method = Method::kExact;
  c.batch = 1;
  c.heads = 2;
  c.dim = 8;
  c.dim_v = 8;
  return c;
}

double Metric(const Metrics& m, const std::string& series) {
  const std::string text = m.Serialize();
  const size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

class SessionRegistryTest : public ::testing::Test {
 protected:
  // Sessions handed out must go before their registry and budget.
  void Make(SessionOptions o, int64_t budget_bytes = int64_t{1} << 30) {
    ASSERT_EQ(registry_, nullptr);
    o.kv_block_tokens = 4;
    budget_ = std::make_unique<MemoryBudget>(budget_bytes);
    registry_ =
        std::make_unique<SessionRegistry>(o, budget_.get(), &metrics_, &clock_);
  }

  // Appends `tokens` random tokens through the registry (eviction and
  // retry included).
  absl::Status AppendTokens(const SessionView& view, int64_t tokens) {
    const SessionConfig& c = view.session->config();
    const std::vector<float> k =
        testutil::RandomUniform(c.heads * tokens * c.dim, 7, -1, 1);
    const std::vector<float> v =
        testutil::RandomUniform(c.heads * tokens * c.dim_v, 8, -1, 1);
    const int64_t counts[] = {tokens};
    KvSession* s = view.session.get();
    return registry_->Append(view, [&] {
      return s->Append(counts, k.data(), v.data(), DType::kFloat32);
    });
  }

  SessionView MustCreate(const std::string& owner, double ttl_s = 0) {
    absl::StatusOr<SessionView> v =
        registry_->Create(SmallConfig(), ttl_s, owner);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : SessionView{};
  }

  FakeClock clock_{1'000'000};
  Metrics metrics_;
  std::unique_ptr<MemoryBudget> budget_;
  std::unique_ptr<SessionRegistry> registry_;
};

TEST(SessionIdTest, HexOf128RandomBits) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    absl::StatusOr<std::string> id = NewSessionId();
    ASSERT_TRUE(id.ok()) << id.status();
    ASSERT_EQ(id->size(), 32u);
    EXPECT_EQ(id->find_first_not_of("0123456789abcdef"), std::string::npos);
    seen.insert(*id);
  }
  EXPECT_EQ(seen.size(), 1000u);  // a repeat in 2^128 would be a broken RNG
}

TEST_F(SessionRegistryTest, OwnersSeeOnlyTheirOwnSessions) {
  Make({});
  SessionView mine = MustCreate("token:aaaa");
  EXPECT_THAT(registry_->Lookup(mine.id, "token:aaaa", "session_id"),
              testutil::IsOk());
  const absl::Status other =
      registry_->Lookup(mine.id, "token:bbbb", "session_id").status();
  const absl::Status unknown =
      registry_->Lookup(std::string(32, '0'), "token:aaaa", "session_id")
          .status();
  EXPECT_THAT(other, StatusIs(absl::StatusCode::kNotFound));
  // Nothing tells "someone else's" from "never existed".
  EXPECT_EQ(other, unknown);
  EXPECT_THAT(registry_->Delete(mine.id, "token:bbbb", "session_id").status(),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(registry_->open_sessions(), 1);
}

TEST_F(SessionRegistryTest, DeleteFreesAndForgets) {
  Make({});
  SessionView s = MustCreate("me");
  ASSERT_THAT(AppendTokens(s, 6), testutil::IsOk());  // 2 blocks
  EXPECT_EQ(registry_->held_bytes(), 2 * kBlockBytes);
  EXPECT_EQ(budget_->reserved_bytes(), 2 * kBlockBytes);
  EXPECT_EQ(Metric(metrics_, "scatterbrain_session_kv_bytes"), 6 * 2 * 16 * 4);
  EXPECT_EQ(Metric(metrics_, "scatterbrain_session_appends_total"), 1);
  absl::StatusOr<int64_t> freed = registry_->Delete(s.id, "me", "session_id");
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, 2 * kBlockBytes);
  EXPECT_THAT(registry_->Lookup(s.id, "me", "session_id").status(),
              StatusIs(absl::StatusCode::kNotFound));
  // `s` still holds the session: its memory goes back with it.
  EXPECT_EQ(budget_->reserved_bytes(), 2 * kBlockBytes);
  s.session.reset();
  EXPECT_EQ(budget_->reserved_bytes(), 0);
  EXPECT_EQ(registry_->held_bytes(), 0);
  EXPECT_EQ(Metric(metrics_, "scatterbrain_sessions_open"), 0);
  EXPECT_EQ(Metric(metrics_, "scatterbrain_session_kv_bytes"), 0);
}

TEST_F(SessionRegistryTest, EachLimitRefusesNamingItsFlag) {
  SessionOptions o;
  o.max_session_bytes = 4 * kBlockBytes;
  o.max_bytes_per_session = 3 * kBlockBytes;
  Make(o, /*budget_bytes=*/int64_t{1} << 30);
  SessionView a = MustCreate("me");
  EXPECT_THAT(AppendTokens(a, 16),  // 4 blocks
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("max_bytes_per_session")));
  ASSERT_THAT(AppendTokens(a, 12), testutil::IsOk());  // 3 blocks
  SessionView b = MustCreate("me");
  EXPECT_THAT(AppendTokens(b, 8),  // 2 more: 5 > 4 in all
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("max_session_bytes")));
  EXPECT_EQ(b.session->Lengths()[0], 0);  // all or nothing
}

TEST_F(SessionRegistryTest, SessionsAndRequestsShareTheServersBudget) {
  SessionOptions o;
  o.max_session_bytes = 3 * kBlockBytes;  // not the limit here
  Make(o, /*budget_bytes=*/3 * kBlockBytes);
  absl::StatusOr<MemoryReservation> request =
      budget_->Reserve(2 * kBlockBytes, "a request");
  ASSERT_TRUE(request.ok());
  SessionView c = MustCreate("me");
  EXPECT_THAT(AppendTokens(c, 8), StatusIs(absl::StatusCode::kResourceExhausted,
                                           HasSubstr("max_memory_bytes")));
  request->Release();
  EXPECT_THAT(AppendTokens(c, 8), testutil::IsOk());
  EXPECT_EQ(budget_->reserved_bytes(), 2 * kBlockBytes);
}

TEST_F(SessionRegistryTest, SweepEvictsIdlePastTtl) {
  SessionOptions o;
  o.default_ttl_s = 60;
  o.max_ttl_s = 120;
  Make(o);
  const std::string idle = MustCreate("me").id;          // 60 s
  const std::string longer = MustCreate("me", 1000).id;  // capped: 120 s
  const std::string used = MustCreate("me").id;
  clock_.AdvanceMicros(59'000'000);
  ASSERT_THAT(registry_->Lookup(used, "me", "session_id"), testutil::IsOk());
  registry_->Sweep();
  EXPECT_EQ(registry_->open_sessions(), 3);
  clock_.AdvanceMicros(1'000'000);  // idle: 60 s, used: 1 s
  registry_->Sweep();
  EXPECT_THAT(registry_->Lookup(idle, "me", "session_id").status(),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(registry_->Lookup(used, "me", "session_id"), testutil::IsOk());
  absl::StatusOr<SessionView> l =
      registry_->Lookup(longer, "me", "session_id", /*touch=*/false);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->ttl_s, 120);
  EXPECT_EQ(
      Metric(metrics_, "scatterbrain_session_evictions_total{reason=\"ttl\"}"),
      1);
  clock_.AdvanceMicros(60'000'000);  // longer: 120 s idle
  registry_->Sweep();
  EXPECT_EQ(registry_->open_sessions(), 0);
  EXPECT_EQ(
      Metric(metrics_, "scatterbrain_session_evictions_total{reason=\"ttl\"}"),
      3);
}

TEST_F(SessionRegistryTest, ExpiredEvictedLeastRecentlyUsedFirstForRoom) {
  SessionOptions o;
  o.max_session_bytes = 3 * kBlockBytes;
  o.default_ttl_s = 10;
  Make(o);
  SessionView oldest = MustCreate("me");
  SessionView older = MustCreate("me");
  SessionView live = MustCreate("me");
  ASSERT_THAT(AppendTokens(oldest, 4), testutil::IsOk());
  clock_.AdvanceMicros(1'000'000);
  ASSERT_THAT(AppendTokens(older, 4), testutil::IsOk());
  clock_.AdvanceMicros(1'000'000);
  ASSERT_THAT(AppendTokens(live, 4), testutil::IsOk());  // full now
  // Not expired yet: nothing may go.
  EXPECT_THAT(AppendTokens(live, 4),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("max_session_bytes")));
  clock_.AdvanceMicros(10'500'000);  // oldest, older idle > 10 s
  ASSERT_THAT(registry_->Lookup(live.id, "me", "session_id"),
              testutil::IsOk());  // live is used again
  const std::string oldest_id = oldest.id, older_id = older.id;
  oldest.session.reset();
  older.session.reset();
  // One block more: the least recently used expired session goes, alone.
  EXPECT_THAT(AppendTokens(live, 4), testutil::IsOk());
  EXPECT_THAT(registry_->Lookup(oldest_id, "me", "session_id").status(),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(registry_->Lookup(older_id, "me", "session_id", false),
              testutil::IsOk());
  EXPECT_EQ(Metric(metrics_,
                   "scatterbrain_session_evictions_total{reason=\"memory\"}"),
            1);
  EXPECT_EQ(live.session->Lengths()[0], 8);
}

TEST_F(SessionRegistryTest, MaxSessionsThenExpiredMakeRoom) {
  SessionOptions o;
  o.max_sessions = 2;
  o.default_ttl_s = 5;
  Make(o);
  const std::string first = MustCreate("me").id;
  clock_.AdvanceMicros(1'000'000);
  const std::string second = MustCreate("you").id;
  EXPECT_THAT(registry_->Create(SmallConfig(), 0, "me").status(),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("max_sessions")));
  clock_.AdvanceMicros(5'000'000);  // both expired; `first` the older
  EXPECT_THAT(registry_->Create(SmallConfig(), 0, "me"), testutil::IsOk());
  EXPECT_THAT(registry_->Lookup(second, "you", "session_id"), testutil::IsOk());
  EXPECT_EQ(registry_->open_sessions(), 2);
  EXPECT_THAT(registry_->Lookup(first, "me", "session_id").status(),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(SessionRegistryTest, BadConfigAndOptions) {
  Make({});
  SessionConfig c = SmallConfig();
  c.dim = 0;
  EXPECT_THAT(registry_->Create(c, 0, "me").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dim")));
  EXPECT_THAT(
      registry_->Create(SmallConfig(), -1, "me").status(),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ttl_seconds")));
  SessionOptions o;
  o.kv_block_tokens = 0;
  EXPECT_THAT(ValidateSessionOptions(o),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("kv_block_tokens")));
  o = SessionOptions();
  o.max_ttl_s = 1;
  EXPECT_THAT(ValidateSessionOptions(o),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("max_session_ttl_s")));
  const SessionOptions r = ResolveSessionOptions(SessionOptions(), 1000);
  EXPECT_EQ(r.max_session_bytes, 500);
  EXPECT_EQ(r.max_bytes_per_session, 500);
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
