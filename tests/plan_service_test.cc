// Scatterbrain's per-head choices through the server (in process, CPU
// backend): sparse=auto, global_keys and target_error go in as settings,
// the plans, error bound and cost come back in the stats and the metrics,
// and the output meets the error target against the fp64 exact reference.
// Sessions refuse target_error and accept sparse=auto.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/params.h"
#include "scatterbrain/v1/attention.grpc.pb.h"
#include "server/server.h"
#include "tests/testutil/reference.h"
#include "tests/testutil/service_calls.h"

namespace scatterbrain {
namespace server {
namespace {

namespace pb = ::scatterbrain::v1;
using ::testing::HasSubstr;
using testutil::MetricValue;

// Long enough that an error target is met below exact's cost (at a few
// hundred tokens the ladder's search costs more than exact attention and
// the planner goes exact).
constexpr int kBatch = 2, kHeads = 3, kSeq = 1024, kDim = 32;

std::string Bytes(const float* x, int64_t n) {
  return std::string(reinterpret_cast<const char*>(x), n * sizeof(float));
}

class PlanServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions o = testutil::LoopbackServerOptions();
    o.executor.error_sample_rows = 4;
    absl::StatusOr<std::unique_ptr<Server>> s = Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    stub_ =
        pb::AttentionService::NewStub(testutil::OwnChannel(server_->port()));
    // Neighbouring tokens alike: a family where the choice matters.
    tensors_ = testing::TestTensors::Make(kBatch, kHeads, kSeq, kSeq, kDim,
                                          kDim, testing::kSmooth, 7);
    exact_ = testing::ExactAttentionDouble(tensors_.params);
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  // One AttendUnary call of Scatterbrain with `settings` (method set here)
  // on the test tensors; the output goes into the tensors' out.
  grpc::Status Call(pb::MethodSettings settings, pb::Stats* stats) {
    settings.set_method(pb::METHOD_SCATTERBRAIN);
    settings.set_seed(3);
    pb::AttendUnaryRequest u;
    pb::RequestHeader* h = u.mutable_header();
    *h->mutable_settings() = settings;
    h->set_dtype(pb::DTYPE_FLOAT32);
    pb::Shape* s = h->mutable_shape();
    s->set_batch(kBatch);
    s->set_heads(kHeads);
    s->set_seq_q(kSeq);
    s->set_seq_k(kSeq);
    s->set_dim(kDim);
    s->set_dim_v(kDim);
    const AttentionParams& p = tensors_.params;
    const int64_t n = int64_t{kBatch} * kHeads * kSeq * kDim;
    u.set_q(Bytes(p.q, n));
    u.set_k(Bytes(p.k, n));
    u.set_v(Bytes(p.v, n));
    pb::AttendUnaryResponse resp;
    grpc::ClientContext ctx;
    const grpc::Status st = stub_->AttendUnary(&ctx, u, &resp);
    if (!st.ok()) return st;
    EXPECT_EQ(resp.output().size(), static_cast<size_t>(n * sizeof(float)));
    std::memcpy(tensors_.params.out, resp.output().data(),
                resp.output().size());
    *stats = resp.header().stats();
    return st;
  }

  // The true relative error of the last output against fp64 exact.
  double TrueError() const {
    return testing::RelativeError(tensors_.params, exact_);
  }

  // Every (batch, head) has exactly one plan.
  static void ExpectOnePlanPerHead(const pb::Stats& stats) {
    std::set<std::pair<uint32_t, uint32_t>> seen;
    for (const pb::HeadPlan& h : stats.head_plans()) {
      EXPECT_LT(h.batch(), static_cast<uint32_t>(kBatch));
      EXPECT_LT(h.head(), static_cast<uint32_t>(kHeads));
      EXPECT_TRUE(seen.insert({h.batch(), h.head()}).second)
          << "two plans for b=" << h.batch() << " h=" << h.head();
    }
    EXPECT_EQ(seen.size(), static_cast<size_t>(kBatch * kHeads));
  }

