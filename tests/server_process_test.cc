// The server as a real process: build/bin/scatterbrain_server started on
// free loopback ports, called through the generated stubs, /metrics scraped
// over HTTP, and SIGTERM with a request in flight (the request completes,
// the process exits 0 within its drain timeout). Also the exit codes of bad
// flags and an unavailable backend.
//
// The binary is SB_SERVER_PATH when the build defines it, else
// scatterbrain_server next to this test binary (both live in build/bin).
#include "tests/testutil/server_process.h"

#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/devices.h"
#include "kernels/params.h"
#include "scatterbrain/v1/attention.grpc.pb.h"
#include "server/request.h"
#include "tests/testutil/cpu_attention.h"
#include "tests/testutil/health.h"
#include "tests/testutil/net.h"
#include "tests/testutil/process.h"
#include "tests/testutil/random.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace {

namespace pb = ::scatterbrain::v1;
using ::testing::HasSubstr;
using testutil::CheckHealth;
using testutil::HttpGet;
using testutil::IsOk;
using testutil::IsOkAndHolds;
using testutil::Process;
using testutil::ServerBinary;
using testutil::ServingStatus;
using testutil::StatusIs;

// Value of the first sample whose line starts with `prefix` (a metric name,
// optionally with the start of its labels); -1 when absent.
double Sample(const std::string& text, const std::string& prefix) {
  size_t pos = 0;
  while ((pos = text.find(prefix, pos)) != std::string::npos) {
    if (pos == 0 || text[pos - 1] == '\n') {
      const size_t eol = text.find('\n', pos);
      const std::string line = text.substr(pos, eol - pos);
      const size_t sp = line.rfind(' ');
      double v;
      if (sp != std::string::npos && absl::SimpleAtod(line.substr(sp + 1), &v))
        return v;
    }
    pos += prefix.size();
  }
  return -1;
}

struct Req {
  pb::RequestHeader header;
  std::vector<float> q, k, v;  // sent as float32
};

Req MakeReq(const std::string& id, pb::Method method, int heads, int n, int d,
            uint64_t seed) {
  Req r;
  r.header.set_request_id(id);
  r.header.mutable_settings()->set_method(method);
  r.header.mutable_settings()->set_seed(seed);
  if (method == pb::METHOD_SCATTERBRAIN) {
    r.header.mutable_settings()->set_num_features(32);
    r.header.mutable_settings()->set_bucket_size(16);
    // A small window too: the server's default support (auto) may choose
    // it.
    r.header.mutable_settings()->set_window(16);
  }
  r.header.set_dtype(pb::DTYPE_FLOAT32);
  pb::Shape* s = r.header.mutable_shape();
  s->set_batch(1);
  s->set_heads(heads);
  s->set_seq_q(n);
  s->set_seq_k(n);
  s->set_dim(d);
  s->set_dim_v(d);
  // q, k and v in turn from one U(-1, 1) stream seeded with `seed`.
  const size_t size = static_cast<size_t>(heads) * n * d;
  const std::vector<float> all =
      testutil::RandomUniform(3 * size, seed, -1.0f, 1.0f);
  r.q.assign(all.begin(), all.begin() + size);
  r.k.assign(all.begin() + size, all.begin() + 2 * size);
  r.v.assign(all.begin() + 2 * size, all.end());
  return r;
}

std::vector<float> Local(const Req& r) {
  AttentionParams p;
  p.method = r.header.settings().method() == pb::METHOD_EXACT
                 ? Method::kExact
                 : Method::kScatterbrain;
  if (r.header.settings().has_num_features())
    p.num_features = static_cast<int>(r.header.settings().num_features());
  if (r.header.settings().has_bucket_size())
    p.bucket_size = static_cast<int>(r.header.settings().bucket_size());
  if (r.header.settings().has_window())
    p.window = static_cast<int>(r.header.settings().window());
  p.seed = r.header.settings().seed();
  // The server's default support for a request that leaves it unset.
  if (p.method == Method::kScatterbrain) {
    p.sparse = server::RequestDefaults().sparse;
  }
  const pb::Shape& s = r.header.shape();
  p.batch = s.batch();
  p.heads = s.heads();
  p.seq_q = s.seq_q();
  p.seq_k = s.seq_k();
  p.dim = s.dim();
  p.dim_v = s.dim_v();
  p.q = r.q.data();
  p.k = r.k.data();
  p.v = r.v.data();
  return testutil::CpuAttention(p);
}

