// In-process tests of the server: a real Server on 127.0.0.1 (port 0) called
// through the generated stubs: outputs equal to local computation, batching
// across streams, every error code, cancellation, health, reflection, drain.
//
// Nothing here depends on timing: batches are made to close by size (with a
// long queue delay), "queued" is observed through the server's counters
// with bounded polls, and the drain test keeps its request in flight by not
// finishing its upload.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/params.h"
#include "proto/convert/settings.h"
#include "proto/convert/wire.h"
#include "scatterbrain/v1/attention.grpc.pb.h"
#include "server/server.h"
#include "tests/testutil/cpu_attention.h"
#include "tests/testutil/health.h"
#include "tests/testutil/random.h"
#include "tests/testutil/service_calls.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace server {
namespace {

namespace pb = ::scatterbrain::v1;
using ::testing::HasSubstr;
using testutil::CheckHealth;
using testutil::IsOkAndHolds;
using testutil::ServingStatus;

// ===========================================================================
// The service, in process
// ===========================================================================

using testutil::Absorb;
using testutil::Core;
using testutil::ExpectOutput;
using testutil::LocalOutput;
using testutil::MakeReq;
using testutil::MetricValue;
using testutil::RandomTensor;
using testutil::ReadAll;
using testutil::ReadUntilDone;
using testutil::Reply;
using testutil::Req;
using testutil::SendCancel;
using testutil::SendChunk;
using testutil::SendHeader;
using testutil::SendRequest;
using testutil::Stream;

class ServiceTest : public ::testing::Test {
 protected:
  static ServerOptions TestOptions() {
    ServerOptions o = testutil::LoopbackServerOptions();
    o.executor.batcher.max_queue_delay_us = 500;
    o.service.chunk_bytes = 4096;
    o.executor.error_sample_rows = 4;
    o.drain_timeout_s = 10;
    return o;
  }

  void StartServer(const ServerOptions& o) {
    absl::StatusOr<std::unique_ptr<Server>> s = Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    channel_ = NewChannel();
    stub_ = pb::AttentionService::NewStub(channel_);
  }

  // A channel with its own connection (a separate client).
  std::shared_ptr<grpc::Channel> NewChannel() {
    return testutil::OwnChannel(server_->port());
  }

  // Each request on a channel and stream of its own, all at once (one
  // thread each), uploaded in `chunk`-byte chunks; the replies in the
  // order of `reqs`. Every stream must finish OK.
  std::vector<Reply> AttendEachOnItsOwnStream(const std::vector<Req>& reqs,
                                              size_t chunk) {
    std::vector<std::thread> threads;
    std::vector<Reply> got(reqs.size());
    for (size_t i = 0; i < reqs.size(); ++i) {
      threads.emplace_back([&, i] {
        auto stub = pb::AttentionService::NewStub(NewChannel());
        grpc::ClientContext ctx;
        Stream s = stub->Attend(&ctx);
        SendRequest(s.get(), reqs[i], chunk);
        s->WritesDone();
        got[i] = ReadAll(s.get())[reqs[i].header.request_id()];
        EXPECT_TRUE(s->Finish().ok());
      });
    }
    for (std::thread& t : threads) t.join();
    return got;
  }

