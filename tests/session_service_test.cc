// In-process tests of server-held K/V sessions through the generated stubs
// (a real Server on 127.0.0.1): create, append, attend equal to one-shot
// attention on the same K/V; decode steps that append; GetSession's
// numbers; delete; ownership isolation between bearer tokens; the memory
// limits, TTL and LRU eviction; one session used from several streams at
// once; an append cancelled midway; malformed requests.
//
// Nothing here depends on timing: TTLs run on a fake clock, and the one
// wait (the sweep of the service's timer) is a bounded poll.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "scatterbrain/v1/attention.grpc.pb.h"
#include "server/server.h"
#include "tests/testutil/files.h"
#include "tests/testutil/service_calls.h"

namespace scatterbrain {
namespace server {
namespace {

namespace pb = ::scatterbrain::v1;
using ::testing::HasSubstr;
using testutil::AppendKV;
using testutil::AttendOnce;
using testutil::CreateSession;
using testutil::LocalOutput;
using testutil::MakeReq;
using testutil::MetricValue;
using testutil::RandomTensor;
using testutil::Reply;
using testutil::Req;
using testutil::SessionReq;

constexpr int kB = 2, kH = 2, kD = 8, kDv = 8;

// Max |a - b| over two float32 byte strings.
double MaxDiff(const std::string& a, const std::string& b) {
  EXPECT_EQ(a.size(), b.size());
  const size_t n = std::min(a.size(), b.size()) / 4;
  const float* x = reinterpret_cast<const float*>(a.data());
  const float* y = reinterpret_cast<const float*>(b.data());
  double m = 0;
  for (size_t i = 0; i < n; ++i)
    m = std::max(m, std::fabs(double(x[i]) - y[i]));
  return n == 0 ? 1e9 : m;
}

// Rows [r0, r1) of every (b, h) of a [bh, seq, dim] float32 tensor.
std::string Rows(const std::string& x, int bh, int seq, int dim, int r0,
                 int r1) {
  std::string out;
  for (int s = 0; s < bh; ++s) {
    out +=
        x.substr((size_t(s) * seq + r0) * dim * 4, size_t(r1 - r0) * dim * 4);
  }
  return out;
}

class SessionServiceTest : public ::testing::Test {
 protected:
  static ServerOptions Options() {
    ServerOptions o = testutil::LoopbackServerOptions();
    o.executor.batcher.max_queue_delay_us = 200;
    o.executor.error_sample_rows = 0;
    return o;
  }
  void Start(const ServerOptions& o, const Clock* clock = RealClock::Get()) {
    absl::StatusOr<std::unique_ptr<Server>> s = Server::Start(o, clock);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    stub_ =
        pb::AttentionService::NewStub(testutil::OwnChannel(server_->port()));
  }
  // A session of `method` with MakeReq's test settings.
  pb::SessionInfo MustCreate(pb::Method method, const std::string& token = "") {
    pb::SessionInfo info;
    const grpc::Status st = CreateSession(stub_.get(), Settings(method), kB, kH,
                                          kD, kDv, &info, token);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return info;
  }
  static pb::MethodSettings Settings(pb::Method method) {
    return MakeReq("x", method, pb::DTYPE_FLOAT32, 1, 1, 1, 1, 1, 1, 0)
        .header.settings();
  }
  // `n` random tokens appended to every sequence of session `id`.
  grpc::Status AppendRandom(const std::string& id, uint32_t n,
                            pb::SessionInfo* info,
                            const std::string& token = "") {
    return AppendKV(stub_.get(), id, {n}, pb::DTYPE_FLOAT32,
                    RandomTensor(pb::DTYPE_FLOAT32, kB * n * kH * kD, 1),
                    RandomTensor(pb::DTYPE_FLOAT32, kB * n * kH * kDv, 2), 4096,
                    info, token);
  }
  grpc::Status Get(const std::string& id, pb::SessionInfo* info,
                   const std::string& token = "") {
    pb::GetSessionRequest g;
    g.set_session_id(id);
    grpc::ClientContext ctx;
    testutil::WithToken(&ctx, token);
    return stub_->GetSession(&ctx, g, info);
  }
  // A decode step on session `id` appending a random token.
  Reply RandomStep(const std::string& id, uint64_t seed) {
    return AttendOnce(
        stub_.get(),
        SessionReq("s", id, 1, true, false,
                   RandomTensor(pb::DTYPE_FLOAT32, kB * kH * kD, seed),
                   RandomTensor(pb::DTYPE_FLOAT32, kB * kH * kD, seed + 1),
                   RandomTensor(pb::DTYPE_FLOAT32, kB * kH * kDv, seed + 2)));
  }
  double Metric(const std::string& series) {
    return MetricValue(server_->metrics().Serialize(), series);
  }
  // Polls `pred` (bounded: 10 s).
  static bool Eventually(const std::function<bool()>& pred) {
    for (int i = 0; i < 2000; ++i) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return pred();
  }