  std::unique_ptr<Server> server_;
  std::unique_ptr<pb::AttentionService::Stub> stub_;
  testing::TestTensors tensors_;
  std::vector<double> exact_;
};

TEST_F(PlanServiceTest, AutoChoosesASupportPerHeadAndCountsIt) {
  pb::MethodSettings s;
  s.set_sparse(pb::SPARSE_SUPPORT_AUTO);
  s.set_num_features(32);
  s.set_bucket_size(32);
  s.set_window(32);
  pb::Stats stats;
  const grpc::Status st = Call(s, &stats);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ExpectOnePlanPerHead(stats);
  for (const pb::HeadPlan& h : stats.head_plans()) {
    EXPECT_FALSE(h.exact());
    EXPECT_TRUE(h.sparse() == pb::SPARSE_SUPPORT_LSH ||
                h.sparse() == pb::SPARSE_SUPPORT_LOCAL ||
                h.sparse() == pb::SPARSE_SUPPORT_BOTH)
        << pb::SparseSupport_Name(h.sparse());
    EXPECT_TRUE(h.has_support_mass());
    EXPECT_GE(h.support_mass(), 0.0);
    EXPECT_LE(h.support_mass(), 1.0 + 1e-9);
  }
  EXPECT_FALSE(stats.has_error_bound());  // no target
  EXPECT_GT(stats.exact_score_evaluations(), 0u);
  EXPECT_LT(stats.score_evaluations(), stats.exact_score_evaluations());
  EXPECT_TRUE(std::isfinite(TrueError()));
  // The same request chooses the same supports (the seed fixes every draw).
  pb::Stats again;
  ASSERT_TRUE(Call(s, &again).ok());
  ASSERT_EQ(again.head_plans_size(), stats.head_plans_size());
  for (int i = 0; i < stats.head_plans_size(); ++i) {
    EXPECT_EQ(again.head_plans(i).sparse(), stats.head_plans(i).sparse());
  }
  // Each plan counted once per request under its support.
  const std::string text = server_->metrics().Serialize();
  double counted = 0;
  for (const char* label : {"lsh", "local", "both", "exact"}) {
    const double v = MetricValue(
        text,
        std::string("scatterbrain_head_plans_total{sparse=\"") + label + "\"}");
    ASSERT_GE(v, 0) << label << "\n" << text;
    counted += v;
  }
  EXPECT_EQ(counted, 2.0 * kBatch * kHeads);
}

TEST_F(PlanServiceTest, TargetErrorIsMetAndItsBoundReported) {
  constexpr double kTarget = 0.3;
  pb::MethodSettings s;
  s.set_sparse(pb::SPARSE_SUPPORT_AUTO);
  s.set_target_error(kTarget);
  s.set_global_keys(2);
  pb::Stats stats;
  const grpc::Status st = Call(s, &stats);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ExpectOnePlanPerHead(stats);
  int approximate = 0;
  for (const pb::HeadPlan& h : stats.head_plans()) {
    if (h.exact()) continue;
    ++approximate;
    ASSERT_TRUE(h.has_error_bound());
    EXPECT_LE(h.error_bound(), kTarget);
    EXPECT_LE(h.error_estimate(), h.error_bound());
  }
  ASSERT_TRUE(stats.has_error_bound());
  EXPECT_LE(stats.error_bound(), kTarget);
  // Measured against fp64 exact, not only estimated.
  EXPECT_LE(TrueError(), kTarget);
  // Some heads met the target below exact's cost, the search included.
  EXPECT_GT(approximate, 0);
  EXPECT_GT(stats.score_evaluations(), 0u);
  EXPECT_LT(stats.score_evaluations(), stats.exact_score_evaluations());
  // The bound is what the error histogram observed (one request, one
  // observation, at most the target).
  const std::string text = server_->metrics().Serialize();
  EXPECT_EQ(MetricValue(text,
                        "scatterbrain_approx_relative_error_count{method="
                        "\"scatterbrain\"}"),
            1);
  EXPECT_LE(MetricValue(text,
                        "scatterbrain_approx_relative_error_sum{method="
                        "\"scatterbrain\"}"),
            kTarget);
}

TEST_F(PlanServiceTest, AnUnreachableTargetFallsBackToExact) {
  pb::MethodSettings s;
  s.set_target_error(1e-6);
  pb::Stats stats;
  const grpc::Status st = Call(s, &stats);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ExpectOnePlanPerHead(stats);
  for (const pb::HeadPlan& h : stats.head_plans()) EXPECT_TRUE(h.exact());
  EXPECT_LT(TrueError(), 1e-5);
  const std::string text = server_->metrics().Serialize();
  EXPECT_EQ(
      MetricValue(text, "scatterbrain_head_plans_total{sparse=\"exact\"}"),
      kBatch * kHeads);
}

TEST_F(PlanServiceTest, BadTargetsAndSupportsAreRefusedByField) {
  pb::MethodSettings s;
  s.set_target_error(1.0);
  pb::Stats stats;
  grpc::Status st = Call(s, &stats);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("header.settings.target_error"));
  s.clear_target_error();
  s.set_sparse(static_cast<pb::SparseSupport>(42));
  st = Call(s, &stats);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(),
              HasSubstr("header.settings.sparse: unknown value 42"));
}

