// Tests of the C++ client (client/cpp) and the CLI's server modes against a
// real scatterbrain_server process on loopback (spawned from build/bin, next
// to this test binary, on free ports, --backend=cpu so outputs can be
// compared bit for bit with the local CPU backend), plus the client's pure
// helpers (dtype conversions, targets) without a server.
#include "client/cpp/client.h"

#include <cmath>
#include <cstdint>
#include <future>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/cli/npy.h"
#include "common/dtype.h"
#include "common/float16.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/params.h"
#include "proto/convert/settings.h"
#include "proto/convert/wire.h"
#include "server/proto_convert.h"
#include "tests/testutil/cpu_attention.h"
#include "tests/testutil/files.h"
#include "tests/testutil/net.h"
#include "tests/testutil/process.h"
#include "tests/testutil/random.h"
#include "tests/testutil/server_process.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace {

using client::AttendInput;
using client::AttendResult;
using client::AttentionClient;
using ::testing::HasSubstr;
using testutil::BinDir;
using testutil::Exists;
using testutil::FreePort;
using testutil::IsOk;
using testutil::RandomNormal;
using testutil::ReadFile;
using testutil::ServerProcess;
using testutil::StatusIs;

// --- helpers
// ------------------------------------------------------------------

// Owned inputs of one request plus the matching AttendInput.
struct Qkv {
  client::TensorShape shape;
  std::vector<float> q, k, v;

  static Qkv Make(int64_t batch, int64_t heads, int64_t seq_q, int64_t seq_k,
                  int64_t dim, uint32_t seed) {
    Qkv t;
    t.shape = {batch, heads, seq_q, seq_k, dim, dim};
    t.q = RandomNormal(t.shape.q_elements(), seed);
    t.k = RandomNormal(t.shape.k_elements(), seed + 1000);
    t.v = RandomNormal(t.shape.v_elements(), seed + 2000);
    return t;
  }

  AttendInput Input(v1::Method method) const {
    AttendInput in;
    in.q = q;
    in.k = k;
    in.v = v;
    in.shape = shape;
    in.settings.set_method(method);
    in.settings.set_num_features(16);
    in.settings.set_bucket_size(8);
    in.settings.set_window(8);
    in.settings.set_seed(7);
    return in;
  }
};

// The same computation on the local CPU backend (the CLI's local mode).
std::vector<float> Local(const AttendInput& in,
                         const std::vector<int32_t>& key_lengths = {}) {
  AttentionParams p;
  // As the server maps them (its default for what the request leaves
  // unset).
  const absl::Status mapped = server::RequestSettingsToParams(
      in.settings, server::RequestDefaults(), "settings", &p);
  EXPECT_TRUE(mapped.ok()) << mapped;
  SetShape(in.shape, p);
  p.q = in.q.data();
  p.k = in.k.data();
  p.v = in.v.data();
  p.key_lengths = key_lengths.empty() ? nullptr : key_lengths.data();
  return testutil::CpuAttention(p);
}

// --- the server process
// -------------------------------------------------------

class ClientServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess;
    testutil::ServerProcessOptions o;
    o.flags = {"--backend=cpu", "--drain_timeout_s=10"};
    o.log_name = "client_test_server";
    o.start_timeout = absl::Seconds(30);
    const absl::Status st = server_->Start(o);
    if (!st.ok()) {
      start_error_ = new std::string(st.ToString());
      delete server_;
      server_ = nullptr;
    }
  }
  static void TearDownTestSuite() {
    if (server_ != nullptr) {
      EXPECT_THAT(server_->Stop(absl::Seconds(20)), IsOk())
          << "the server did not exit 0 on SIGTERM";
      delete server_;
      server_ = nullptr;
    }
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr) << (start_error_ ? *start_error_ : "");
    client_ = NewClient();
  }

  std::unique_ptr<AttentionClient> NewClient(int64_t chunk_bytes = 1 << 20) {
    client::ClientOptions o;
    o.target = server_->target();
    o.chunk_bytes = chunk_bytes;
    o.deadline = absl::Seconds(60);
    auto c = AttentionClient::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }

  static ServerProcess* server_;
  static std::string* start_error_;
  std::unique_ptr<AttentionClient> client_;
};