  // Polls `pred` (bounded: 10 s); true once it holds.
  static bool Eventually(const std::function<bool()>& pred) {
    for (int i = 0; i < 2000; ++i) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return pred();
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::AttentionService::Stub> stub_;
};

TEST_F(ServiceTest, ConcurrentClientsOnSeveralStreamsMatchLocal) {
  StartServer(TestOptions());
  const pb::Method methods[] = {pb::METHOD_EXACT, pb::METHOD_PERFORMER,
                                pb::METHOD_LSH, pb::METHOD_LOCAL,
                                pb::METHOD_SCATTERBRAIN};
  const pb::DType dtypes[] = {pb::DTYPE_FLOAT32, pb::DTYPE_FLOAT16,
                              pb::DTYPE_BFLOAT16};
  constexpr int kClients = 4, kStreamsPerClient = 2, kRequestsPerStream = 3;
  std::vector<std::thread> threads;
  std::vector<std::string> failures(kClients * kStreamsPerClient);
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      auto channel = NewChannel();
      auto stub = pb::AttentionService::NewStub(channel);
      for (int s = 0; s < kStreamsPerClient; ++s) {
        grpc::ClientContext ctx;
        Stream stream = stub->Attend(&ctx);
        std::vector<Req> reqs;
        for (int r = 0; r < kRequestsPerStream; ++r) {
          const int i = (c * kStreamsPerClient + s) * kRequestsPerStream + r;
          Req req = MakeReq(absl::StrCat("c", c, "s", s, "r", r),
                            methods[i % 5], dtypes[i % 3], 1 + i % 2, 2,
                            24 + 8 * (i % 4), 40 + 4 * (i % 3), 16, 8, 100 + i);
          if (i % 4 == 1) req.header.mutable_settings()->set_causal(true);
          if (i % 5 == 2) req.header.set_output_dtype(pb::DTYPE_FLOAT32);
          SendRequest(stream.get(), req, 1000 + 37 * r, /*interleave=*/r == 1);
          reqs.push_back(std::move(req));
        }
        stream->WritesDone();
        std::map<std::string, Reply> replies = ReadAll(stream.get());
        const grpc::Status st = stream->Finish();
        EXPECT_TRUE(st.ok()) << st.error_message();
        EXPECT_EQ(replies.size(), reqs.size());
        for (const Req& req : reqs) {
          const std::string& id = req.header.request_id();
          ExpectOutput(replies[id], req, id);
          EXPECT_GT(replies[id].chunks, 0);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const std::string text = server_->metrics().Serialize();
  EXPECT_GE(
      MetricValue(text,
                  "scatterbrain_requests_total{code=\"OK\",method=\"exact\"}"),
      1)
      << text;
  EXPECT_EQ(server_->inflight_requests(), 0);
}

TEST_F(ServiceTest, RequestLargerThanOneMessage) {
  ServerOptions o = TestOptions();
  o.max_message_bytes = 256 << 10;
  o.service.chunk_bytes = 64 << 10;
  StartServer(o);
  // q, k and v of 1.5 MiB each: many 200 KiB chunks, each under the
  // server's 256 KiB message limit; the output comes back in 64 KiB chunks.
  Req req = MakeReq("big", pb::METHOD_PERFORMER, pb::DTYPE_FLOAT32, 1, 4, 1536,
                    1536, 64, 64, 5);
  ASSERT_GT(req.q.size(), size_t{1} << 20);
  grpc::ClientContext ctx;
  Stream stream = stub_->Attend(&ctx);
  SendRequest(stream.get(), req, 200 << 10);
  stream->WritesDone();
  std::map<std::string, Reply> replies = ReadAll(stream.get());
  EXPECT_TRUE(stream->Finish().ok());
  ExpectOutput(replies["big"], req, "big");
  EXPECT_EQ(replies["big"].chunks,
            static_cast<int>((replies["big"].output.size() + (64 << 10) - 1) /
                             (64 << 10)));
  EXPECT_TRUE(replies["big"].header.stats().has_estimated_relative_error());

  // A single message over the limit is refused by gRPC itself.
  grpc::ClientContext ctx2;
  Stream s2 = stub_->Attend(&ctx2);
  pb::AttendRequest m;
  m.mutable_chunk()->set_request_id("x");
  m.mutable_chunk()->set_data(std::string(300 << 10, 'a'));
  s2->Write(m);
  s2->WritesDone();
  ReadAll(s2.get());
  EXPECT_EQ(s2->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(ServiceTest, BatchesFormAcrossStreamsWithDifferentLengths) {
  ServerOptions o = TestOptions();
  o.executor.batcher.max_batch_requests = 4;
  o.executor.batcher.max_queue_delay_us =
      30'000'000;  // only size closes the batch
  StartServer(o);
  std::vector<Req> reqs;
  for (int i = 0; i < 4; ++i) {
    reqs.push_back(MakeReq(absl::StrCat("b", i), pb::METHOD_SCATTERBRAIN,
                           pb::DTYPE_FLOAT16, 1, 2, 32 + 16 * i, 48 + 8 * i, 16,
                           16, 40 + i));
  }
  const std::vector<Reply> got = AttendEachOnItsOwnStream(reqs, 512);
  for (int i = 0; i < 4; ++i) {
    ExpectOutput(got[i], reqs[i], reqs[i].header.request_id());
    EXPECT_EQ(got[i].header.stats().batch_size(), 4u);
  }
  const std::string text = server_->metrics().Serialize();
  EXPECT_EQ(MetricValue(text, "scatterbrain_batch_size_count"), 1) << text;
  EXPECT_EQ(MetricValue(text, "scatterbrain_batch_size_sum"), 4) << text;
  EXPECT_EQ(MetricValue(text, "scatterbrain_batch_size_bucket{le=\"2\"}"), 0);
  EXPECT_EQ(MetricValue(text, "scatterbrain_batch_size_bucket{le=\"4\"}"), 1);
  EXPECT_GE(
      MetricValue(
          text,
          "scatterbrain_approx_relative_error_count{method=\"scatterbrain\"}"),
      4);
}

TEST_F(ServiceTest, OneBadRequestInABatchFailsAlone) {
  ServerOptions o = TestOptions();
  o.executor.batcher.max_batch_requests = 3;
  o.executor.batcher.max_queue_delay_us = 30'000'000;
  StartServer(o);
  std::vector<Req> reqs;
  for (int i = 0; i < 3; ++i) {
    reqs.push_back(MakeReq(absl::StrCat("n", i), pb::METHOD_EXACT,
                           pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 70 + i));
  }
  const float nan = NAN;
  std::memcpy(reqs[1].q.data() + 4 * 5, &nan, 4);  // q[0,0,1,1]
  const std::vector<Reply> got = AttendEachOnItsOwnStream(reqs, 64);
  ExpectOutput(got[0], reqs[0], "n0");
  ExpectOutput(got[2], reqs[2], "n2");
  EXPECT_EQ(got[0].header.stats().batch_size(), 3u);
  EXPECT_TRUE(got[1].has_error);
  EXPECT_EQ(got[1].code, static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_THAT(got[1].message, HasSubstr("q: non-finite value at [0, 0, 1, 1]"));
}

TEST_F(ServiceTest, UnaryMatchesLocalWithStats) {
  StartServer(TestOptions());
  for (pb::DType dt :
       {pb::DTYPE_FLOAT32, pb::DTYPE_FLOAT16, pb::DTYPE_BFLOAT16}) {
    Req req = MakeReq("", pb::METHOD_SCATTERBRAIN, dt, 2, 2, 40, 40, 16, 8, 9);
    req.header.add_key_lengths(40);
    req.header.add_key_lengths(23);
    pb::AttendUnaryRequest u;
    *u.mutable_header() = req.header;
    u.set_q(req.q);
    u.set_k(req.k);
    u.set_v(req.v);
    pb::AttendUnaryResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status st = stub_->AttendUnary(&ctx, u, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_TRUE(resp.output() == LocalOutput(req)) << pb::DType_Name(dt);
    EXPECT_EQ(resp.header().dtype(), dt);
    EXPECT_EQ(resp.header().stats().batch_size(), 1u);
    EXPECT_GT(resp.header().stats().dense_score_bytes(), 0u);
    EXPECT_TRUE(resp.header().stats().has_estimated_relative_error());
  }
  // Same validation as the stream.
  Req bad =
      MakeReq("", pb::METHOD_EXACT, pb::DTYPE_FLOAT16, 1, 1, 4, 4, 4, 4, 1);
  pb::AttendUnaryRequest u;
  *u.mutable_header() = bad.header;
  u.set_q(bad.q);
  u.set_k(bad.k);
  u.set_v(bad.v.substr(2));
  pb::AttendUnaryResponse resp;
  grpc::ClientContext ctx;
  grpc::Status st = stub_->AttendUnary(&ctx, u, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("v: 30 bytes, expected 32"));
  u.mutable_header()->mutable_settings()->set_method(pb::METHOD_UNSPECIFIED);
  grpc::ClientContext ctx2;
  st = stub_->AttendUnary(&ctx2, u, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("header.settings.method"));
  const std::string text = server_->metrics().Serialize();
  EXPECT_EQ(
      MetricValue(
          text,
          "scatterbrain_requests_total{code=\"OK\",method=\"scatterbrain\"}"),
      3)
      << text;
  EXPECT_EQ(MetricValue(text,
                        "scatterbrain_requests_total{code=\"INVALID_ARGUMENT\","
                        "method=\"exact\"}"),
            1);
}

TEST_F(ServiceTest, StreamErrorsHaveCodesAndSpareOtherRequests) {
  ServerOptions o = TestOptions();
  o.service.limits.max_request_bytes = 64 << 10;
  o.service.limits.max_seq = 512;
  StartServer(o);
  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  auto* w = s.get();

  const Req a =
      MakeReq("A", pb::METHOD_EXACT, pb::DTYPE_FLOAT16, 1, 2, 16, 16, 8, 8, 1);
  SendRequest(w, a, 100);

  std::map<std::string, std::pair<grpc::StatusCode, std::string>> want;
  auto bad_header = [&](const std::string& id,
                        const std::function<void(pb::RequestHeader*)>& edit,
                        grpc::StatusCode code, const std::string& text) {
    Req r =
        MakeReq(id, pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 3);
    edit(&r.header);
    SendRequest(w, r, 32);  // its chunks follow and must be dropped quietly
    want[id] = {code, text};
  };
  bad_header(
      "dim", [](pb::RequestHeader* h) { h->mutable_shape()->set_dim(0); },
      grpc::StatusCode::INVALID_ARGUMENT, "header.shape.dim");
  bad_header(
      "dtype",
      [](pb::RequestHeader* h) { h->set_dtype(static_cast<pb::DType>(7)); },
      grpc::StatusCode::INVALID_ARGUMENT, "header.dtype");
  bad_header(
      "method",
      [](pb::RequestHeader* h) {
        h->mutable_settings()->set_method(pb::METHOD_UNSPECIFIED);
      },
      grpc::StatusCode::INVALID_ARGUMENT, "header.settings.method");
  bad_header(
      "features",
      [](pb::RequestHeader* h) {
        h->mutable_settings()->set_method(pb::METHOD_PERFORMER);
        h->mutable_settings()->set_num_features(5);
      },
      grpc::StatusCode::INVALID_ARGUMENT, "header.settings.num_features");
  bad_header(
      "seq", [](pb::RequestHeader* h) { h->mutable_shape()->set_seq_k(513); },
      grpc::StatusCode::RESOURCE_EXHAUSTED, "max_seq");
  bad_header(
      "bytes", [](pb::RequestHeader* h) { h->mutable_shape()->set_heads(200); },
      grpc::StatusCode::RESOURCE_EXHAUSTED, "max_request_bytes");
  bad_header(
      "", [](pb::RequestHeader*) {}, grpc::StatusCode::INVALID_ARGUMENT,
      "header.request_id");

  // A chunk for an id with no header.
  SendChunk(w, "ghost", pb::TENSOR_NAME_Q, 0, "abcd");
  SendChunk(w, "ghost", pb::TENSOR_NAME_Q, 4, "abcd");  // no second error
  want["ghost"] = {grpc::StatusCode::INVALID_ARGUMENT, "chunk.request_id"};

  // Out of order: offset skips ahead.
  Req r =
      MakeReq("skip", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 4);
  SendHeader(w, r.header);
  SendChunk(w, "skip", pb::TENSOR_NAME_Q, 0,
            absl::string_view(r.q).substr(0, 16));
  SendChunk(w, "skip", pb::TENSOR_NAME_Q, 32,
            absl::string_view(r.q).substr(32, 16));
  SendChunk(w, "skip", pb::TENSOR_NAME_Q, 48,
            absl::string_view(r.q).substr(48, 16));
  want["skip"] = {grpc::StatusCode::INVALID_ARGUMENT,
                  "chunk.offset: 32 for tensor q, expected 16"};

  // Shape inconsistent with the bytes: more data than the header's shape.
  r = MakeReq("over", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 5);
  SendHeader(w, r.header);
  SendChunk(w, "over", pb::TENSOR_NAME_K, 0, r.k + "xxxx");
  want["over"] = {grpc::StatusCode::INVALID_ARGUMENT,
                  "chunk.data: 132 bytes at offset 0 run past the end of "
                  "tensor k (128 bytes"};

  // Bad tensor name.
  r = MakeReq("tname", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4,
              5);
  SendHeader(w, r.header);
  SendChunk(w, "tname", pb::TENSOR_NAME_OUTPUT, 0, r.q);
  want["tname"] = {grpc::StatusCode::INVALID_ARGUMENT, "chunk.tensor"};

  // Duplicate id in flight (header twice): one error for the id.
  r = MakeReq("dup", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 6);
  SendHeader(w, r.header);
  SendChunk(w, "dup", pb::TENSOR_NAME_Q, 0, r.q);
  SendHeader(w, r.header);
  SendChunk(w, "dup", pb::TENSOR_NAME_K, 0, r.k);
  want["dup"] = {grpc::StatusCode::INVALID_ARGUMENT, "already in flight"};

  // Cancelled while uploading; its later chunks are dropped.
  r = MakeReq("cx", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 7);
  SendHeader(w, r.header);
  SendChunk(w, "cx", pb::TENSOR_NAME_Q, 0, r.q);
  SendCancel(w, "cx");
  SendChunk(w, "cx", pb::TENSOR_NAME_K, 0, r.k);
  want["cx"] = {grpc::StatusCode::CANCELLED, "CancelRequest"};

  // A good request after all the bad ones.
  const Req c =
      MakeReq("C", pb::METHOD_LOCAL, pb::DTYPE_BFLOAT16, 2, 1, 20, 12, 8, 4, 9);
  SendRequest(w, c, 50, /*interleave=*/true);

  // Missing chunks: the stream ends before "part" is complete.
  r = MakeReq("part", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4,
              10);
  SendHeader(w, r.header);
  SendChunk(w, "part", pb::TENSOR_NAME_Q, 0, r.q);
  SendChunk(w, "part", pb::TENSOR_NAME_K, 0,
            absl::string_view(r.k).substr(0, 20));
  want["part"] = {grpc::StatusCode::INVALID_ARGUMENT,
                  "tensor k: 20 of 128 bytes"};

  s->WritesDone();
  std::map<std::string, Reply> replies = ReadAll(w);
  const grpc::Status st = s->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();

  ExpectOutput(replies["A"], a, "A");
  ExpectOutput(replies["C"], c, "C");
  for (const auto& [id, expect] : want) {
    SCOPED_TRACE(id);
    const Reply& rep = replies[id];
    EXPECT_TRUE(rep.has_error);
    EXPECT_EQ(rep.messages, 1) << "exactly one message per failed request";
    EXPECT_TRUE(rep.last);
    EXPECT_EQ(rep.code, static_cast<int>(expect.first)) << rep.message;
    EXPECT_THAT(rep.message, HasSubstr(expect.second));
  }
  EXPECT_EQ(replies.size(), want.size() + 2);
  EXPECT_EQ(server_->inflight_requests(), 0);
}

TEST_F(ServiceTest, InflightLimitPerStreamAndReuseOfIds) {
  ServerOptions o = TestOptions();
  o.service.max_inflight_per_stream = 2;
  StartServer(o);
  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  const Req r1 =
      MakeReq("1", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 1);
  const Req r2 =
      MakeReq("2", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 2);
  const Req r3 =
      MakeReq("3", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 3);
  SendHeader(s.get(), r1.header);
  SendHeader(s.get(), r2.header);
  SendHeader(s.get(), r3.header);  // third in flight: refused
  std::map<std::string, Reply> got = ReadUntilDone(s.get(), {"3"});
  EXPECT_EQ(got["3"].code,
            static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  EXPECT_THAT(got["3"].message, HasSubstr("max_inflight_per_stream"));
  SendCancel(s.get(), "2");
  got = ReadUntilDone(s.get(), {"2"});
  EXPECT_EQ(got["2"].code, static_cast<int>(grpc::StatusCode::CANCELLED));
  // Now there is room again: "1" (still uploading) completes, and the
  // answered ids "2" and "3" may be used again.
  for (const auto& [name, bytes] :
       {std::pair<pb::TensorName, const std::string*>{pb::TENSOR_NAME_Q, &r1.q},
        {pb::TENSOR_NAME_K, &r1.k},
        {pb::TENSOR_NAME_V, &r1.v}}) {
    SendChunk(s.get(), "1", name, 0, *bytes);
  }
  SendRequest(s.get(), r2, 48);
  got = ReadUntilDone(s.get(), {"1", "2"});
  ExpectOutput(got["1"], r1, "1");
  ExpectOutput(got["2"], r2, "2");
  SendRequest(s.get(), r3, 48);
  got = ReadUntilDone(s.get(), {"3"});
  ExpectOutput(got["3"], r3, "3");
  s->WritesDone();
  EXPECT_TRUE(ReadAll(s.get()).empty());
  EXPECT_TRUE(s->Finish().ok());
}

TEST_F(ServiceTest, ClientThatDoesNotReadGetsEveryAnswerEventually) {
  // 3000 chunks for distinct unknown ids: 3000 error answers, far more than
  // the server queues per stream (8 here), sent while the client is not
  // reading yet. The server stops reading while its answers back up, then
  // goes on: every answer arrives, once.
  ServerOptions o = TestOptions();
  o.service.max_queued_answers = 8;
  StartServer(o);
  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  constexpr int kMessages = 3000;
  std::map<std::string, Reply> replies;
  std::thread reader([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    replies = ReadAll(s.get());
  });
  for (int i = 0; i < kMessages; ++i) {
    SendChunk(s.get(), absl::StrCat("u", i), pb::TENSOR_NAME_Q, 0, "abcd");
  }
  // A good request after the flood still works.
  const Req a =
      MakeReq("A", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 1);
  SendRequest(s.get(), a, 64);
  s->WritesDone();
  reader.join();
  EXPECT_TRUE(s->Finish().ok());
  ASSERT_EQ(replies.size(), static_cast<size_t>(kMessages + 1));
  for (int i = 0; i < kMessages; ++i) {
    const Reply& r = replies[absl::StrCat("u", i)];
    EXPECT_EQ(r.messages, 1);
    EXPECT_EQ(r.code, static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  }
  ExpectOutput(replies["A"], a, "A");
}

TEST_F(ServiceTest, QueueFullIsUnavailableAndCancelRemovesQueuedWork) {
  ServerOptions o = TestOptions();
  o.executor.batcher.max_queue_requests = 1;
  o.executor.batcher.max_batch_requests = 8;
  o.executor.batcher.max_queue_delay_us = 60'000'000;  // A stays queued
  StartServer(o);
  grpc::ClientContext ctx1;
  Stream s1 = stub_->Attend(&ctx1);
  const Req a =
      MakeReq("A", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 1);
  SendRequest(s1.get(), a, 64);
  ASSERT_TRUE(Eventually([&] { return server_->queued_requests() == 1; }));

  auto stub2 = pb::AttentionService::NewStub(NewChannel());
  grpc::ClientContext ctx2;
  Stream s2 = stub2->Attend(&ctx2);
  const Req b =
      MakeReq("B", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 2);
  SendRequest(s2.get(), b, 64);
  std::map<std::string, Reply> got = ReadUntilDone(s2.get(), {"B"});
  EXPECT_EQ(got["B"].code, static_cast<int>(grpc::StatusCode::UNAVAILABLE));
  EXPECT_THAT(got["B"].message, HasSubstr("queue"));
  s2->WritesDone();
  EXPECT_TRUE(s2->Finish().ok());

  SendCancel(s1.get(), "A");
  got = ReadUntilDone(s1.get(), {"A"});
  EXPECT_EQ(got["A"].code, static_cast<int>(grpc::StatusCode::CANCELLED));
  EXPECT_EQ(got["A"].messages, 1);
  EXPECT_EQ(server_->queued_requests(), 0);
  s1->WritesDone();
  EXPECT_TRUE(ReadAll(s1.get()).empty());
  EXPECT_TRUE(s1->Finish().ok());
  // Nothing was computed: no batch ran at all.
  const std::string text = server_->metrics().Serialize();
  EXPECT_LE(MetricValue(text, "scatterbrain_batch_size_count"), 0) << text;
  EXPECT_EQ(
      MetricValue(
          text,
          "scatterbrain_requests_total{code=\"CANCELLED\",method=\"exact\"}"),
      1);
  EXPECT_EQ(
      MetricValue(
          text,
          "scatterbrain_requests_total{code=\"UNAVAILABLE\",method=\"exact\"}"),
      1);
}

TEST_F(ServiceTest, ClientCancellationDropsTheStreamsWork) {
  ServerOptions o = TestOptions();
  o.executor.batcher.max_queue_delay_us = 60'000'000;
  StartServer(o);
  // One request queued (complete), one half uploaded; then the client
  // cancels the whole stream.
  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  const Req a =
      MakeReq("A", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 2, 16, 16, 8, 8, 1);
  const Req b =
      MakeReq("B", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 2, 16, 16, 8, 8, 2);
  SendRequest(s.get(), a, 128);
  SendHeader(s.get(), b.header);
  SendChunk(s.get(), "B", pb::TENSOR_NAME_Q, 0,
            absl::string_view(b.q).substr(0, 100));
  ASSERT_TRUE(Eventually([&] {
    return server_->queued_requests() == 1 && server_->inflight_requests() == 2;
  }));
  ctx.TryCancel();
  ReadAll(s.get());
  EXPECT_EQ(s->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Eventually([&] {
    return server_->queued_requests() == 0 && server_->inflight_requests() == 0;
  }));
  const std::string text = server_->metrics().Serialize();
  EXPECT_LE(MetricValue(text, "scatterbrain_batch_size_count"), 0) << text;
  EXPECT_EQ(
      MetricValue(
          text,
          "scatterbrain_requests_total{code=\"CANCELLED\",method=\"exact\"}"),
      2);
  EXPECT_EQ(MetricValue(text, "scatterbrain_inflight_requests"), 0);
  // The server is fine afterwards.
  grpc::ClientContext ctx2;
  Stream s2 = stub_->Attend(&ctx2);
  SendRequest(s2.get(), a, 128);
  SendCancel(s2.get(), "A");  // cancelled while queued (60 s delay)
  s2->WritesDone();
  std::map<std::string, Reply> got = ReadAll(s2.get());
  EXPECT_EQ(got["A"].code, static_cast<int>(grpc::StatusCode::CANCELLED));
  EXPECT_TRUE(s2->Finish().ok());
}

TEST_F(ServiceTest, StreamDeadlineDropsWork) {
  ServerOptions o = TestOptions();
  o.executor.batcher.max_queue_delay_us = 60'000'000;
  StartServer(o);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(300));
  Stream s = stub_->Attend(&ctx);
  const Req a =
      MakeReq("A", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 1);
  SendRequest(s.get(), a, 64);
  ReadAll(s.get());  // returns when the deadline ends the stream
  EXPECT_EQ(s->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(Eventually([&] {
    return server_->queued_requests() == 0 && server_->inflight_requests() == 0;
  }));
  // The same for a unary call.
  pb::AttendUnaryRequest u;
  *u.mutable_header() = a.header;
  u.set_q(a.q);
  u.set_k(a.k);
  u.set_v(a.v);
  pb::AttendUnaryResponse resp;
  grpc::ClientContext uctx;
  uctx.set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(300));
  EXPECT_EQ(stub_->AttendUnary(&uctx, u, &resp).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(Eventually([&] {
    return server_->queued_requests() == 0 && server_->inflight_requests() == 0;
  }));
  const std::string text = server_->metrics().Serialize();
  EXPECT_LE(MetricValue(text, "scatterbrain_batch_size_count"), 0);
  // Both dropped requests are counted; as DEADLINE_EXCEEDED normally (a
  // cancel that beats the server's copy of the deadline by more than the
  // server's slack, on a loaded machine, counts as CANCELLED).
  EXPECT_TRUE(Eventually([&] {
    const std::string t = server_->metrics().Serialize();
    return std::max(0.0,
                    MetricValue(t,
                                "scatterbrain_requests_total{code="
                                "\"DEADLINE_EXCEEDED\",method=\"exact\"}")) +
               std::max(0.0, MetricValue(t,
                                         "scatterbrain_requests_total{code="
                                         "\"CANCELLED\",method=\"exact\"}")) ==
           2;
  }));
}

TEST_F(ServiceTest, ServerInfoHealthAndReflection) {
  ServerOptions o = TestOptions();
  o.service.limits.max_seq = 4096;
  o.executor.batcher.max_batch_requests = 5;
  StartServer(o);
  pb::ServerInfo info;
  grpc::ClientContext ctx;
  ASSERT_TRUE(
      stub_->GetServerInfo(&ctx, pb::GetServerInfoRequest(), &info).ok());
  EXPECT_FALSE(info.version().empty());
  EXPECT_EQ(info.backend(), "cpu");
  EXPECT_THAT(info.backends(), ::testing::Contains("cpu"));
  EXPECT_FALSE(info.devices().empty());
  EXPECT_EQ(info.limits().max_seq(), 4096u);
  EXPECT_EQ(info.limits().max_batch_requests(), 5u);
  EXPECT_EQ(info.limits().chunk_bytes(),
            static_cast<uint64_t>(o.service.chunk_bytes));
  EXPECT_EQ(info.limits().max_request_bytes(),
            static_cast<uint64_t>(o.service.limits.max_request_bytes));
  EXPECT_EQ(info.limits().error_sample_rows(), 4u);

  EXPECT_THAT(CheckHealth(channel_), IsOkAndHolds(ServingStatus::kServing));

  // Reflection: list_services (field 7) on the v1alpha stream.
  grpc::GenericStub generic(channel_);
  grpc::CompletionQueue cq;
  grpc::ClientContext rctx;
  rctx.set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(10));
  auto call = generic.PrepareCall(
      &rctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      &cq);
  auto step = [&cq](void* tag) {
    void* got = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&got, &ok));
    EXPECT_EQ(got, tag);
    return ok;
  };
  int tags[5];
  call->StartCall(&tags[0]);
  ASSERT_TRUE(step(&tags[0]));
  const char list_services[] = {0x3a, 0x00};
  grpc::Slice req_slice(list_services, 2);
  grpc::ByteBuffer req(&req_slice, 1);
  call->Write(req, &tags[1]);
  ASSERT_TRUE(step(&tags[1]));
  grpc::ByteBuffer resp;
  call->Read(&resp, &tags[2]);
  ASSERT_TRUE(step(&tags[2]));
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(resp.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& sl : slices) {
    bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  }
  EXPECT_THAT(bytes, HasSubstr("scatterbrain.v1.AttentionService"));
  call->WritesDone(&tags[3]);
  step(&tags[3]);
  grpc::Status status;
  call->Finish(&status, &tags[4]);
  step(&tags[4]);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(ServiceTest, DrainFinishesInFlightWorkAndRefusesNewWork) {
  StartServer(TestOptions());
  // An idle second stream: the drain must end it rather than wait for it.
  auto stub2 = pb::AttentionService::NewStub(NewChannel());
  grpc::ClientContext idle_ctx;
  Stream idle = stub2->Attend(&idle_ctx);

  grpc::ClientContext ctx;
  Stream s = stub_->Attend(&ctx);
  const Req a = MakeReq("A", pb::METHOD_SCATTERBRAIN, pb::DTYPE_FLOAT16, 1, 2,
                        64, 64, 16, 16, 1);
  // A is accepted but not complete: it stays in flight until we finish it.
  SendHeader(s.get(), a.header);
  SendChunk(s.get(), "A", pb::TENSOR_NAME_Q, 0, a.q);
  ASSERT_TRUE(Eventually([&] { return server_->inflight_requests() == 1; }));

  std::thread drain([&] { server_->Shutdown(); });
  ASSERT_TRUE(Eventually([&] {
    return ::testing::Value(CheckHealth(channel_),
                            IsOkAndHolds(ServingStatus::kNotServing));
  }));

  // New work is refused: on the open stream, and as a unary call.
  const Req b =
      MakeReq("B", pb::METHOD_EXACT, pb::DTYPE_FLOAT32, 1, 1, 8, 8, 4, 4, 2);
  SendHeader(s.get(), b.header);
  std::map<std::string, Reply> got = ReadUntilDone(s.get(), {"B"});
  EXPECT_EQ(got["B"].code, static_cast<int>(grpc::StatusCode::UNAVAILABLE));
  EXPECT_THAT(got["B"].message, HasSubstr("draining"));
  pb::AttendUnaryRequest u;
  *u.mutable_header() = b.header;
  u.set_q(b.q);
  u.set_k(b.k);
  u.set_v(b.v);
  pb::AttendUnaryResponse resp;
  grpc::ClientContext uctx;
  EXPECT_EQ(stub_->AttendUnary(&uctx, u, &resp).error_code(),
            grpc::StatusCode::UNAVAILABLE);

  // The idle stream was ended by the drain.
  EXPECT_TRUE(ReadAll(idle.get()).empty());
  EXPECT_EQ(idle->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);

  // The in-flight request completes normally.
  SendChunk(s.get(), "A", pb::TENSOR_NAME_K, 0, a.k);
  SendChunk(s.get(), "A", pb::TENSOR_NAME_V, 0, a.v);
  got = ReadUntilDone(s.get(), {"A"});
  ExpectOutput(got["A"], a, "A");
  s->WritesDone();
  ReadAll(s.get());
  const grpc::Status st = s->Finish();
  EXPECT_TRUE(st.ok() || st.error_code() == grpc::StatusCode::UNAVAILABLE)
      << st.error_message();
  drain.join();
  EXPECT_EQ(server_->inflight_requests(), 0);

  // After the drain the server is gone.
  auto late = pb::AttentionService::NewStub(NewChannel());
  grpc::ClientContext lctx;
  lctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  pb::ServerInfo info;
  EXPECT_FALSE(
      late->GetServerInfo(&lctx, pb::GetServerInfoRequest(), &info).ok());
}

TEST_F(ServiceTest, StartFailsCleanlyOnBadOptionsAndBusyPort) {
  ServerOptions o = TestOptions();
  o.service.chunk_bytes = 1;
  EXPECT_EQ(Server::Start(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = TestOptions();
  o.executor.backend = "tpu";
  EXPECT_EQ(Server::Start(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The backend's options are checked before a backend is made.
  for (auto edit :
       {+[](ServerOptions* x) { x->executor.backend_options.streams = 0; },
        +[](ServerOptions* x) { x->executor.backend_options.device = -1; },
        +[](ServerOptions* x) { x->executor.backend_options.threads = -2; },
        +[](ServerOptions* x) {
          x->executor.backend_options.workspace_limit_bytes = -1;
        }}) {
    o = TestOptions();
    edit(&o);
    EXPECT_EQ(Server::Start(o).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  StartServer(TestOptions());
  o = TestOptions();
  o.port = server_->port();
  absl::StatusOr<std::unique_ptr<Server>> second = Server::Start(o);
  EXPECT_FALSE(second.ok());
}

// Many streams doing everything at once — complete, partial, cancelled and
// duplicate requests; client cancels mid-stream, after the first answer, or
// half-closes — against small batches and a tiny answer queue. Whatever the
// interleaving, every stream ends and the server is left with nothing in
// flight. (Run under AddressSanitizer, this is the reactor-lifetime test.)
TEST_F(ServiceTest, ManyStreamsMisbehavingAtOnceLeaveNothingBehind) {
  ServerOptions o = TestOptions();
  o.executor.batcher.max_batch_requests = 3;
  o.executor.batcher.max_queue_delay_us = 2000;
  o.service.max_queued_answers = 4;
  StartServer(o);
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      auto stub = pb::AttentionService::NewStub(NewChannel());
      for (int iter = 0; iter < 40; ++iter) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(20));
        Stream s = stub->Attend(&ctx);
        bool answered = false;  // some request will get an answer
        const int n = 1 + rng() % 5;
        for (int r = 0; r < n; ++r) {
          // Ids repeat within a stream: duplicates and reuse happen.
          const Req req =
              MakeReq(absl::StrCat("r", r % 3), pb::METHOD_SCATTERBRAIN,
                      pb::DTYPE_FLOAT16, 1, 2, 32, 32, 16, 16, r);
          const int mode = rng() % 6;
          if (mode == 0) {  // header and a few bytes only
            SendHeader(s.get(), req.header);
            SendChunk(s.get(), req.header.request_id(), pb::TENSOR_NAME_Q, 0,
                      absl::string_view(req.q).substr(0, 10));
          } else {
            SendRequest(s.get(), req, 300);
            answered = true;
          }
          if (mode == 1) SendCancel(s.get(), req.header.request_id());
        }
        const int end = rng() % 4;
        if (end == 0) {
          ctx.TryCancel();
        } else if (end == 1 && answered) {
          pb::AttendResponse m;
          s->Read(&m);
          ctx.TryCancel();
        } else {
          s->WritesDone();
        }
        pb::AttendResponse m;
        while (s->Read(&m)) {
        }
        const grpc::Status st = s->Finish();
        EXPECT_TRUE(st.ok() || st.error_code() == grpc::StatusCode::CANCELLED)
            << st.error_message();
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_TRUE(Eventually([&] {
    return server_->inflight_requests() == 0 && server_->queued_requests() == 0;
  }));
  EXPECT_EQ(MetricValue(server_->metrics().Serialize(),
                        "scatterbrain_inflight_requests"),
            0);
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