std::string Bytes(const std::vector<float>& x) {
  return std::string(reinterpret_cast<const char*>(x.data()), x.size() * 4);
}

using Stream = std::unique_ptr<
    grpc::ClientReaderWriter<pb::AttendRequest, pb::AttendResponse>>;

void Send(Stream& s, const pb::AttendRequest& m) { ASSERT_TRUE(s->Write(m)); }

void SendHeader(Stream& s, const Req& r) {
  pb::AttendRequest m;
  *m.mutable_header() = r.header;
  Send(s, m);
}

// Sends tensor `t`'s bytes [from, to) in chunks of `chunk`.
void SendTensor(Stream& s, const Req& r, pb::TensorName t, size_t from,
                size_t to, size_t chunk) {
  const std::string bytes = Bytes(t == pb::TENSOR_NAME_Q   ? r.q
                                  : t == pb::TENSOR_NAME_K ? r.k
                                                           : r.v);
  to = std::min(to, bytes.size());
  for (size_t off = from; off < to; off += chunk) {
    pb::AttendRequest m;
    m.mutable_chunk()->set_request_id(r.header.request_id());
    m.mutable_chunk()->set_tensor(t);
    m.mutable_chunk()->set_offset(off);
    m.mutable_chunk()->set_data(bytes.substr(off, std::min(chunk, to - off)));
    Send(s, m);
  }
}

void SendAll(Stream& s, const Req& r, size_t chunk) {
  SendHeader(s, r);
  for (pb::TensorName t :
       {pb::TENSOR_NAME_Q, pb::TENSOR_NAME_K, pb::TENSOR_NAME_V}) {
    SendTensor(s, r, t, 0, SIZE_MAX, chunk);
  }
}

struct Reply {
  bool ok = false;
  std::string error;
  pb::Stats stats;
  std::string output;
  bool last = false;
};

// Reads until `id` has its last message.
Reply ReadReply(Stream& s, const std::string& id) {
  Reply r;
  pb::AttendResponse m;
  while (!r.last && s->Read(&m)) {
    if (m.request_id() != id) continue;
    if (m.has_error()) r.error = m.error().message();
    if (m.has_header()) {
      r.ok = true;
      r.stats = m.header().stats();
    }
    if (m.has_chunk()) r.output += m.chunk().data();
    r.last = m.last();
  }
  return r;
}

class ServerProcessTest : public ::testing::Test {
 protected:
  // Starts the server on a port of its own choosing (--port=0) and a free
  // metrics port (the harness retries if that was taken meanwhile).
  void Start(const std::vector<std::string>& extra) {
    testutil::ServerProcessOptions o;
    o.flags = {"--host=127.0.0.1", "--port=0", "--backend=cpu",
               "--drain_timeout_s=10"};
    o.flags.insert(o.flags.end(), extra.begin(), extra.end());
    o.log_name = "server_process_test_server";
    o.start_timeout = absl::Seconds(20);
    server_ = std::make_unique<testutil::ServerProcess>();
    ASSERT_THAT(server_->Start(o), IsOk());
    metrics_port_ = server_->metrics_port();
    const std::string out = server_->log();
    ASSERT_THAT(out, HasSubstr("/metrics\n"));
    const std::string tag = "gRPC on 127.0.0.1:";
    const size_t at = out.find(tag);
    ASSERT_NE(at, std::string::npos) << out;
    ASSERT_TRUE(absl::SimpleAtoi(
        out.substr(at + tag.size(),
                   out.find(' ', at + tag.size()) - at - tag.size()),
        &port_))
        << out;
    EXPECT_EQ(port_, server_->port());
    EXPECT_THAT(out, HasSubstr(absl::StrCat("metrics at http://127.0.0.1:",
                                            metrics_port_, "/metrics")));
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    channel_ =
        grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_),
                                  grpc::InsecureChannelCredentials(), args);
    stub_ = pb::AttentionService::NewStub(channel_);
  }

  std::unique_ptr<testutil::ServerProcess> server_;
  int port_ = 0;
  int metrics_port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::AttentionService::Stub> stub_;
};