ServerProcess* ClientServerTest::server_ = nullptr;
std::string* ClientServerTest::start_error_ = nullptr;

// --- client against the server
// ------------------------------------------------

TEST_F(ClientServerTest, HealthAndInfo) {
  auto h = client_->Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, client::ServingStatus::kServing);
  auto info = client_->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_FALSE(info->version().empty());
  EXPECT_EQ(info->backend(), "cpu");
  EXPECT_GT(info->limits().max_request_bytes(), 0u);
  EXPECT_GT(info->limits().chunk_bytes(), 0u);
}

TEST_F(ClientServerTest, AttendEqualsLocalComputation) {
  const Qkv t = Qkv::Make(2, 2, 40, 40, 16, 1);
  for (v1::Method m : {v1::METHOD_EXACT, v1::METHOD_PERFORMER, v1::METHOD_LSH,
                       v1::METHOD_LOCAL, v1::METHOD_SCATTERBRAIN}) {
    SCOPED_TRACE(v1::Method_Name(m));
    const AttendInput in = t.Input(m);
    auto r = client_->Attend(in);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->shape.seq_q, 40);
    EXPECT_EQ(r->out, Local(in));
    EXPECT_GE(r->stats.batch_size, 1);
    EXPECT_EQ(r->stats.dense_score_bytes, 2 * 2 * 40 * 40 * 4);
    EXPECT_EQ(r->stats.backend, "cpu");
  }
}

TEST_F(ClientServerTest, CausalCrossAttentionWithKeyLengths) {
  const Qkv t = Qkv::Make(2, 2, 24, 37, 8, 2);
  AttendInput in = t.Input(v1::METHOD_EXACT);
  in.settings.set_causal(true);
  in.key_lengths = {37, 30};
  auto r = client_->Attend(in);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->out, Local(in, in.key_lengths));
}

TEST_F(ClientServerTest, UnaryEqualsStream) {
  const Qkv t = Qkv::Make(1, 2, 33, 33, 16, 3);
  const AttendInput in = t.Input(v1::METHOD_SCATTERBRAIN);
  auto a = client_->AttendUnary(in);
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = client_->Attend(in);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->out, b->out);
  EXPECT_EQ(a->out, Local(in));
}

TEST_F(ClientServerTest, RequestLargerThanOneMessage) {
  // 1000-byte chunks split floats across messages; q alone is 64 chunks.
  auto c = NewClient(/*chunk_bytes=*/1000);
  const Qkv t = Qkv::Make(1, 2, 256, 256, 32, 4);
  const AttendInput in = t.Input(v1::METHOD_EXACT);
  auto r = c->Attend(in);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->out, Local(in));
}

TEST_F(ClientServerTest, ManyRequestsMultiplexedOnOneStream) {
  std::unique_ptr<client::AttendStream> stream = client_->OpenStream();
  std::vector<Qkv> inputs;
  for (int i = 0; i < 8; ++i) {
    inputs.push_back(Qkv::Make(1, 2, 16 + 9 * i, 16 + 9 * i, 16, 10 + i));
  }
  std::vector<std::future<absl::StatusOr<AttendResult>>> futures;
  for (int i = 0; i < 8; ++i) {
    AttendInput in =
        inputs[i].Input(i % 2 ? v1::METHOD_SCATTERBRAIN : v1::METHOD_EXACT);
    in.request_id = absl::StrCat("req-", i);
    futures.push_back(stream->Submit(in));
  }
  for (int i = 0; i < 8; ++i) {
    absl::StatusOr<AttendResult> r = futures[i].get();
    ASSERT_TRUE(r.ok()) << i << ": " << r.status();
    EXPECT_EQ(r->request_id, absl::StrCat("req-", i));
    EXPECT_EQ(r->out, Local(inputs[i].Input(i % 2 ? v1::METHOD_SCATTERBRAIN
                                                  : v1::METHOD_EXACT)));
  }
  EXPECT_EQ(stream->inflight(), 0);
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ClientServerTest, WindowHoldsBackRequestsBeyondTheLimit) {
  client::ClientOptions o;
  o.target = server_->target();
  o.max_inflight_per_stream = 2;
  auto c = AttentionClient::Create(o);
  ASSERT_TRUE(c.ok());
  std::unique_ptr<client::AttendStream> stream = (*c)->OpenStream();
  const Qkv t = Qkv::Make(1, 2, 32, 32, 16, 30);
  const AttendInput in = t.Input(v1::METHOD_EXACT);
  std::vector<std::future<absl::StatusOr<AttendResult>>> futures;
  for (int i = 0; i < 9; ++i) futures.push_back(stream->Submit(in));
  EXPECT_TRUE(stream->Finish().ok());  // waits for all nine
  const std::vector<float> want = Local(in);
  for (auto& f : futures) {
    absl::StatusOr<AttendResult> r = f.get();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->out, want);
  }
}

