// Tests of the C++ client's Session (client/cpp/session.h) and the CLI's
// `bench --decode` against a real scatterbrain_server process on loopback
// (--backend=cpu): appends and attends equal the local CPU computation on
// the same keys, decode steps equal one-shot calls, lengths and bytes are
// reported, closing deletes on the server, errors arrive as statuses.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/cpp/client.h"
#include "client/cpp/session.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/params.h"
#include "tests/testutil/cpu_attention.h"
#include "tests/testutil/files.h"
#include "tests/testutil/process.h"
#include "tests/testutil/random.h"
#include "tests/testutil/server_process.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace {

using client::AttendResult;
using client::AttentionClient;
using client::Session;
using client::SessionSpec;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testutil::IsOk;
using testutil::RandomNormal;
using testutil::ServerProcess;
using testutil::StatusIs;

constexpr int64_t kBatch = 2, kHeads = 2, kDim = 16, kDimV = 8;

// What the test appended, per sequence and head, to compute locally.
struct Stored {
  // [batch][heads] -> token-major keys (dim each) and values (dim_v each).
  std::vector<std::vector<std::vector<float>>> k, v;
  Stored() : k(kBatch, std::vector<std::vector<float>>(kHeads)), v(k) {}

  // Adds x = [batch, heads, n, d] (equal counts) to `to`.
  static void AddEqual(const std::vector<float>& x, int64_t n, int64_t d,
                       std::vector<std::vector<std::vector<float>>>* to) {
    for (int64_t b = 0; b < kBatch; ++b) {
      for (int64_t h = 0; h < kHeads; ++h) {
        const float* p = x.data() + ((b * kHeads + h) * n) * d;
        (*to)[b][h].insert((*to)[b][h].end(), p, p + n * d);
      }
    }
  }
  int64_t length(int64_t b) const {
    return static_cast<int64_t>(k[b][0].size()) / kDim;
  }
};

// Exact attention of q ([batch, heads, seq_q, dim]) on `s`, each sequence
// causal relative to its own length (row i sees j <= L_b - seq_q + i), or
// every key with see_all: what a session's attend computes.
std::vector<float> LocalExact(const Stored& s, const std::vector<float>& q,
                              int64_t seq_q, bool see_all) {
  std::vector<float> out(kBatch * kHeads * seq_q * kDimV);
  for (int64_t b = 0; b < kBatch; ++b) {
    for (int64_t h = 0; h < kHeads; ++h) {
      AttentionParams p;
      p.method = Method::kExact;
      p.causal = !see_all;
      p.batch = p.heads = 1;
      p.seq_q = seq_q;
      p.seq_k = s.length(b);
      p.dim = kDim;
      p.dim_v = kDimV;
      p.q = q.data() + (b * kHeads + h) * seq_q * kDim;
      p.k = s.k[b][h].data();
      p.v = s.v[b][h].data();
      const std::vector<float> o = testutil::CpuAttention(p);
      std::copy(o.begin(), o.end(),
                out.begin() + (b * kHeads + h) * seq_q * kDimV);
    }
  }
  return out;
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    m = std::max(m, static_cast<double>(std::fabs(a[i] - b[i])));
  }
  return m;
}

// One server for the whole binary (a gtest environment, set up before the
// first test): --backend=cpu so outputs compare with the local CPU backend,
// no batching delay so a session's steps run one after the other.
class ServerEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    testutil::ServerProcessOptions o;
    o.flags = {"--backend=cpu", "--max_queue_delay_us=0"};
    o.log_name = "session_client_test_server";
    start_status_ = server_.Start(o);
  }
  void TearDown() override {
    if (start_status_.ok()) {
      EXPECT_THAT(server_.Stop(), IsOk());
    }
  }
  static ServerEnvironment* Get() { return env_; }
  const absl::Status& start_status() const { return start_status_; }
  ServerProcess& server() { return server_; }

 private:
  static ServerEnvironment* const env_;
  ServerProcess server_;
  absl::Status start_status_;
};

ServerEnvironment* const ServerEnvironment::env_ =
    static_cast<ServerEnvironment*>(
        ::testing::AddGlobalTestEnvironment(new ServerEnvironment));

class SessionClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_THAT(ServerEnvironment::Get()->start_status(), IsOk());
    server_ = &ServerEnvironment::Get()->server();
    client_ = NewClient();
  }

  // A client of the server; `chunk_bytes` per upload message.
  std::unique_ptr<AttentionClient> NewClient(int64_t chunk_bytes = 1 << 20) {
    client::ClientOptions o;
    o.target = server_->target();
    o.deadline = absl::Seconds(60);
    o.chunk_bytes = chunk_bytes;
    absl::StatusOr<std::unique_ptr<AttentionClient>> c =
        AttentionClient::Create(o);
    EXPECT_THAT(c.status(), IsOk());
    return c.ok() ? *std::move(c) : nullptr;
  }

  static SessionSpec Spec(v1::Method method) {
    SessionSpec spec;
    spec.settings.set_method(method);
    spec.settings.set_num_features(16);
    spec.settings.set_bucket_size(8);
    spec.settings.set_window(8);
    spec.settings.set_seed(11);
    spec.shape = {kBatch, kHeads, kDim, kDimV};
    return spec;
  }

  // GetSession straight on the stub (a session the test no longer holds).
  grpc::StatusCode RawGet(const std::string& id) {
    auto stub = v1::AttentionService::NewStub(client_->channel());
    grpc::ClientContext ctx;
    v1::GetSessionRequest req;
    req.set_session_id(id);
    v1::SessionInfo info;
    return stub->GetSession(&ctx, req, &info).error_code();
  }

  // Appends n random tokens to every sequence, recording them in *s.
  void AppendEqual(Session* session, Stored* s, int64_t n, uint32_t seed) {
    const std::vector<float> k = RandomNormal(kBatch * kHeads * n * kDim, seed);
    const std::vector<float> v =
        RandomNormal(kBatch * kHeads * n * kDimV, seed + 1);
    absl::StatusOr<v1::SessionInfo> info = session->Append(n, k, v);
    ASSERT_THAT(info.status(), IsOk());
    Stored::AddEqual(k, n, kDim, &s->k);
    Stored::AddEqual(v, n, kDimV, &s->v);
    EXPECT_THAT(info->lengths(), ElementsAre(s->length(0), s->length(1)));
  }

  ServerProcess* server_ = nullptr;
  std::unique_ptr<AttentionClient> client_;
};

TEST_F(SessionClientTest, AppendsAndAttendsEqualTheLocalComputation) {
  // 100-byte chunks: every append and attend travels in many messages.
  std::unique_ptr<AttentionClient> c = NewClient(/*chunk_bytes=*/100);
  absl::StatusOr<Session> s = Session::Create(*c, Spec(v1::METHOD_EXACT));
  ASSERT_THAT(s.status(), IsOk());
  EXPECT_EQ(s->id().size(), 32u);
  EXPECT_EQ(s->shape().dim_v, kDimV);
  EXPECT_GT(s->created().limits().kv_block_tokens(), 0u);
  Stored st;
  AppendEqual(&*s, &st, 20, 1);
  // Per-sequence counts: 3 tokens to sequence 0, 7 to sequence 1.
  const int64_t counts[2] = {3, 7};
  std::vector<float> k, v;
  for (int64_t b = 0; b < kBatch; ++b) {
    const std::vector<float> kb =
        RandomNormal(kHeads * counts[b] * kDim, 10 + b);
    const std::vector<float> vb =
        RandomNormal(kHeads * counts[b] * kDimV, 20 + b);
    k.insert(k.end(), kb.begin(), kb.end());
    v.insert(v.end(), vb.begin(), vb.end());
    for (int64_t h = 0; h < kHeads; ++h) {
      st.k[b][h].insert(st.k[b][h].end(), kb.begin() + h * counts[b] * kDim,
                        kb.begin() + (h + 1) * counts[b] * kDim);
      st.v[b][h].insert(st.v[b][h].end(), vb.begin() + h * counts[b] * kDimV,
                        vb.begin() + (h + 1) * counts[b] * kDimV);
    }
  }
  absl::StatusOr<v1::SessionInfo> info = s->Append(counts, k, v);
  ASSERT_THAT(info.status(), IsOk());
  EXPECT_THAT(info->lengths(), ElementsAre(23, 27));

  for (bool see_all : {false, true}) {
    SCOPED_TRACE(see_all ? "see_all" : "causal");
    const int64_t seq_q = 5;
    const std::vector<float> q =
        RandomNormal(kBatch * kHeads * seq_q * kDim, 30);
    absl::StatusOr<AttendResult> r = s->Attend(q, see_all);
    ASSERT_THAT(r.status(), IsOk());
    EXPECT_LT(MaxAbsDiff(r->out, LocalExact(st, q, seq_q, see_all)), 1e-5);
    EXPECT_THAT(r->stats.session_lengths, ElementsAre(23, 27));
    EXPECT_EQ(r->shape.seq_q, seq_q);
  }
  // An attend appends nothing.
  info = s->Info();
  ASSERT_THAT(info.status(), IsOk());
  EXPECT_THAT(info->lengths(), ElementsAre(23, 27));
  EXPECT_EQ(info->kv_bytes(), (23 + 27) * kHeads * (kDim + kDimV) * 4);
  EXPECT_EQ(info->appends(), 2u);
  EXPECT_GE(info->held_bytes(), info->kv_bytes());
}

