// server/executor, below any transport: jobs built with MakeRequestSpec run
// through the batcher and the CPU backend and come back equal to a direct
// backend call; batches form by size under a fake clock; cancel, drain and
// stop answer every job exactly once. This binary links the core library
// (sb_executor) alone — no protobuf, no gRPC — which is the build's proof
// that the executor and everything below it are transport-free.
#include "server/executor.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/params.h"
#include "server/clock.h"
#include "server/metrics.h"
#include "server/request.h"
#include "tests/testutil/job_results.h"

namespace scatterbrain {
namespace server {
namespace {

using ::testing::HasSubstr;

using Results = testutil::JobResults;

std::vector<float> Random(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = g(rng);
  return x;
}

AttentionParams Params(Method method, int64_t seq_q, int64_t seq_k) {
  AttentionParams p;
  p.method = method;
  p.batch = 2;
  p.heads = 3;
  p.seq_q = seq_q;
  p.seq_k = seq_k;
  p.dim = 16;
  p.dim_v = 8;
  p.num_features = 16;
  p.bucket_size = 8;
  p.window = 6;
  p.calibration_rows = 4;
  p.seed = 77;
  return p;
}

struct Inputs {
  std::vector<float> q, k, v;
};

JobPtr MakeJob(const std::string& id, const AttentionParams& p,
               const Inputs& in, Results* results) {
  absl::StatusOr<RequestSpec> spec = MakeRequestSpec(
      id, p, {}, DType::kFloat32, DType::kFloat32, RequestLimits());
  EXPECT_TRUE(spec.ok()) << spec.status();
  auto job = std::make_shared<Job>();
  job->spec = *std::move(spec);
  for (auto [buf, src] : {std::pair{&job->q, &in.q}, std::pair{&job->k, &in.k},
                          std::pair{&job->v, &in.v}}) {
    EXPECT_TRUE(buf->Allocate(static_cast<int64_t>(src->size()), "t").ok());
    std::memcpy(buf->data(), src->data(), src->size() * sizeof(float));
  }
  job->done = [results](const JobPtr& j, JobResult r) {
    results->Add(j, std::move(r));
  };
  return job;
}

Inputs MakeInputs(const AttentionParams& p, uint64_t seed) {
  const AttentionShape s = ShapeOf(p);
  return Inputs{Random(s.q_elements(), seed), Random(s.k_elements(), seed + 1),
                Random(s.v_elements(), seed + 2)};
}

// The same call made on the CPU backend directly.
std::vector<float> Direct(AttentionParams p, const Inputs& in) {
  std::vector<float> out(static_cast<size_t>(ShapeOf(p).out_elements()));
  p.q = in.q.data();
  p.k = in.k.data();
  p.v = in.v.data();
  p.out = out.data();
  SetContiguousStrides(p);
  auto backend = CreateBackend("cpu");
  EXPECT_TRUE(backend.ok());
  EXPECT_TRUE((*backend)->Forward(p).ok());
  return out;
}

class ExecutorTest : public ::testing::Test {
 protected:
  void Start(ExecutorOptions o) {
    o.backend = "cpu";
    absl::StatusOr<std::unique_ptr<Executor>> e =
        Executor::Create(o, &metrics_, &clock_);
    ASSERT_TRUE(e.ok()) << e.status();
    executor_ = *std::move(e);
  }
  static ExecutorOptions WaitForSize(int batch) {
    ExecutorOptions o;
    o.batcher.max_batch_requests = batch;
    o.batcher.max_queue_delay_us = 60'000'000;  // only size closes a batch
    o.error_sample_rows = 4;
    return o;
  }