TEST_F(ClientServerTest, CallbacksAndGeneratedIds) {
  std::unique_ptr<client::AttendStream> stream = client_->OpenStream();
  const Qkv t = Qkv::Make(1, 1, 20, 20, 8, 20);
  absl::Mutex mu;
  std::vector<std::string> ids;
  int done = 0;
  for (int i = 0; i < 4; ++i) {
    auto id = stream->Submit(t.Input(v1::METHOD_EXACT),
                             [&](absl::StatusOr<AttendResult> r) {
                               absl::MutexLock lock(&mu);
                               EXPECT_TRUE(r.ok()) << r.status();
                               ++done;
                             });
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 4u);
  EXPECT_TRUE(stream->Finish().ok());
  absl::MutexLock lock(&mu);
  EXPECT_EQ(done, 4);
}

TEST_F(ClientServerTest, DuplicateIdInFlightIsRefused) {
  std::unique_ptr<client::AttendStream> stream = client_->OpenStream();
  const Qkv t = Qkv::Make(1, 2, 64, 64, 16, 21);
  AttendInput in = t.Input(v1::METHOD_EXACT);
  in.request_id = "same";
  auto first = stream->Submit(in);
  auto second = stream->Submit(in);
  // The second is refused locally while the first is in flight... unless
  // the first already completed, when reusing the id is allowed.
  absl::StatusOr<AttendResult> b = second.get();
  absl::StatusOr<AttendResult> a = first.get();
  ASSERT_TRUE(a.ok()) << a.status();
  if (!b.ok()) {
    EXPECT_THAT(b, StatusIs(absl::StatusCode::kInvalidArgument,
                            HasSubstr("request_id")));
  }
}

TEST_F(ClientServerTest, Float16AndBFloat16OnTheWire) {
  Qkv t = Qkv::Make(1, 2, 33, 33, 16, 5);
  // Round the inputs to float16 so both sides compute on the same values.
  for (auto* x : {&t.q, &t.k, &t.v}) {
    for (float& f : *x) f = HalfToFloat(FloatToHalf(f));
  }
  AttendInput in = t.Input(v1::METHOD_EXACT);
  const std::vector<float> want = Local(in);
  in.dtype = v1::DTYPE_FLOAT16;
  in.output_dtype = v1::DTYPE_FLOAT32;
  auto r = client_->Attend(in);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->out, want);  // exact inputs, float32 output: bit-equal

  in.output_dtype = v1::DTYPE_UNSPECIFIED;  // = float16 back
  r = client_->Attend(in);
  ASSERT_TRUE(r.ok()) << r.status();
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(r->out[i], HalfToFloat(FloatToHalf(want[i])));
  }

  in.dtype = v1::DTYPE_BFLOAT16;
  r = client_->Attend(in);
  ASSERT_TRUE(r.ok()) << r.status();
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_NEAR(r->out[i], want[i], 0.05 * (1 + std::fabs(want[i]))) << i;
  }
}