TEST_F(SessionClientTest, DecodeStepsEqualOneShotCausalAttention) {
  absl::StatusOr<Session> s = Session::Create(*client_, Spec(v1::METHOD_EXACT));
  ASSERT_THAT(s.status(), IsOk());
  Stored st;
  AppendEqual(&*s, &st, 40, 2);
  const client::WireBytes before = s->wire_bytes();
  const int64_t steps = 6;
  for (int64_t t = 0; t < steps; ++t) {
    SCOPED_TRACE(absl::StrCat("step ", t));
    const std::vector<float> q = RandomNormal(kBatch * kHeads * kDim, 100 + t);
    const std::vector<float> k = RandomNormal(kBatch * kHeads * kDim, 200 + t);
    const std::vector<float> v = RandomNormal(kBatch * kHeads * kDimV, 300 + t);
    absl::StatusOr<AttendResult> r = s->Step(q, k, v);
    ASSERT_THAT(r.status(), IsOk());
    Stored::AddEqual(k, 1, kDim, &st.k);
    Stored::AddEqual(v, 1, kDimV, &st.v);
    // One query row at the end: it sees every key, its own included.
    EXPECT_LT(MaxAbsDiff(r->out, LocalExact(st, q, 1, false)), 1e-5);
    EXPECT_THAT(r->stats.session_lengths, ElementsAre(41 + t, 41 + t));
    EXPECT_GT(r->stats.compute_seconds, 0);
  }
  // A step is one small message each way: the token's q, k, v out (fp32),
  // its output back, plus headers (the bound leaves 512 bytes for them).
  const client::WireBytes after = s->wire_bytes();
  const int64_t payload_out = kBatch * kHeads * (2 * kDim + kDimV) * 4;
  const int64_t payload_in = kBatch * kHeads * kDimV * 4;
  EXPECT_GE(after.sent - before.sent, steps * payload_out);
  EXPECT_LE(after.sent - before.sent, steps * (payload_out + 512));
  EXPECT_GE(after.received - before.received, steps * payload_in);
  EXPECT_LE(after.received - before.received, steps * (payload_in + 512));
  absl::StatusOr<v1::SessionInfo> info = s->Info();
  ASSERT_THAT(info.status(), IsOk());
  EXPECT_THAT(info->lengths(), ElementsAre(46, 46));
  EXPECT_EQ(info->steps(), static_cast<uint64_t>(steps));
}