TEST_F(PlanServiceTest, SessionsRefuseTargetErrorAndRunAuto) {
  pb::MethodSettings s;
  s.set_method(pb::METHOD_SCATTERBRAIN);
  s.set_target_error(0.1);
  pb::SessionInfo info;
  grpc::Status st =
      testutil::CreateSession(stub_.get(), s, 1, 2, kDim, kDim, &info);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(),
              HasSubstr("target_error is for one-shot calls"));

  s.clear_target_error();
  s.set_sparse(pb::SPARSE_SUPPORT_AUTO);
  s.set_num_features(16);
  s.set_bucket_size(16);
  s.set_window(16);
  st = testutil::CreateSession(stub_.get(), s, 1, 2, kDim, kDim, &info);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(info.settings().sparse(), pb::SPARSE_SUPPORT_AUTO);
  // A prefill (through the backend's one-shot call), then decode steps.
  constexpr int kPrompt = 64;
  const int64_t rows = int64_t{2} * kPrompt * kDim;
  testutil::Req prefill = testutil::SessionReq(
      "p", info.session_id(), kPrompt, /*append=*/true, /*see_all=*/false,
      testutil::RandomTensor(pb::DTYPE_FLOAT32, rows, 1),
      testutil::RandomTensor(pb::DTYPE_FLOAT32, rows, 2),
      testutil::RandomTensor(pb::DTYPE_FLOAT32, rows, 3));
  testutil::Reply r = testutil::AttendOnce(stub_.get(), prefill);
  ASSERT_FALSE(r.has_error) << r.message;
  for (int step = 0; step < 3; ++step) {
    const int64_t one = int64_t{2} * kDim;
    testutil::Req decode = testutil::SessionReq(
        "d", info.session_id(), 1, /*append=*/true, /*see_all=*/false,
        testutil::RandomTensor(pb::DTYPE_FLOAT32, one, 10 + step),
        testutil::RandomTensor(pb::DTYPE_FLOAT32, one, 20 + step),
        testutil::RandomTensor(pb::DTYPE_FLOAT32, one, 30 + step));
    r = testutil::AttendOnce(stub_.get(), decode);
    ASSERT_FALSE(r.has_error) << r.message;
    ASSERT_EQ(r.output.size(), static_cast<size_t>(one * sizeof(float)));
    const float* out = reinterpret_cast<const float*>(r.output.data());
    for (int64_t i = 0; i < one; ++i) ASSERT_TRUE(std::isfinite(out[i]));
    EXPECT_EQ(r.header.stats().session_lengths(0), kPrompt + step + 1u);
  }
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