TEST_F(ClientServerTest, ServerErrorsComeBackAsStatus) {
  const Qkv t = Qkv::Make(1, 2, 16, 16, 8, 6);
  AttendInput in = t.Input(v1::METHOD_PERFORMER);
  in.settings.set_num_features(7);  // odd: rejected
  auto r = client_->Attend(in);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument,
                          HasSubstr("num_features")));
  r = client_->AttendUnary(in);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);

  in = t.Input(v1::METHOD_UNSPECIFIED);
  r = client_->Attend(in);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ClientServerTest, BadRequestDoesNotFailOthersOnTheStream) {
  std::unique_ptr<client::AttendStream> stream = client_->OpenStream();
  const Qkv t = Qkv::Make(1, 2, 16, 16, 8, 7);
  AttendInput good = t.Input(v1::METHOD_EXACT);
  AttendInput bad = good;
  bad.settings.set_method(v1::METHOD_UNSPECIFIED);
  auto a = stream->Submit(good);
  auto b = stream->Submit(bad);
  auto c = stream->Submit(good);
  EXPECT_TRUE(a.get().ok());
  EXPECT_EQ(b.get().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(c.get().ok());
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ClientServerTest, ClientSideValidation) {
  const Qkv t = Qkv::Make(1, 2, 16, 16, 8, 8);
  AttendInput in = t.Input(v1::METHOD_EXACT);
  in.shape.seq_q = 17;  // q has 16 rows
  auto r = client_->Attend(in);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("q:")));
  in = t.Input(v1::METHOD_EXACT);
  in.dtype = v1::DTYPE_UNSPECIFIED;
  EXPECT_EQ(client_->Attend(in).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ClientServerTest, CancelAndDestroyWithRequestsInFlight) {
  const Qkv t = Qkv::Make(1, 4, 512, 512, 64, 9);
  std::unique_ptr<client::AttendStream> stream = client_->OpenStream();
  AttendInput in = t.Input(v1::METHOD_EXACT);
  in.request_id = "to-cancel";
  auto f = stream->Submit(in);
  stream->Cancel("to-cancel");
  absl::StatusOr<AttendResult> r = f.get();
  // Cancelled before or after the server finished it: either is valid.
  if (!r.ok()) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  }
  // A stream destroyed with work in flight cancels it and does not hang.
  auto g = stream->Submit(in);
  stream.reset();
  r = g.get();
  if (!r.ok()) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  }
}