  Metrics metrics_;
  FakeClock clock_{1'000'000};
  Results results_;
  std::unique_ptr<Executor> executor_;
};

TEST_F(ExecutorTest, EveryMethodMatchesTheBackendCalledDirectly) {
  Start(WaitForSize(1));
  const Method methods[] = {Method::kExact, Method::kPerformer, Method::kLsh,
                            Method::kLocal, Method::kScatterbrain};
  std::vector<std::pair<std::string, std::vector<float>>> want;
  for (Method m : methods) {
    const AttentionParams p = Params(m, 13, 21);
    const Inputs in = MakeInputs(p, 5);
    ASSERT_TRUE(
        executor_->Submit(MakeJob(MethodName(m), p, in, &results_)).ok());
    want.emplace_back(MethodName(m), Direct(p, in));
  }
  ASSERT_TRUE(results_.WaitFor(want.size()));
  for (const auto& [id, out] : want) {
    JobResult& r = results_.at(id);
    ASSERT_TRUE(r.status.ok()) << id << ": " << r.status;
    EXPECT_EQ(results_.calls(id), 1) << id;
    ASSERT_EQ(r.out.size, static_cast<int64_t>(out.size())) << id;
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_EQ(r.out.data()[i], out[i]) << id << " at " << i;
    }
    EXPECT_EQ(r.stats.backend, "cpu");
    EXPECT_EQ(r.stats.batch_size, 1);
    EXPECT_GT(r.stats.dense_score_bytes, 0);
    // Exact requests are never sampled; approximate ones are.
    EXPECT_EQ(r.stats.estimated_relative_error.has_value(), id != "exact")
        << id;
  }
  EXPECT_THAT(metrics_.Serialize(),
              HasSubstr("scatterbrain_batch_size_count 5"));
}

TEST_F(ExecutorTest, CompatibleRequestsOfDifferentLengthsShareABatch) {
  Start(WaitForSize(3));
  for (int i = 0; i < 3; ++i) {
    const AttentionParams p = Params(Method::kScatterbrain, 9 + i, 17 + 2 * i);
    ASSERT_TRUE(executor_
                    ->Submit(MakeJob(absl::StrCat("r", i), p,
                                     MakeInputs(p, 10 + i), &results_))
                    .ok());
  }
  ASSERT_TRUE(results_.WaitFor(3));
  for (int i = 0; i < 3; ++i) {
    const JobResult& r = results_.at(absl::StrCat("r", i));
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.stats.batch_size, 3);
  }
}

TEST_F(ExecutorTest, CancelDrainAndStopAnswerEveryJobOnce) {
  Start(WaitForSize(8));
  const AttentionParams p = Params(Method::kExact, 5, 7);
  const Inputs in = MakeInputs(p, 3);
  JobPtr a = MakeJob("a", p, in, &results_);
  JobPtr b = MakeJob("b", p, in, &results_);
  ASSERT_TRUE(executor_->Submit(a).ok());
  ASSERT_TRUE(executor_->Submit(b).ok());
  EXPECT_EQ(executor_->queued(), 2);  // the batch waits for size or delay
  executor_->Cancel(a);               // queued: answered now, on this thread
  EXPECT_EQ(results_.at("a").status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(executor_->queued(), 1);
  // Drain: queued work runs at once, new work is refused.
  executor_->Drain();
  ASSERT_TRUE(results_.WaitFor(2));
  EXPECT_TRUE(results_.at("b").status.ok()) << results_.at("b").status;
  const absl::Status refused =
      executor_->Submit(MakeJob("c", p, in, &results_));
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
  executor_->Stop();
  executor_->Stop();  // idempotent
  EXPECT_EQ(results_.calls("a"), 1);
  EXPECT_EQ(results_.calls("b"), 1);
  EXPECT_EQ(results_.calls("c"), 0);  // refused jobs get no callback
}

TEST_F(ExecutorTest, StopAnswersQueuedJobsUnavailable) {
  Start(WaitForSize(8));
  const AttentionParams p = Params(Method::kLocal, 5, 7);
  ASSERT_TRUE(
      executor_->Submit(MakeJob("q", p, MakeInputs(p, 1), &results_)).ok());
  executor_->Stop();
  EXPECT_EQ(results_.at("q").status.code(), absl::StatusCode::kUnavailable);
}

TEST_F(ExecutorTest, BadValuesFailTheirJobAlone) {
  Start(WaitForSize(2));
  const AttentionParams p = Params(Method::kExact, 5, 7);
  Inputs bad = MakeInputs(p, 1);
  bad.k[3] = NAN;
  ASSERT_TRUE(executor_->Submit(MakeJob("bad", p, bad, &results_)).ok());
  ASSERT_TRUE(
      executor_->Submit(MakeJob("good", p, MakeInputs(p, 2), &results_)).ok());
  ASSERT_TRUE(results_.WaitFor(2));
  EXPECT_EQ(results_.at("bad").status.code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(results_.at("good").status.ok());
}

TEST(ExecutorCreateTest, UnknownBackendIsAnError) {
  Metrics metrics;
  ExecutorOptions o;
  o.backend = "tpu";
  absl::StatusOr<std::unique_ptr<Executor>> e =
      Executor::Create(o, &metrics, RealClock::Get());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RequestSpecTest, SizesKeyAndCoreFieldNames) {
  AttentionParams p = Params(Method::kScatterbrain, 16, 24);
  absl::StatusOr<RequestSpec> s = MakeRequestSpec(
      "x", p, {3, 24}, DType::kFloat16, DType::kFloat32, RequestLimits());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->q_bytes, 2 * 3 * 16 * 16 * 2);
  EXPECT_EQ(s->out_bytes, 2 * 3 * 16 * 8 * 4);
  EXPECT_EQ(s->tokens, 2 * 3 * (16 + 24));
  EXPECT_EQ(s->shape(), ShapeOf(p));
  // Errors name the core's fields; the front end adds its own paths.
  p.dim = 0;
  EXPECT_THAT(MakeRequestSpec("x", p, {}, DType::kFloat32, DType::kFloat32,
                              RequestLimits())
                  .status()
                  .message(),
              HasSubstr("dim: must be in"));
  p = Params(Method::kExact, 16, 24);
  RequestLimits small;
  small.max_seq = 20;
  absl::StatusOr<RequestSpec> over =
      MakeRequestSpec("x", p, {}, DType::kFloat32, DType::kFloat32, small);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.status().message(), HasSubstr("seq_k: 24 is over"));
  EXPECT_EQ(MakeRequestSpec("x", p, {1}, DType::kFloat32, DType::kFloat32,
                            RequestLimits())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