TEST_F(SessionClientTest, PerformerAndLocalStepsEqualOneShotCalls) {
  for (v1::Method method : {v1::METHOD_PERFORMER, v1::METHOD_LOCAL}) {
    SCOPED_TRACE(v1::Method_Name(method));
    SessionSpec spec = Spec(method);
    absl::StatusOr<Session> s = Session::Create(*client_, spec);
    ASSERT_THAT(s.status(), IsOk());
    Stored st;
    AppendEqual(&*s, &st, 30, 3);
    for (int64_t t = 0; t < 3; ++t) {
      const std::vector<float> q =
          RandomNormal(kBatch * kHeads * kDim, 400 + t);
      const std::vector<float> k =
          RandomNormal(kBatch * kHeads * kDim, 500 + t);
      const std::vector<float> v =
          RandomNormal(kBatch * kHeads * kDimV, 600 + t);
      absl::StatusOr<AttendResult> r = s->Step(q, k, v);
      ASSERT_THAT(r.status(), IsOk());
      EXPECT_TRUE(r->stats.incremental);
      Stored::AddEqual(k, 1, kDim, &st.k);
      Stored::AddEqual(v, 1, kDimV, &st.v);
      // The one-shot call on the server: the whole K/V, same settings.
      const int64_t len = st.length(0);
      std::vector<float> kk, vv;
      for (int64_t b = 0; b < kBatch; ++b) {
        for (int64_t h = 0; h < kHeads; ++h) {
          kk.insert(kk.end(), st.k[b][h].begin(), st.k[b][h].end());
          vv.insert(vv.end(), st.v[b][h].begin(), st.v[b][h].end());
        }
      }
      client::AttendInput in;
      in.q = q;
      in.k = kk;
      in.v = vv;
      in.shape = {kBatch, kHeads, 1, len, kDim, kDimV};
      in.settings = spec.settings;
      in.settings.set_causal(true);
      absl::StatusOr<AttendResult> one = client_->Attend(in);
      ASSERT_THAT(one.status(), IsOk());
      EXPECT_LT(MaxAbsDiff(r->out, one->out), 1e-5) << "step " << t;
    }
  }
}

TEST_F(SessionClientTest, CloseDeletesOnTheServerAndTheDestructorCloses) {
  std::string id;
  {
    absl::StatusOr<Session> s =
        Session::Create(*client_, Spec(v1::METHOD_EXACT));
    ASSERT_THAT(s.status(), IsOk());
    Stored st;
    AppendEqual(&*s, &st, 5, 4);
    id = s->id();
    EXPECT_EQ(RawGet(id), grpc::StatusCode::OK);
    absl::StatusOr<int64_t> freed = s->Close();
    ASSERT_THAT(freed.status(), IsOk());
    EXPECT_GT(*freed, 0);
    EXPECT_TRUE(s->closed());
    EXPECT_EQ(RawGet(id), grpc::StatusCode::NOT_FOUND);
    // Every call on a closed session is refused here, nothing is sent.
    const std::vector<float> q = RandomNormal(kBatch * kHeads * kDim, 5);
    EXPECT_THAT(s->Attend(q).status(),
                StatusIs(absl::StatusCode::kFailedPrecondition));
    EXPECT_THAT(s->Info().status(),
                StatusIs(absl::StatusCode::kFailedPrecondition));
    EXPECT_THAT(s->Close().status(),
                StatusIs(absl::StatusCode::kFailedPrecondition));
  }
  {
    absl::StatusOr<Session> s =
        Session::Create(*client_, Spec(v1::METHOD_EXACT));
    ASSERT_THAT(s.status(), IsOk());
    id = s->id();
    // Moved: the new owner holds it, the old one is closed.
    Session moved = *std::move(s);
    EXPECT_TRUE(s->closed());  // NOLINT(bugprone-use-after-move): on purpose
    EXPECT_EQ(moved.id(), id);
    EXPECT_THAT(moved.Info().status(), IsOk());
  }
  // The destructor deleted it.
  EXPECT_EQ(RawGet(id), grpc::StatusCode::NOT_FOUND);
}