TEST_F(ClientServerTest, DeadlineExceeded) {
  const Qkv t = Qkv::Make(1, 2, 16, 16, 8, 10);
  std::unique_ptr<client::AttendStream> stream =
      client_->OpenStream(absl::Nanoseconds(1));
  auto r = stream->Submit(t.Input(v1::METHOD_EXACT)).get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(ClientServerTest, SubmitAfterFinishIsRefused) {
  std::unique_ptr<client::AttendStream> stream = client_->OpenStream();
  EXPECT_TRUE(stream->Finish().ok());
  const Qkv t = Qkv::Make(1, 1, 8, 8, 8, 11);
  auto r = stream->Submit(t.Input(v1::METHOD_EXACT)).get();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ClientServerTest, SeveralEndpointsRoundRobin) {
  client::ClientOptions o;
  o.target = absl::StrCat(server_->target(), ",", server_->target());
  auto c = AttentionClient::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  const Qkv t = Qkv::Make(1, 1, 8, 8, 8, 12);
  auto r = (*c)->Attend(t.Input(v1::METHOD_EXACT));
  ASSERT_TRUE(r.ok()) << r.status();
}

TEST(ClientNoServerTest, UnreachableServerIsUnavailable) {
  client::ClientOptions o;
  o.target = absl::StrCat("127.0.0.1:", FreePort());
  o.deadline = absl::Seconds(10);
  auto c = AttentionClient::Create(o);
  ASSERT_TRUE(c.ok());
  const Qkv t = Qkv::Make(1, 1, 8, 8, 8, 13);
  EXPECT_EQ((*c)->Attend(t.Input(v1::METHOD_EXACT)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ((*c)->Health().status().code(), absl::StatusCode::kUnavailable);
}

// --- the CLI's server modes
// ---------------------------------------------------

using RunResult = testutil::CommandResult;

class CliServerTest : public ClientServerTest {
 protected:
  void SetUp() override {
    ClientServerTest::SetUp();
    ASSERT_TRUE(dir_.ok());
  }
  std::string Path(const std::string& name) const { return dir_.File(name); }
  RunResult Run(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {BinDir() + "/scatterbrain_cli"};
    argv.insert(argv.end(), args.begin(), args.end());
    return testutil::RunCommand(argv, dir_.path());
  }
  void WriteQkv() {
    int i = 0;
    for (const char* name : {"q", "k", "v"}) {
      const std::vector<float> x = RandomNormal(2 * 2 * 48 * 16, 100 + i++);
      ASSERT_TRUE(
          WriteNpy(Path(absl::StrCat(name, ".npy")), {2, 2, 48, 16}, x.data())
              .ok());
    }
  }
  std::vector<std::string> AttendArgs(const std::string& out,
                                      const std::string& method) {
    return {"attend",
            "--q=" + Path("q.npy"),
            "--k=" + Path("k.npy"),
            "--v=" + Path("v.npy"),
            "--out=" + Path(out),
            "--method=" + method,
            "--num_features=16",
            "--bucket_size=8",
            "--seed=5"};
  }

  testutil::ScratchDir dir_{"client_cli"};
};

TEST_F(CliServerTest, AttendOnServerWritesTheLocalOutput) {
  WriteQkv();
  for (const std::string method : {"exact", "scatterbrain", "performer"}) {
    SCOPED_TRACE(method);
    RunResult local = Run(AttendArgs("local.npy", method));
    ASSERT_EQ(local.code, 0) << local.err;
    std::vector<std::string> args = AttendArgs("remote.npy", method);
    args.push_back("--server=" + server_->target());
    args.push_back("--stats");
    RunResult remote = Run(args);
    ASSERT_EQ(remote.code, 0) << remote.err;
    EXPECT_THAT(remote.out, HasSubstr("batch_size="));
    EXPECT_THAT(remote.out, HasSubstr("backend=cpu"));
    const std::string a = ReadFile(Path("local.npy"));
    ASSERT_FALSE(a.empty());
    EXPECT_EQ(a, ReadFile(Path("remote.npy")));  // byte-identical .npy
    args.push_back("--unary");
    args[4] = "--out=" + Path("unary.npy");
    RunResult unary = Run(args);
    ASSERT_EQ(unary.code, 0) << unary.err;
    EXPECT_EQ(a, ReadFile(Path("unary.npy")));
  }
}

TEST_F(CliServerTest, PlansAndCostComeBackFromTheServer) {
  WriteQkv();
  std::vector<std::string> args = AttendArgs("local.npy", "scatterbrain");
  for (const char* flag :
       {"--sparse=auto", "--target_error=0.3", "--global_keys=2", "--window=8",
        "--calibration_rows=8", "--stats"}) {
    args.push_back(flag);
  }
  const RunResult local = Run(args);
  ASSERT_EQ(local.code, 0) << local.err;
  args[4] = "--out=" + Path("remote.npy");
  args.push_back("--server=" + server_->target());
  const RunResult remote = Run(args);
  ASSERT_EQ(remote.code, 0) << remote.err;
  // The same computation: the same output and the same plans, one line per
  // (batch, head) after the stats line (B=2, H=2).
  EXPECT_EQ(ReadFile(Path("local.npy")), ReadFile(Path("remote.npy")));
  const auto plans = [](const std::string& out) {
    std::vector<std::string> lines = absl::StrSplit(out, '\n');
    std::vector<std::string> heads;
    for (const std::string& l : lines) {
      if (absl::StartsWith(l, "head ")) heads.push_back(l);
    }
    return heads;
  };
  EXPECT_EQ(plans(remote.out).size(), 4u) << remote.out;
  EXPECT_EQ(plans(remote.out), plans(local.out));
  EXPECT_THAT(remote.out, HasSubstr("error_bound="));
  EXPECT_THAT(remote.out, HasSubstr("cost="));
}

TEST_F(CliServerTest, AttendServerErrors) {
  WriteQkv();
  std::vector<std::string> args = AttendArgs("o.npy", "performer");
  args[6] = "--num_features=7";
  args.push_back("--server=" + server_->target());
  RunResult r = Run(args);
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(r.err, HasSubstr("num_features"));
  EXPECT_FALSE(Exists(Path("o.npy")));

  args = AttendArgs("o.npy", "exact");
  args.push_back("--server=" + server_->target());
  args.push_back("--threads=2");
  r = Run(args);
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--threads"));

  args = AttendArgs("o.npy", "exact");
  args.push_back("--dtype=float16");  // without --server
  r = Run(args);
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("needs --server"));

  args = AttendArgs("o.npy", "exact");
  args.push_back(absl::StrCat("--server=127.0.0.1:", FreePort()));
  args.push_back("--timeout_s=10");
  args.push_back("--retry_budget_s=-1");
  r = Run(args);
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--retry_budget_s"));
  // Retried for half a second (not the default 5 s), then UNAVAILABLE.
  args.back() = "--retry_budget_s=0.5";
  r = Run(args);
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("UNAVAILABLE"));
  EXPECT_THAT(r.err, HasSubstr("tries)"));
  EXPECT_FALSE(Exists(Path("o.npy")));
}

TEST_F(CliServerTest, AttendFloat16OnTheWire) {
  WriteQkv();
  std::vector<std::string> args = AttendArgs("o.npy", "exact");
  args.push_back("--server=" + server_->target());
  args.push_back("--dtype=float16");
  RunResult r = Run(args);
  ASSERT_EQ(r.code, 0) << r.err;
  RunResult local = Run(AttendArgs("local.npy", "exact"));
  ASSERT_EQ(local.code, 0) << local.err;
  auto a = ReadNpy(Path("o.npy"));
  auto b = ReadNpy(Path("local.npy"));
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->data.size(), b->data.size());
  for (size_t i = 0; i < a->data.size(); ++i) {
    ASSERT_NEAR(a->data[i], b->data[i], 5e-3) << i;
  }
}

