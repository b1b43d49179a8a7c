// Issue 9's findings, each reproduced against a real in-process Server:
// memory admission, the upload / idle / send timeouts (on a fake clock, so
// nothing here waits for a deadline in real time), silent TCP connections
// closed at the handshake timeout, unparseable messages and unknown methods
// answered with an error that says so, protocol errors kept out of
// requests_total, over-long ids refused and echoed whole.
//
// Waits are bounded polls for an event ("until the server has answered"),
// never assertions on how long something took.
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "scatterbrain/v1/attention.grpc.pb.h"
#include "server/clock.h"
#include "server/server.h"
#include "tests/testutil/net.h"
#include "tests/testutil/service_calls.h"

namespace scatterbrain {
namespace server {
namespace {

namespace pb = ::scatterbrain::v1;
using ::testing::HasSubstr;
using testutil::MakeReq;
using testutil::MetricValue;
using testutil::ReadUntilDone;
using testutil::Reply;
using testutil::Req;
using testutil::SendChunk;
using testutil::SendHeader;
using testutil::SendRequest;
using testutil::Stream;

// Polls `done` every 10 ms for up to `seconds` (real time).
bool Eventually(const std::function<bool()>& done, double seconds = 20) {
  const auto until = std::chrono::steady_clock::now() +
                     std::chrono::milliseconds(static_cast<int>(seconds * 1e3));
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

// An exact request whose buffers take 64 KiB on the server: q, k, v
// 3 x 4096 float32 elements and a 4096-element output.
Req SmallReq(const std::string& id, uint64_t seed = 7) {
  return MakeReq(id, pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 2, 64, 64, 32, 32,
                 seed);
}
constexpr int64_t kSmallReqBytes = 4 * (3 * 4096 + 4096);

class HardeningTest : public ::testing::Test {
 protected:
  static ServerOptions Options() {
    ServerOptions o = testutil::LoopbackServerOptions();
    // Batches close at once: nothing depends on the (fake) clock's delay.
    o.executor.batcher.max_queue_delay_us = 0;
    o.executor.error_sample_rows = 0;
    o.service.chunk_bytes = 4096;
    o.service.timeout_check_interval_ms = 5;
    o.drain_timeout_s = 5;
    return o;
  }

  void Start(const ServerOptions& o) {
    absl::StatusOr<std::unique_ptr<Server>> s = Server::Start(o, &clock_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    channel_ = testutil::OwnChannel(server_->port());
    stub_ = pb::AttentionService::NewStub(channel_);
  }

  double Metric(const std::string& series) {
    return MetricValue(server_->metrics().Serialize(), series);
  }
  int64_t Reserved() {
    return server_->service().memory_budget().reserved_bytes();
  }

  FakeClock clock_{int64_t{1} << 40};
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::AttentionService::Stub> stub_;
};

// --- Finding 1: memory admission --------------------------------------------

TEST_F(HardeningTest, MemoryBudgetRefusesWhatDoesNotFitAndIsReleased) {
  ServerOptions o = Options();
  o.service.max_memory_bytes = kSmallReqBytes + kSmallReqBytes / 2;
  Start(o);
  EXPECT_EQ(Metric("scatterbrain_memory_budget_bytes"),
            static_cast<double>(o.service.max_memory_bytes));

  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  const Req a = SmallReq("a"), b = SmallReq("b", 8);
  // "a" is accepted on its header alone and holds its bytes while uploading.
  SendHeader(s.get(), a.header);
  ASSERT_TRUE(Eventually([&] { return Reserved() == kSmallReqBytes; }));
  // "b" does not fit beside it.
  SendHeader(s.get(), b.header);
  std::map<std::string, Reply> r = ReadUntilDone(s.get(), {"b"});
  EXPECT_EQ(r["b"].code, static_cast<int>(grpc::RESOURCE_EXHAUSTED));
  EXPECT_THAT(r["b"].message, HasSubstr("max_memory_bytes"));
  EXPECT_THAT(r["b"].message, HasSubstr("retry later"));

  // "a" completes, and its bytes go back once it is answered.
  SendChunk(s.get(), "a", pb::TENSOR_NAME_Q, 0, a.q);
  SendChunk(s.get(), "a", pb::TENSOR_NAME_K, 0, a.k);
  SendChunk(s.get(), "a", pb::TENSOR_NAME_V, 0, a.v);
  r = ReadUntilDone(s.get(), {"a"});
  testutil::ExpectOutput(r["a"], a, "a");
  ASSERT_TRUE(Eventually([&] { return Reserved() == 0; }));
  // Now "b" fits.
  SendRequest(s.get(), b, 4096);
  r = ReadUntilDone(s.get(), {"b"});
  testutil::ExpectOutput(r["b"], b, "b after a");

  // A request larger than the whole budget is told it can never fit.
  const Req big = MakeReq("big", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 4, 64,
                          64, 32, 32, 9);
  SendHeader(s.get(), big.header);
  r = ReadUntilDone(s.get(), {"big"});
  EXPECT_EQ(r["big"].code, static_cast<int>(grpc::RESOURCE_EXHAUSTED));
  EXPECT_THAT(r["big"].message, HasSubstr("more than the whole budget"));
  s->WritesDone();
  EXPECT_TRUE(s->Finish().ok());
  EXPECT_EQ(Reserved(), 0);
}

TEST_F(HardeningTest, UnaryRequestsReserveAndReleaseMemoryToo) {
  ServerOptions o = Options();
  // The unary call also holds its message twice and the response message.
  o.service.max_memory_bytes = kSmallReqBytes;
  Start(o);
  const Req a = SmallReq("u");
  pb::AttendUnaryRequest req;
  *req.mutable_header() = a.header;
  req.set_q(a.q);
  req.set_k(a.k);
  req.set_v(a.v);
  pb::AttendUnaryResponse resp;
  grpc::ClientContext ctx;
  const grpc::Status st = stub_->AttendUnary(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_THAT(st.error_message(), HasSubstr("max_memory_bytes"));
  server_.reset();

  o.service.max_memory_bytes = 8 * kSmallReqBytes;
  Start(o);
  grpc::ClientContext ctx2;
  const grpc::Status ok = stub_->AttendUnary(&ctx2, req, &resp);
  EXPECT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(resp.output(), testutil::LocalOutput(a));
  EXPECT_TRUE(Eventually([&] { return Reserved() == 0; }));
}

// --- Finding 4: timeouts for slow or idle peers -----------------------------

TEST_F(HardeningTest, StalledUploadIsAnsweredAtTheUploadTimeout) {
  ServerOptions o = Options();
  o.service.upload_timeout_s = 5;
  Start(o);
  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  const Req slow = SmallReq("slow");
  SendHeader(s.get(), slow.header);
  SendChunk(s.get(), "slow", pb::TENSOR_NAME_Q, 0, slow.q.substr(0, 1000));
  ASSERT_TRUE(Eventually([&] { return server_->inflight_requests() == 1; }));
  clock_.AdvanceMicros(4'000'000);  // not yet
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(server_->inflight_requests(), 1);
  clock_.AdvanceMicros(1'500'000);
  std::map<std::string, Reply> r = ReadUntilDone(s.get(), {"slow"});
  EXPECT_EQ(r["slow"].code, static_cast<int>(grpc::DEADLINE_EXCEEDED));
  EXPECT_THAT(r["slow"].message, HasSubstr("upload_timeout_s"));
  EXPECT_EQ(
      Metric("scatterbrain_protocol_errors_total{kind=\"upload_timeout\"}"), 1);
  // Its late chunks are dropped silently, its buffers freed; the stream
  // goes on.
  SendChunk(s.get(), "slow", pb::TENSOR_NAME_Q, 1000, slow.q.substr(1000));
  const Req next = SmallReq("next", 11);
  SendRequest(s.get(), next, 4096);
  r = ReadUntilDone(s.get(), {"next"});
  testutil::ExpectOutput(r["next"], next, "next");
  EXPECT_EQ(r.count("slow"), 0u);  // nothing more for the dropped one
  EXPECT_TRUE(Eventually([&] { return Reserved() == 0; }));
  s->WritesDone();
  EXPECT_TRUE(s->Finish().ok());
}

TEST_F(HardeningTest, HeaderOnlyStreamsAreFreedAndIdleStreamsEnded) {
  // The finding: 256 streams that send a header and nothing else were held
  // forever. Now the upload timeout answers them, and the idle timeout then
  // ends the streams.
  ServerOptions o = Options();
  o.service.upload_timeout_s = 5;
  o.service.stream_idle_timeout_s = 30;
  Start(o);
  constexpr int kStreams = 32;
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<Stream> streams;
  for (int i = 0; i < kStreams; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    streams.push_back(stub_->Attend(ctxs.back().get()));
    SendHeader(streams.back().get(), SmallReq(absl::StrCat("h", i)).header);
  }
  ASSERT_TRUE(
      Eventually([&] { return server_->inflight_requests() == kStreams; }));
  clock_.AdvanceMicros(6'000'000);
  for (int i = 0; i < kStreams; ++i) {
    const std::string id = absl::StrCat("h", i);
    std::map<std::string, Reply> r = ReadUntilDone(streams[i].get(), {id});
    EXPECT_EQ(r[id].code, static_cast<int>(grpc::DEADLINE_EXCEEDED)) << id;
  }
  // Counted off when the server's write completes (after the client read it).
  EXPECT_TRUE(Eventually([&] { return server_->inflight_requests() == 0; }));
  clock_.AdvanceMicros(31'000'000);
  for (int i = 0; i < kStreams; ++i) {
    pb::AttendResponse m;
    EXPECT_FALSE(streams[i]->Read(&m));  // the server ended it
    const grpc::Status st = streams[i]->Finish();
    EXPECT_EQ(st.error_code(), grpc::UNAVAILABLE);
    EXPECT_THAT(st.error_message(), HasSubstr("stream_idle_timeout_s"));
  }
  EXPECT_EQ(Metric("scatterbrain_protocol_errors_total{kind=\"idle_timeout\"}"),
            kStreams);
  EXPECT_TRUE(Eventually([&] { return Reserved() == 0; }));
}

TEST_F(HardeningTest, ActiveStreamIsNotIdle) {
  ServerOptions o = Options();
  o.service.stream_idle_timeout_s = 30;
  Start(o);
  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  for (int i = 0; i < 3; ++i) {
    clock_.AdvanceMicros(20'000'000);  // 20 s between requests: < 30
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    const Req r = SmallReq(absl::StrCat("r", i), 20 + i);
    SendRequest(s.get(), r, 4096);
    std::map<std::string, Reply> got =
        ReadUntilDone(s.get(), {r.header.request_id()});
    testutil::ExpectOutput(got[r.header.request_id()], r, "active stream");
  }
  s->WritesDone();
  EXPECT_TRUE(s->Finish().ok());
}

TEST_F(HardeningTest, ClientThatStopsReadingIsCancelledAtTheSendTimeout) {
  ServerOptions o = Options();
  o.service.send_timeout_s = 10;
  o.service.chunk_bytes = 1 << 20;
  Start(o);
  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  // Four requests with 16 MiB outputs each (cheap to compute: 16 keys),
  // far more than the transport's windows hold: the server's writes stall
  // because this client never reads.
  for (int i = 0; i < 4; ++i) {
    const Req r = MakeReq(absl::StrCat("w", i), pb::METHOD_EXACT,
                          pb::DTYPE_FLOAT32, 1, 8, 2048, 16, 8, 256, 30 + i);
    SendRequest(s.get(), r, 1 << 20);
  }
  // Every request is computed and waiting to be sent...
  ASSERT_TRUE(Eventually([&] { return server_->queued_requests() == 0; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_GT(server_->inflight_requests(), 0);
  // ...until the send timeout passes: the stream is cancelled and what its
  // answers held is freed.
  clock_.AdvanceMicros(11'000'000);
  EXPECT_TRUE(Eventually([&] { return server_->inflight_requests() == 0; }));
  EXPECT_TRUE(Eventually([&] { return Reserved() == 0; }));
  EXPECT_EQ(Metric("scatterbrain_protocol_errors_total{kind=\"send_timeout\"}"),
            1);
  ctx.TryCancel();
  s->Finish();
}

TEST_F(HardeningTest, SilentTcpConnectionsAreClosedAtTheHandshakeTimeout) {
  // The finding: 500 raw TCP connections that never sent the HTTP/2
  // preface stayed open forever.
  ServerOptions o = Options();
  o.connections.handshake_timeout_s = 0.5;
  Start(o);
  std::vector<int> fds;
  for (int i = 0; i < 20; ++i) {
    const int fd = testutil::ConnectLoopback(server_->port());
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
  }
  for (int fd : fds) {
    EXPECT_TRUE(testutil::PeerClosed(fd, 15000)) << "fd " << fd;
    ::close(fd);
  }
  // Well-behaved clients are unaffected.
  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  const Req r = SmallReq("after");
  SendRequest(s.get(), r, 4096);
  std::map<std::string, Reply> got = ReadUntilDone(s.get(), {"after"});
  testutil::ExpectOutput(got["after"], r, "after silent connections");
  s->WritesDone();
  EXPECT_TRUE(s->Finish().ok());
}

// --- Finding 6: protocol errors ---------------------------------------------

// A string that is not UTF-8: a proto3 string field holding it serialises,
// but no conforming parser accepts the message.
const std::string kNotUtf8 = "\xff\xfe\xfd";

TEST_F(HardeningTest,
       UnparseableMessageEndsTheStreamWithAnErrorAfterAnswering) {
  Start(Options());
  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  const Req done = SmallReq("done"), partial = SmallReq("partial", 3);
  SendRequest(s.get(), done, 4096);
  SendHeader(s.get(), partial.header);
  SendChunk(s.get(), "partial", pb::TENSOR_NAME_Q, 0, partial.q.substr(0, 64));
  pb::AttendRequest bad;
  bad.mutable_cancel()->set_request_id(kNotUtf8);
  ASSERT_TRUE(s->Write(bad));
  std::map<std::string, Reply> r = testutil::ReadAll(s.get());
  const grpc::Status st = s->Finish();
  // The complete request was answered, the incomplete one failed with a
  // reason, and the stream's status names the bad message.
  testutil::ExpectOutput(r["done"], done, "done");
  EXPECT_EQ(r["partial"].code, static_cast<int>(grpc::INVALID_ARGUMENT));
  EXPECT_THAT(r["partial"].message, HasSubstr("the stream broke"));
  EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(),
              HasSubstr("is not a valid scatterbrain.v1.AttendRequest"));
  EXPECT_EQ(
      Metric(
          "scatterbrain_protocol_errors_total{kind=\"unparseable_message\"}"),
      1);
}

TEST_F(HardeningTest, UnparseableUnaryAndUnknownMethodsSayWhatIsWrong) {
  Start(Options());
  pb::AttendUnaryRequest req;
  req.mutable_header()->set_request_id(kNotUtf8);
  pb::AttendUnaryResponse resp;
  grpc::ClientContext ctx;
  const grpc::Status st = stub_->AttendUnary(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(),
              HasSubstr("not a valid scatterbrain.v1.AttendUnaryRequest"));

  grpc::GenericStub generic(channel_);
  grpc::ClientContext ctx2;
  grpc::Slice empty("");
  grpc::ByteBuffer in(&empty, 1), out;  // a default ByteBuffer is no message
  std::promise<grpc::Status> done;
  generic.UnaryCall(&ctx2, "/scatterbrain.v1.AttentionService/NoSuchMethod",
                    grpc::StubOptions(), &in, &out,
                    [&](grpc::Status s) { done.set_value(std::move(s)); });
  const grpc::Status unknown = done.get_future().get();
  EXPECT_EQ(unknown.error_code(), grpc::UNIMPLEMENTED);
  EXPECT_THAT(unknown.error_message(),
              HasSubstr("unknown method '/scatterbrain.v1.AttentionService/"
                        "NoSuchMethod'"));
  EXPECT_THAT(unknown.error_message(),
              HasSubstr("scatterbrain.v1.AttentionService"));
}

// --- Finding 9: metrics a client cannot inflate; ids refused, not cut ----

TEST_F(HardeningTest, UnknownIdChunksAreProtocolErrorsNotRequests) {
  Start(Options());
  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  std::vector<std::string> ids;
  for (int i = 0; i < 200; ++i) {
    ids.push_back(absl::StrCat("nobody", i));
    SendChunk(s.get(), ids.back(), pb::TENSOR_NAME_Q, 0, "abcd");
  }
  std::map<std::string, Reply> r = ReadUntilDone(s.get(), ids);
  for (const std::string& id : ids) {
    EXPECT_EQ(r[id].code, static_cast<int>(grpc::INVALID_ARGUMENT)) << id;
  }
  s->WritesDone();
  EXPECT_TRUE(s->Finish().ok());
  const std::string text = server_->metrics().Serialize();
  EXPECT_EQ(MetricValue(text,
                        "scatterbrain_protocol_errors_total{kind=\"unknown_"
                        "request_id\"}"),
            200);
  EXPECT_EQ(text.find("scatterbrain_requests_total{"), std::string::npos)
      << "no request was made, so none may be counted";
}

TEST_F(HardeningTest, OverlongIdIsRefusedAndEchoedWhole) {
  Start(Options());
  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  const std::string id(300, 'x');
  Req r = SmallReq(id);
  SendHeader(s.get(), r.header);
  std::map<std::string, Reply> got = ReadUntilDone(s.get(), {id});
  ASSERT_EQ(got.count(id), 1u) << "the error must carry the id as sent";
  EXPECT_EQ(got[id].code, static_cast<int>(grpc::INVALID_ARGUMENT));
  EXPECT_THAT(got[id].message, HasSubstr("request_id"));
  s->WritesDone();
  EXPECT_TRUE(s->Finish().ok());
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