TEST_F(SessionClientTest, ErrorsArriveAsStatuses) {
  absl::StatusOr<Session> s = Session::Create(*client_, Spec(v1::METHOD_EXACT));
  ASSERT_THAT(s.status(), IsOk());
  // Sizes that do not match the shape: refused here.
  EXPECT_THAT(s->Append(2, RandomNormal(7, 1), RandomNormal(7, 2)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("k:")));
  const int64_t bad_counts[3] = {1, 1, 1};
  EXPECT_THAT(
      s->Append(bad_counts, RandomNormal(10, 1), RandomNormal(10, 2)).status(),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("counts")));
  EXPECT_THAT(s->Attend(RandomNormal(kDim + 1, 3)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("q:")));
  EXPECT_THAT(s->Step(RandomNormal(kBatch * kHeads * kDim, 1),
                      RandomNormal(kDim, 2), RandomNormal(kDimV, 3))
                  .status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("k:")));
  // The server's own: the SMYRF transform cannot make a session.
  SessionSpec smyrf = Spec(v1::METHOD_LSH);
  smyrf.settings.set_lsh_transform(v1::LSH_TRANSFORM_SMYRF);
  EXPECT_THAT(Session::Create(*client_, smyrf).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  SessionSpec no_dim = Spec(v1::METHOD_EXACT);
  no_dim.shape.dim = 0;
  EXPECT_THAT(Session::Create(*client_, no_dim).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // Deleted behind its back: the server's NOT_FOUND, for attends and
  // appends alike.
  {
    auto stub = v1::AttentionService::NewStub(client_->channel());
    grpc::ClientContext ctx;
    v1::DeleteSessionRequest req;
    req.set_session_id(s->id());
    v1::DeleteSessionResponse resp;
    ASSERT_TRUE(stub->DeleteSession(&ctx, req, &resp).ok());
  }
  EXPECT_THAT(s->Attend(RandomNormal(kBatch * kHeads * kDim, 4)).status(),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(s->Append(1, RandomNormal(kBatch * kHeads * kDim, 5),
                        RandomNormal(kBatch * kHeads * kDimV, 6))
                  .status(),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(s->Info().status(), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(SessionClientTest, HalfPrecisionOnTheWireAndInStorage) {
  SessionSpec spec = Spec(v1::METHOD_EXACT);
  spec.dtype = v1::DTYPE_BFLOAT16;
  spec.kv_dtype = v1::DTYPE_FLOAT16;
  absl::StatusOr<Session> s = Session::Create(*client_, spec);
  ASSERT_THAT(s.status(), IsOk());
  EXPECT_EQ(s->created().kv_dtype(), v1::DTYPE_FLOAT16);
  Stored st;
  AppendEqual(&*s, &st, 16, 6);
  const std::vector<float> q = RandomNormal(kBatch * kHeads * 2 * kDim, 7);
  absl::StatusOr<AttendResult> r = s->Attend(q);
  ASSERT_THAT(r.status(), IsOk());
  // bfloat16 keeps 8 bits of mantissa: outputs of N(0, 1) inputs within
  // a few hundredths.
  EXPECT_LT(MaxAbsDiff(r->out, LocalExact(st, q, 2, false)), 0.05);
  absl::StatusOr<v1::SessionInfo> info = s->Info();
  ASSERT_THAT(info.status(), IsOk());
  EXPECT_EQ(info->kv_bytes(), 2 * 16 * kHeads * (kDim + kDimV) * 2);
}

// --- the CLI's bench --decode
// -------------------------------------------------

TEST_F(SessionClientTest, CliDecodeBenchReportsAndMatchesResend) {
  testutil::ScratchDir dir("session_cli");
  ASSERT_TRUE(dir.ok());
  const testutil::CommandResult r = testutil::RunCommand(
      {testutil::BinDir() + "/scatterbrain_cli", "bench", "--decode",
       "--server=" + server_->target(), "--context=100", "--steps=8",
       "--resend_steps=4", "--prefill_chunk=30", "--heads=2", "--dim=16",
       "--method=exact", "--compare_method=performer"},
      dir.path());
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  for (const char* field :
       {"session prefill: 100 tokens in 4 appends", "session: 8 steps",
        "session performer: 8 steps", "resend K/V: 4 steps",
        "p50=", "p90=", "p99=", "server compute p50=",
        "bytes/step sent+received=", "tokens/s=", "memory: held",
        "| bytes sent+received |", "| latency p50 (ms) |", "| tokens/s |"}) {
    EXPECT_THAT(r.out, HasSubstr(field));
  }
  // Exact decode on the session and exact attention re-sending K/V are
  // the same computation.
  const std::string key = "max abs diff ";
  const size_t at = r.out.find(key);
  ASSERT_NE(at, std::string::npos) << r.out;
  double diff = 1;
  ASSERT_TRUE(absl::SimpleAtod(
      r.out.substr(at + key.size(),
                   r.out.find(' ', at + key.size()) - (at + key.size())),
      &diff));
  EXPECT_LT(diff, 1e-5) << r.out;

  // Bad flags: exit 2 with one error line.
  const testutil::CommandResult bad = testutil::RunCommand(
      {testutil::BinDir() + "/scatterbrain_cli", "bench", "--decode",
       "--server=" + server_->target(), "--compare_method=fast"},
      dir.path());
  EXPECT_EQ(bad.code, 2);
  EXPECT_THAT(bad.err, HasSubstr("--compare_method"));
}

}  // namespace
}  // namespace scatterbrain