TEST_F(ServerProcessTest, ServesOverLoopbackAndExportsMetrics) {
  Start({"--chunk_bytes=8192", "--error_sample_rows=4"});
  EXPECT_THAT(CheckHealth(channel_), IsOkAndHolds(ServingStatus::kServing));
  const Req exact = MakeReq("e", pb::METHOD_EXACT, 2, 128, 32, 1);
  const Req sb = MakeReq("s", pb::METHOD_SCATTERBRAIN, 2, 256, 32, 2);
  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  SendAll(s, exact, 10000);
  SendAll(s, sb, 10000);
  s->WritesDone();
  std::map<std::string, Reply> got;
  got["e"] = ReadReply(s, "e");
  got["s"] = ReadReply(s, "s");
  pb::AttendResponse rest;
  while (s->Read(&rest)) {
  }
  ASSERT_TRUE(s->Finish().ok());
  for (const auto* r : {&exact, &sb}) {
    const Reply& reply = got[r->header.request_id()];
    ASSERT_TRUE(reply.ok) << reply.error;
    EXPECT_TRUE(reply.output == Bytes(Local(*r))) << r->header.request_id();
  }
  EXPECT_TRUE(got["s"].stats.has_estimated_relative_error());
  EXPECT_GT(got["s"].stats.memory_saved_bytes(), 0u);

  pb::ServerInfo info;
  grpc::ClientContext ictx;
  ASSERT_TRUE(
      stub_->GetServerInfo(&ictx, pb::GetServerInfoRequest(), &info).ok());
  EXPECT_EQ(info.limits().chunk_bytes(), 8192u);

  const std::string text = HttpGet(metrics_port_, "/metrics");
  ASSERT_FALSE(text.empty());
  EXPECT_GE(
      Sample(text, "scatterbrain_requests_total{code=\"OK\",method=\"exact\"}"),
      1)
      << text;
  EXPECT_GE(
      Sample(
          text,
          "scatterbrain_requests_total{code=\"OK\",method=\"scatterbrain\"}"),
      1);
  EXPECT_GE(
      Sample(text,
             "scatterbrain_request_duration_seconds_count{method=\"exact\"}"),
      1);
  EXPECT_GT(
      Sample(
          text,
          "scatterbrain_request_duration_seconds_sum{method=\"scatterbrain\"}"),
      0);
  EXPECT_GE(
      Sample(text,
             "scatterbrain_queue_duration_seconds_count{method=\"exact\"}"),
      1);
  EXPECT_GE(Sample(text,
                   "scatterbrain_compute_duration_seconds_count{method="
                   "\"scatterbrain\"}"),
            1);
  EXPECT_GT(
      Sample(
          text,
          "scatterbrain_compute_duration_seconds_sum{method=\"scatterbrain\"}"),
      0);
  EXPECT_GE(Sample(text, "scatterbrain_batch_size_count"), 1);
  EXPECT_GE(Sample(text, "scatterbrain_batch_size_sum"), 2);
  EXPECT_GT(Sample(text, "scatterbrain_attention_memory_saved_bytes_total"), 0);
  EXPECT_GE(
      Sample(
          text,
          "scatterbrain_approx_relative_error_count{method=\"scatterbrain\"}"),
      1);
  EXPECT_GE(Sample(text, "scatterbrain_denominator_guard_total"), 0);
  EXPECT_EQ(Sample(text, "scatterbrain_inflight_requests"), 0);
  EXPECT_EQ(Sample(text, "scatterbrain_queue_depth"), 0);
  // At least the three tensors of both requests came in, the outputs went out.
  const double tensor_bytes = 4.0 * (exact.q.size() * 3 + sb.q.size() * 3);
  EXPECT_GT(Sample(text, "scatterbrain_received_bytes_total"), tensor_bytes);
  EXPECT_GT(Sample(text, "scatterbrain_sent_bytes_total"), tensor_bytes / 3);
  EXPECT_GT(
      Sample(text, "scatterbrain_device_memory_used_bytes{device=\"cpu\"}"), 0);

  ASSERT_TRUE(server_->Signal(SIGTERM));
  EXPECT_EQ(server_->WaitExit(absl::Seconds(15)), 0) << server_->log();
}