TEST_F(CliServerTest, HealthExitCodes) {
  RunResult r = Run({"health", "--server=" + server_->target()});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "SERVING\n");
  r = Run({"health", absl::StrCat("--server=127.0.0.1:", FreePort()),
           "--timeout_s=5"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("UNAVAILABLE"));
  EXPECT_THAT(r.err, HasSubstr("error:"));
  r = Run({"health"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--server"));
}

TEST_F(CliServerTest, InfoOnServer) {
  RunResult r = Run({"info", "--server=" + server_->target()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("scatterbrain 0.1.0"));
  EXPECT_THAT(r.out, HasSubstr("backend: cpu"));
  EXPECT_THAT(r.out, HasSubstr("max_batch_requests"));
}

TEST_F(CliServerTest, BenchRunsATinyLoad) {
  RunResult r = Run({"bench", "--server=" + server_->target(), "--clients=2",
                     "--requests=6", "--seq=64", "--heads=2", "--dim=16",
                     "--num_features=16", "--bucket_size=16"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("completed: 6 ok, 0 failed"));
  EXPECT_THAT(r.out, HasSubstr("requests/s"));
  EXPECT_THAT(r.out, HasSubstr("MB/s"));
  EXPECT_THAT(r.out, HasSubstr("p50="));
  EXPECT_THAT(r.out, HasSubstr("p90="));
  EXPECT_THAT(r.out, HasSubstr("p99="));
  EXPECT_THAT(r.out, HasSubstr("batch sizes: "));

  r = Run({"bench", "--server=" + server_->target(), "--clients=1",
           "--requests=2", "--seq=32", "--heads=1", "--dim=8", "--method=exact",
           "--dtype=bfloat16"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("bfloat16"));

  r = Run({"bench", "--server=" + server_->target(), "--clients=0"});
  EXPECT_EQ(r.code, 2);
}

// --- helpers without a server
// -------------------------------------------------

TEST(ClientConversionTest, HalfRoundTripsEveryValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(f))));
      continue;
    }
    ASSERT_EQ(FloatToHalf(f), h) << h;
  }
  EXPECT_EQ(FloatToHalf(1e6f), 0x7C00);  // overflow: inf
  EXPECT_EQ(FloatToHalf(-1e6f), 0xFC00);
  EXPECT_EQ(FloatToHalf(1.0f + 1.0f / 2048), 0x3C00);  // tie: even
  EXPECT_EQ(FloatToHalf(1.0f + 3.0f / 2048), 0x3C02);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // subnormal
}