  FakeClock clock_{1'000'000};  // outlives the server
  std::unique_ptr<Server> server_;
  std::unique_ptr<pb::AttentionService::Stub> stub_;
};

// A prefill through AppendKV, then the whole query block and decode steps
// that append their own token: every output equals one-shot causal
// attention on the same K/V (exact, and performer with the same seed).
TEST_F(SessionServiceTest, SessionOutputsEqualOneShotAttention) {
  Start(Options());
  constexpr int kN = 40, kPrefill = 32;
  for (pb::Method method : {pb::METHOD_EXACT, pb::METHOD_PERFORMER}) {
    SCOPED_TRACE(pb::Method_Name(method));
    Req full =
        MakeReq("full", method, pb::DTYPE_FLOAT32, kB, kH, kN, kN, kD, kDv, 77);
    full.header.mutable_settings()->set_causal(true);
    const std::string want = LocalOutput(full);
    const pb::SessionInfo s = MustCreate(method);
    pb::SessionInfo after;
    // Chunks of 100 bytes: elements split across messages.
    ASSERT_TRUE(
        AppendKV(stub_.get(), s.session_id(), {kPrefill}, pb::DTYPE_FLOAT32,
                 Rows(full.k, kB * kH, kN, kD, 0, kPrefill),
                 Rows(full.v, kB * kH, kN, kDv, 0, kPrefill), 100, &after)
            .ok());
    EXPECT_THAT(after.lengths(), ::testing::ElementsAre(kPrefill, kPrefill));
    // The prefill's own rows (a query block: the one-shot path).
    Reply r = AttendOnce(
        stub_.get(), SessionReq("pre", s.session_id(), kPrefill, false, false,
                                Rows(full.q, kB * kH, kN, kD, 0, kPrefill)));
    ASSERT_FALSE(r.has_error) << r.message;
    Req prefix = full;
    prefix.header.mutable_shape()->set_seq_q(kPrefill);
    prefix.header.mutable_shape()->set_seq_k(kPrefill);
    prefix.q = Rows(full.q, kB * kH, kN, kD, 0, kPrefill);
    prefix.k = Rows(full.k, kB * kH, kN, kD, 0, kPrefill);
    prefix.v = Rows(full.v, kB * kH, kN, kDv, 0, kPrefill);
    EXPECT_LE(MaxDiff(r.output, LocalOutput(prefix)), 1e-5);
    // Decode steps: one token each, appended and attended in one message.
    for (int t = kPrefill; t < kN; ++t) {
      Reply step =
          AttendOnce(stub_.get(),
                     SessionReq(absl::StrCat("t", t), s.session_id(), 1, true,
                                false, Rows(full.q, kB * kH, kN, kD, t, t + 1),
                                Rows(full.k, kB * kH, kN, kD, t, t + 1),
                                Rows(full.v, kB * kH, kN, kDv, t, t + 1)));
      ASSERT_FALSE(step.has_error) << step.message;
      EXPECT_LE(MaxDiff(step.output, Rows(want, kB * kH, kN, kDv, t, t + 1)),
                1e-5)
          << "step " << t;
      EXPECT_THAT(step.header.stats().session_lengths(),
                  ::testing::ElementsAre(t + 1, t + 1));
    }
    // see_all on the full session: non-causal one-shot attention.
    Req all = full;
    all.header.mutable_settings()->set_causal(false);
    r = AttendOnce(stub_.get(),
                   SessionReq("all", s.session_id(), kN, false, true, full.q));
    ASSERT_FALSE(r.has_error) << r.message;
    EXPECT_LE(MaxDiff(r.output, LocalOutput(all)), 1e-5);
    // AttendUnary on a session: the same path in one message.
    pb::AttendUnaryRequest u;
    *u.mutable_header() =
        SessionReq("", s.session_id(), kN, false, true, "").header;
    u.set_q(full.q);
    pb::AttendUnaryResponse ur;
    grpc::ClientContext uctx;
    ASSERT_TRUE(stub_->AttendUnary(&uctx, u, &ur).ok());
    EXPECT_LE(MaxDiff(ur.output(), LocalOutput(all)), 1e-5);
  }
}

TEST_F(SessionServiceTest, GetSessionReportsItsNumbersAndMetrics) {
  Start(Options());
  const pb::SessionInfo s = MustCreate(pb::METHOD_EXACT);
  EXPECT_EQ(s.session_id().size(), 32u);
  EXPECT_THAT(s.lengths(), ::testing::ElementsAre(0, 0));
  pb::SessionInfo after;
  // Per-sequence counts: 5 tokens to sequence 0, 3 to sequence 1.
  ASSERT_TRUE(AppendKV(stub_.get(), s.session_id(), {5, 3}, pb::DTYPE_FLOAT16,
                       RandomTensor(pb::DTYPE_FLOAT16, 8 * kH * kD, 1),
                       RandomTensor(pb::DTYPE_FLOAT16, 8 * kH * kDv, 2), 64,
                       &after)
                  .ok());
  Reply step = RandomStep(s.session_id(), 3);
  ASSERT_FALSE(step.has_error) << step.message;
  pb::SessionInfo got;
  ASSERT_TRUE(Get(s.session_id(), &got).ok());
  EXPECT_THAT(got.lengths(), ::testing::ElementsAre(6, 4));
  EXPECT_EQ(got.kv_bytes(), uint64_t{10} * kH * (kD + kDv) * 4);
  EXPECT_GE(got.held_bytes(), got.kv_bytes() + got.state_bytes());
  EXPECT_EQ(got.appends(), 2u);
  EXPECT_EQ(got.steps(), 1u);
  EXPECT_EQ(got.shape().heads(), uint32_t{kH});
  EXPECT_EQ(got.shape().dim_v(), uint32_t{kDv});
  EXPECT_EQ(got.settings().method(), pb::METHOD_EXACT);
  EXPECT_EQ(got.limits().kv_block_tokens(), 64u);
  EXPECT_EQ(got.limits().ttl_seconds(), 600);
  EXPECT_GE(got.idle_seconds(), 0);
  EXPECT_EQ(Metric("scatterbrain_sessions_open"), 1);
  EXPECT_EQ(Metric("scatterbrain_session_appends_total"), 2);
  EXPECT_EQ(Metric("scatterbrain_session_kv_bytes"), got.kv_bytes());
  EXPECT_EQ(Metric("scatterbrain_session_step_seconds_count{incremental="
                   "\"false\"}"),
            1);
  const pb::ServerLimits& l = server_->info().limits();
  EXPECT_EQ(l.kv_block_tokens(), 64u);
  EXPECT_EQ(l.max_sessions(), 4096u);
  EXPECT_EQ(l.max_session_bytes(),
            server_->service().memory_budget().limit_bytes() / 2);
  EXPECT_EQ(l.default_session_ttl_seconds(), 600);
}

TEST_F(SessionServiceTest, DeleteFreesThenEverythingIsNotFound) {
  Start(Options());
  const pb::SessionInfo s = MustCreate(pb::METHOD_EXACT);
  pb::SessionInfo after;
  ASSERT_TRUE(AppendRandom(s.session_id(), 4, &after).ok());
  pb::DeleteSessionRequest d;
  d.set_session_id(s.session_id());
  pb::DeleteSessionResponse dr;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->DeleteSession(&ctx, d, &dr).ok());
  }
  EXPECT_EQ(dr.freed_bytes(), after.held_bytes());
  EXPECT_GT(dr.freed_bytes(), 0u);
  EXPECT_EQ(server_->service().memory_budget().reserved_bytes(), 0);
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(stub_->DeleteSession(&ctx, d, &dr).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  EXPECT_EQ(Get(s.session_id(), &after).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(AppendKV(stub_.get(), s.session_id(), {1}, pb::DTYPE_FLOAT32, "",
                     "", 1, &after)
                .error_code(),
            grpc::StatusCode::NOT_FOUND);
  Reply r =
      AttendOnce(stub_.get(),
                 SessionReq("q", s.session_id(), 1, false, false,
                            RandomTensor(pb::DTYPE_FLOAT32, kB * kH * kD, 3)));
  EXPECT_TRUE(r.has_error);
  EXPECT_EQ(r.code, grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(r.message, HasSubstr("header.session.session_id"));
}

TEST_F(SessionServiceTest, AnotherTokenNeverSeesTheSession) {
  ServerOptions o = Options();
  o.security.auth_token_file = testutil::TempPath("session_tokens.txt");
  ASSERT_TRUE(testutil::WriteFile(o.security.auth_token_file,
                                  "tok-owner\ntok-other\n"));
  Start(o);
  const pb::SessionInfo s = MustCreate(pb::METHOD_EXACT, "tok-owner");
  pb::SessionInfo info;
  const std::string k = RandomTensor(pb::DTYPE_FLOAT32, kB * 3 * kH * kD, 1);
  const std::string v = RandomTensor(pb::DTYPE_FLOAT32, kB * 3 * kH * kDv, 2);
  ASSERT_TRUE(AppendKV(stub_.get(), s.session_id(), {3}, pb::DTYPE_FLOAT32, k,
                       v, 4096, &info, "tok-owner")
                  .ok());
  // The other token: NOT_FOUND everywhere, with the message an id that never
  // existed gets.
  const std::string never(32, 'a');
  for (const std::string& id : {s.session_id(), never}) {
    SCOPED_TRACE(id);
    const grpc::Status got = Get(id, &info, "tok-other");
    EXPECT_EQ(got.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(got.error_message(),
              "session_id: no such session (never created, deleted, or "
              "evicted after idling past its TTL)");
    const grpc::Status app = AppendKV(stub_.get(), id, {3}, pb::DTYPE_FLOAT32,
                                      k, v, 4096, &info, "tok-other");
    EXPECT_EQ(app.error_code(), grpc::StatusCode::NOT_FOUND);
    Reply r =
        AttendOnce(stub_.get(),
                   SessionReq("q", id, 1, false, false,
                              RandomTensor(pb::DTYPE_FLOAT32, kB * kH * kD, 3)),
                   "tok-other");
    EXPECT_EQ(r.code, grpc::StatusCode::NOT_FOUND);
    EXPECT_TRUE(r.output.empty());  // never data
    pb::DeleteSessionRequest d;
    d.set_session_id(id);
    pb::DeleteSessionResponse dr;
    grpc::ClientContext dctx;
    testutil::WithToken(&dctx, "tok-other");
    EXPECT_EQ(stub_->DeleteSession(&dctx, d, &dr).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  // No token at all: UNAUTHENTICATED, as every other method.
  pb::SessionInfo none;
  EXPECT_EQ(
      CreateSession(stub_.get(), Settings(pb::METHOD_EXACT), 1, 1, 4, 4, &none)
          .error_code(),
      grpc::StatusCode::UNAUTHENTICATED);
  // The owner's session is untouched.
  ASSERT_TRUE(Get(s.session_id(), &info, "tok-owner").ok());
  EXPECT_THAT(info.lengths(), ::testing::ElementsAre(3, 3));
}

TEST_F(SessionServiceTest, MemoryLimitsAndEvictions) {
  ServerOptions o = Options();
  // One block of 64 tokens per sequence: 2 * 2 * 64 * 16 * 4 = 16 KiB.
  constexpr int64_t kSessionBlocks = int64_t{kB} * kH * 64 * (kD + kDv) * 4;
  o.service.sessions.max_session_bytes = 2 * kSessionBlocks;
  o.service.sessions.default_ttl_s = 30;
  // No sweep by the timer: eviction happens only to make room.
  o.service.timeout_check_interval_ms = 1'000'000;
  o.executor.batcher.max_queue_delay_us = 0;  // the fake clock stands still
  Start(o, &clock_);
  const auto append = [&](const std::string& id, uint32_t n) {
    pb::SessionInfo info;
    return AppendRandom(id, n, &info);
  };

  const pb::SessionInfo a = MustCreate(pb::METHOD_EXACT);
  ASSERT_TRUE(append(a.session_id(), 64).ok());
  const pb::SessionInfo b = MustCreate(pb::METHOD_EXACT);
  ASSERT_TRUE(append(b.session_id(), 64).ok());
  const grpc::Status full = append(b.session_id(), 1);
  EXPECT_EQ(full.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(full.error_message(), HasSubstr("max_session_bytes"));
  // An appending step that does not fit is refused alone.
  Reply r = RandomStep(b.session_id(), 3);
  EXPECT_EQ(r.code, grpc::StatusCode::RESOURCE_EXHAUSTED);
  // `a` idles past its TTL, `b` does not: a's bytes make room for b.
  clock_.AdvanceMicros(20'000'000);
  Reply keep =
      AttendOnce(stub_.get(),
                 SessionReq("k", b.session_id(), 1, false, false,
                            RandomTensor(pb::DTYPE_FLOAT32, kB * kH * kD, 6)));
  ASSERT_FALSE(keep.has_error) << keep.message;
  clock_.AdvanceMicros(15'000'000);
  ASSERT_TRUE(append(b.session_id(), 1).ok());
  EXPECT_EQ(Metric("scatterbrain_session_evictions_total{reason=\"memory\"}"),
            1);
  pb::SessionInfo info;
  EXPECT_EQ(Get(a.session_id(), &info).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(SessionServiceTest, TimerSweepsSessionsIdlePastTheirTtl) {
  ServerOptions o = Options();
  o.service.sessions.default_ttl_s = 30;
  o.service.timeout_check_interval_ms = 10;
  Start(o, &clock_);
  const pb::SessionInfo s = MustCreate(pb::METHOD_EXACT);
  const auto exists = [&] {
    pb::SessionInfo info;
    return Get(s.session_id(), &info).ok();
  };
  clock_.AdvanceMicros(29'000'000);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_TRUE(exists());  // a look is not a use, but 29 s < 30 s
  clock_.AdvanceMicros(1'000'000);
  // The timer runs every 10 ms of real time; polled for up to 10 s.
  EXPECT_TRUE(Eventually([&] { return !exists(); }));
  EXPECT_EQ(Metric("scatterbrain_session_evictions_total{reason=\"ttl\"}"), 1);
  EXPECT_EQ(Metric("scatterbrain_sessions_open"), 0);
}

// 4 streams x 20 appending steps on one session: every step's append and
// attend happen as one (its reported length is unique), the final length
// is the sum, and each step's output is exact attention over the keys
// stored before it, in the order the lengths say.
TEST_F(SessionServiceTest, OneSessionManyStreamsAtOnce) {
  Start(Options());
  pb::SessionInfo s;
  pb::MethodSettings settings = Settings(pb::METHOD_EXACT);
  ASSERT_TRUE(CreateSession(stub_.get(), settings, 1, kH, kD, kDv, &s).ok());
  constexpr int kStreams = 4, kSteps = 20, kTotal = kStreams * kSteps;
  struct Step {
    std::string q, k, v, out;
    int64_t length = 0;
  };
  std::vector<Step> steps(kTotal);
  std::vector<std::thread> threads;
  for (int t = 0; t < kStreams; ++t) {
    threads.emplace_back([&, t] {
      auto stub =
          pb::AttentionService::NewStub(testutil::OwnChannel(server_->port()));
      grpc::ClientContext ctx;
      testutil::Stream stream = stub->Attend(&ctx);
      for (int i = 0; i < kSteps; ++i) {
        Step& st = steps[t * kSteps + i];
        const uint64_t seed = 1000 + 3 * (t * kSteps + i);
        st.q = RandomTensor(pb::DTYPE_FLOAT32, kH * kD, seed);
        st.k = RandomTensor(pb::DTYPE_FLOAT32, kH * kD, seed + 1);
        st.v = RandomTensor(pb::DTYPE_FLOAT32, kH * kDv, seed + 2);
        const std::string id = absl::StrCat("t", t, "-", i);
        testutil::SendRequest(
            stream.get(),
            SessionReq(id, s.session_id(), 1, true, false, st.q, st.k, st.v),
            1 << 16);
        const Reply r = testutil::ReadUntilDone(stream.get(), {id})[id];
        EXPECT_FALSE(r.has_error) << r.message;
        st.out = r.output;
        if (r.header.stats().session_lengths_size() == 1) {
          st.length = r.header.stats().session_lengths(0);
        }
      }
      stream->WritesDone();
      EXPECT_TRUE(stream->Finish().ok());
    });
  }
  for (std::thread& t : threads) t.join();
  std::vector<const Step*> by_length(kTotal + 1, nullptr);
  for (const Step& st : steps) {
    ASSERT_GE(st.length, 1);
    ASSERT_LE(st.length, kTotal);
    ASSERT_EQ(by_length[st.length], nullptr) << "length " << st.length;
    by_length[st.length] = &st;
  }
  pb::SessionInfo info;
  ASSERT_TRUE(Get(s.session_id(), &info).ok());
  EXPECT_THAT(info.lengths(), ::testing::ElementsAre(kTotal));
  // K/V as stored: [heads, length, dim] from the steps in length order.
  for (int len = 1; len <= kTotal; ++len) {
    Req one = MakeReq("one", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, kH, 1, len,
                      kD, kDv, 0);
    one.q = by_length[len]->q;
    one.k.clear();
    one.v.clear();
    for (int h = 0; h < kH; ++h) {
      for (int j = 1; j <= len; ++j) {
        one.k += by_length[j]->k.substr(size_t(h) * kD * 4, kD * 4);
        one.v += by_length[j]->v.substr(size_t(h) * kDv * 4, kDv * 4);
      }
    }
    EXPECT_LE(MaxDiff(by_length[len]->out, LocalOutput(one)), 1e-5)
        << "length " << len;
  }
}

TEST_F(SessionServiceTest, CancelledAppendLeavesTheSessionAsItWas) {
  Start(Options());
  const pb::SessionInfo s = MustCreate(pb::METHOD_EXACT);
  pb::SessionInfo info;
  ASSERT_TRUE(AppendRandom(s.session_id(), 2, &info).ok());
  {
    grpc::ClientContext ctx;
    pb::SessionInfo out;
    auto w = stub_->AppendKV(&ctx, &out);
    pb::AppendKVRequest m;
    m.mutable_header()->set_session_id(s.session_id());
    m.mutable_header()->set_dtype(pb::DTYPE_FLOAT32);
    m.mutable_header()->add_counts(16);
    ASSERT_TRUE(w->Write(m));
    const std::string k = RandomTensor(pb::DTYPE_FLOAT32, kB * 16 * kH * kD, 3);
    for (size_t at = 0; at < k.size() / 2; at += 256) {
      pb::AppendKVRequest c;
      c.mutable_chunk()->set_tensor(pb::TENSOR_NAME_K);
      c.mutable_chunk()->set_offset(at);
      c.mutable_chunk()->set_data(k.substr(at, 256));
      ASSERT_TRUE(w->Write(c));
    }
    ctx.TryCancel();
    EXPECT_EQ(w->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // Its staging memory goes back (the call ends on the server shortly
  // after the client's cancel).
  EXPECT_TRUE(Eventually([&] {
    return server_->service().memory_budget().reserved_bytes() ==
           static_cast<int64_t>(info.held_bytes());
  }));
  ASSERT_TRUE(Get(s.session_id(), &info).ok());
  EXPECT_THAT(info.lengths(), ::testing::ElementsAre(2, 2));
  EXPECT_EQ(info.appends(), 1u);
  // And it goes on working.
  Reply r = RandomStep(s.session_id(), 4);
  ASSERT_FALSE(r.has_error) << r.message;
  EXPECT_THAT(r.header.stats().session_lengths(), ::testing::ElementsAre(3, 3));
}

TEST_F(SessionServiceTest, MalformedSessionRequestsNameTheField) {
  Start(Options());
  const pb::SessionInfo s = MustCreate(pb::METHOD_EXACT);
  const std::string q = RandomTensor(pb::DTYPE_FLOAT32, kB * kH * kD, 1);
  const struct {
    const char* what;
    std::function<void(pb::RequestHeader*)> edit;
    grpc::StatusCode code;
    const char* field;
  } attends[] = {
      {"settings",
       [](pb::RequestHeader* h) {
         h->mutable_settings()->set_method(pb::METHOD_EXACT);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "header.settings:"},
      {"seq_k", [](pb::RequestHeader* h) { h->mutable_shape()->set_seq_k(4); },
       grpc::StatusCode::INVALID_ARGUMENT, "header.shape.seq_k:"},
      {"key_lengths", [](pb::RequestHeader* h) { h->add_key_lengths(1); },
       grpc::StatusCode::INVALID_ARGUMENT, "header.key_lengths:"},
      {"heads", [](pb::RequestHeader* h) { h->mutable_shape()->set_heads(3); },
       grpc::StatusCode::INVALID_ARGUMENT, "header.shape.heads:"},
      {"seq_q", [](pb::RequestHeader* h) { h->mutable_shape()->set_seq_q(0); },
       grpc::StatusCode::INVALID_ARGUMENT, "header.shape.seq_q:"},
      {"no id",
       [](pb::RequestHeader* h) { h->mutable_session()->clear_session_id(); },
       grpc::StatusCode::INVALID_ARGUMENT, "header.session.session_id:"},
      {"unknown id",
       [](pb::RequestHeader* h) {
         h->mutable_session()->set_session_id("feed");
       },
       grpc::StatusCode::NOT_FOUND, "header.session.session_id:"},
      {"dtype", [](pb::RequestHeader* h) { h->set_dtype(pb::DType(77)); },
       grpc::StatusCode::INVALID_ARGUMENT, "header.dtype:"},
  };
  for (const auto& c : attends) {
    SCOPED_TRACE(c.what);
    Req r = SessionReq("m", s.session_id(), 1, false, false, q);
    c.edit(&r.header);
    if (r.header.shape().seq_q() == 0) r.q.clear();
    const Reply got = AttendOnce(stub_.get(), r);
    EXPECT_EQ(got.code, c.code) << got.message;
    EXPECT_THAT(got.message, HasSubstr(c.field));
  }
  // AppendKV.
  pb::SessionInfo info;
  const auto append_status = [&](const std::vector<pb::AppendKVRequest>& ms) {
    grpc::ClientContext ctx;
    auto w = stub_->AppendKV(&ctx, &info);
    for (const pb::AppendKVRequest& m : ms) {
      if (!w->Write(m)) break;
    }
    w->WritesDone();
    return w->Finish();
  };
  pb::AppendKVRequest header;
  header.mutable_header()->set_session_id(s.session_id());
  header.mutable_header()->set_dtype(pb::DTYPE_FLOAT32);
  header.mutable_header()->add_counts(1);
  const auto chunk = [](pb::TensorName t, uint64_t offset, size_t bytes) {
    pb::AppendKVRequest m;
    m.mutable_chunk()->set_tensor(t);
    m.mutable_chunk()->set_offset(offset);
    m.mutable_chunk()->set_data(std::string(bytes, '\0'));
    return m;
  };
  pb::AppendKVRequest three_counts = header;
  three_counts.mutable_header()->add_counts(1);
  three_counts.mutable_header()->add_counts(1);
  pb::AppendKVRequest bad_dtype = header;
  bad_dtype.mutable_header()->set_dtype(pb::DTYPE_UNSPECIFIED);
  const int64_t k_bytes = kB * kH * kD * 4;
  const struct {
    const char* what;
    std::vector<pb::AppendKVRequest> messages;
    const char* field;
  } appends[] = {
      {"counts", {three_counts}, "header.counts:"},
      {"dtype", {bad_dtype}, "header.dtype:"},
      {"chunk first",
       {chunk(pb::TENSOR_NAME_K, 0, 4)},
       "AppendKVRequest.header:"},
      {"tensor q", {header, chunk(pb::TENSOR_NAME_Q, 0, 4)}, "chunk.tensor:"},
      {"offset", {header, chunk(pb::TENSOR_NAME_K, 4, 4)}, "chunk.offset:"},
      {"too long",
       {header, chunk(pb::TENSOR_NAME_K, 0, k_bytes + 4)},
       "chunk.data:"},
      {"short", {header, chunk(pb::TENSOR_NAME_K, 0, k_bytes)}, "chunk:"},
      {"none", {}, "AppendKVRequest.header:"},
  };
  for (const auto& c : appends) {
    SCOPED_TRACE(c.what);
    const grpc::Status st = append_status(c.messages);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr(c.field));
  }
  // CreateSession.
  pb::MethodSettings smyrf = Settings(pb::METHOD_LSH);
  smyrf.set_lsh_transform(pb::LSH_TRANSFORM_SMYRF);
  const struct {
    const char* what;
    pb::MethodSettings settings;
    int dim;
    const char* field;
  } creates[] = {
      {"method", pb::MethodSettings(), kD, "settings.method:"},
      {"dim", Settings(pb::METHOD_EXACT), 0, "dim:"},
      {"smyrf", smyrf, kD, "settings.lsh_transform:"},
  };
  for (const auto& c : creates) {
    SCOPED_TRACE(c.what);
    const grpc::Status st =
        CreateSession(stub_.get(), c.settings, 1, 1, c.dim, 0, &info);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr(c.field));
  }
  EXPECT_THAT(CreateSession(stub_.get(), Settings(pb::METHOD_EXACT), 1, 1, kD,
                            0, &info, "", pb::DType(9))
                  .error_message(),
              HasSubstr("kv_dtype:"));
  // The session is as it was.
  ASSERT_TRUE(Get(s.session_id(), &info).ok());
  EXPECT_THAT(info.lengths(), ::testing::ElementsAre(0, 0));
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