TEST_F(ServerProcessTest, SigtermDrainsInFlightRequestAndExitsZero) {
  Start({});
  const Req r = MakeReq("inflight", pb::METHOD_SCATTERBRAIN, 4, 512, 64, 3);
  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  // Header and half of q: the request is accepted and in flight.
  SendHeader(s, r);
  SendTensor(s, r, pb::TENSOR_NAME_Q, 0, r.q.size() * 2, 16384);
  ASSERT_TRUE(s->Write(pb::AttendRequest()));  // an empty message: answered
  pb::AttendResponse first;
  ASSERT_TRUE(s->Read(&first));  // so the header above has surely arrived
  EXPECT_EQ(first.error().code(),
            static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));

  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(server_->Signal(SIGTERM));
  ASSERT_TRUE(server_->WaitForLog("draining", absl::Seconds(10)))
      << server_->log();
  bool not_serving = false;
  for (int i = 0; i < 500 && !not_serving; ++i) {
    not_serving = ::testing::Value(CheckHealth(channel_),
                                   IsOkAndHolds(ServingStatus::kNotServing));
    if (!not_serving)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(not_serving);

  // New work is refused while the drain runs.
  grpc::ClientContext uctx;
  pb::AttendUnaryRequest u;
  *u.mutable_header() = MakeReq("", pb::METHOD_EXACT, 1, 4, 4, 9).header;
  u.set_q(std::string(64, '\0'));
  u.set_k(std::string(64, '\0'));
  u.set_v(std::string(64, '\0'));
  pb::AttendUnaryResponse uresp;
  EXPECT_EQ(stub_->AttendUnary(&uctx, u, &uresp).error_code(),
            grpc::StatusCode::UNAVAILABLE);

  // The in-flight request completes.
  SendTensor(s, r, pb::TENSOR_NAME_Q, r.q.size() * 2, SIZE_MAX, 16384);
  SendTensor(s, r, pb::TENSOR_NAME_K, 0, SIZE_MAX, 16384);
  SendTensor(s, r, pb::TENSOR_NAME_V, 0, SIZE_MAX, 16384);
  const Reply reply = ReadReply(s, "inflight");
  ASSERT_TRUE(reply.ok) << reply.error;
  EXPECT_TRUE(reply.output == Bytes(Local(r)));
  s->WritesDone();
  pb::AttendResponse rest;
  while (s->Read(&rest)) {
  }
  const grpc::Status st = s->Finish();
  EXPECT_TRUE(st.ok() || st.error_code() == grpc::StatusCode::UNAVAILABLE)
      << st.error_message();

  EXPECT_EQ(server_->WaitExit(absl::Seconds(15)), 0) << server_->log();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  EXPECT_THAT(server_->log(), HasSubstr("stopped"));
}

TEST_F(ServerProcessTest, IdleServerExitsZeroOnSigint) {
  Start({});
  ASSERT_TRUE(server_->Signal(SIGINT));
  EXPECT_EQ(server_->WaitExit(absl::Seconds(15)), 0) << server_->log();
}

TEST(ServerProcessFlagsTest, BadFlagsExitTwo) {
  for (const std::vector<std::string>& bad :
       std::vector<std::vector<std::string>>{{"--no_such_flag=1"},
                                             {"--port=abc"},
                                             {"--port=70000"},
                                             {"--chunk_bytes=0"},
                                             {"--backend=tpu"},
                                             {"--drain_timeout_s=-1"},
                                             {"positional"}}) {
    std::vector<std::string> args = {ServerBinary()};
    args.insert(args.end(), bad.begin(), bad.end());
    Process p(args, "server_process_test_flags");
    EXPECT_EQ(p.WaitExit(absl::Seconds(10)), 2) << bad[0] << ": " << p.output();
    EXPECT_THAT(p.output(), HasSubstr("scatterbrain_server:")) << bad[0];
  }
  Process help({ServerBinary(), "--help"}, "server_process_test_flags");
  EXPECT_EQ(help.WaitExit(absl::Seconds(10)), 0);
  EXPECT_THAT(help.output(), HasSubstr("--max_queue_delay_us (default 2000)"));
}

// The harness itself: a server that exits during startup is an error that
// says how it exited and carries its log (no retry for a usage error).
TEST(ServerProcessFlagsTest, HarnessReportsAServerThatDoesNotStart) {
  testutil::ServerProcess server;
  testutil::ServerProcessOptions o;
  o.flags = {"--backend=tpu"};
  o.log_name = "server_process_test_server";
  EXPECT_THAT(server.Start(o),
              StatusIs(absl::StatusCode::kUnavailable,
                       ::testing::AllOf(HasSubstr("exit status 2"),
                                        HasSubstr("--backend"))));
  EXPECT_FALSE(server.running());
  EXPECT_THAT(server.Stop(), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(ServerProcessFlagsTest, CudaWithoutAGpuIsAStartupError) {
  if (!CudaDevices().empty()) GTEST_SKIP() << "a GPU is present";
  Process p({ServerBinary(), "--backend=cuda", "--port=0", "--metrics_port=0"},
            "server_process_test_flags");
  EXPECT_EQ(p.WaitExit(absl::Seconds(10)), 1) << p.output();
  EXPECT_THAT(p.output(), HasSubstr("cannot start"));
}

}  // namespace
}  // namespace scatterbrain