TEST(ClientConversionTest, BFloat16) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3F80);
  EXPECT_EQ(BFloat16ToFloat(0x3F80), 1.0f);
  // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: rounds to even (1).
  EXPECT_EQ(FloatToBFloat16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  EXPECT_EQ(FloatToBFloat16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::nanf("")))));
  EXPECT_EQ(FloatToBFloat16(-INFINITY), 0xFF80);
  const std::vector<float> x = {0.5f, -2.0f, 3.140625f};
  std::string bytes(x.size() * 2, '\0');
  EncodeFromFloat(DType::kBFloat16, x.data(), 3, bytes.data());
  std::vector<float> y(x.size());
  DecodeToFloat(DType::kBFloat16, bytes.data(), 3, y.data());
  EXPECT_EQ(x, y);  // all exactly representable
}

TEST(ClientTargetTest, Resolve) {
  client::ClientOptions o;
  o.target = "localhost:50051";
  auto r = client::ResolveTarget(o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->uri, "localhost:50051");
  EXPECT_EQ(r->lb_policy, "");

  o.target = "10.0.0.1:50051, 10.0.0.2:50052,localhost:7";
  r = client::ResolveTarget(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->uri, "ipv4:///10.0.0.1:50051,10.0.0.2:50052,127.0.0.1:7");
  EXPECT_EQ(r->lb_policy, "round_robin");

  o.target = "dns:///scatterbrain.default.svc:50051";
  r = client::ResolveTarget(o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->uri, o.target);

  o.target = "[::1]:1,[::1]:2";
  r = client::ResolveTarget(o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->uri, "ipv6:///[::1]:1,[::1]:2");

  for (const char* bad : {"", "a.example:1,b.example:2", "10.0.0.1,10.0.0.2",
                          "10.0.0.1:0,10.0.0.2:1", "10.0.0.1:1,[::1]:2"}) {
    o.target = bad;
    EXPECT_EQ(client::ResolveTarget(o).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  o.target = "1.2.3.4:5";
  o.chunk_bytes = 0;
  EXPECT_FALSE(AttentionClient::Create(o).ok());
}

TEST(ClientTargetTest, DTypeNames) {
  // The names the CLI's --dtype takes, to the wire's enum and back.
  DType d;
  ASSERT_TRUE(ParseDType("float16", &d));
  EXPECT_EQ(wire::DTypeToProto(d), v1::DTYPE_FLOAT16);
  ASSERT_TRUE(ParseDType("BF16", &d));
  EXPECT_EQ(wire::DTypeToProto(d), v1::DTYPE_BFLOAT16);
  EXPECT_FALSE(ParseDType("int8", &d));
  ASSERT_TRUE(wire::DTypeFromProto(v1::DTYPE_FLOAT32, &d));
  EXPECT_EQ(DTypeBytes(d), 4);
  ASSERT_TRUE(wire::DTypeFromProto(v1::DTYPE_BFLOAT16, &d));
  EXPECT_STREQ(DTypeName(d), "bfloat16");
}

}  // namespace
}  // namespace scatterbrain
