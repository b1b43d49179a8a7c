// scatterbrain/tests/executor_cancel_test.cc — the executor hands each job's
// cancel flag and deadline to the backend: a job whose deadline has passed
// is never started (DEADLINE_EXCEEDED), a running job stops at its deadline
// or when cancelled, cancelling one job of a batch leaves the others alone,
// and scatterbrain_requests_stopped_total counts each by reason and stage.
//
// The executor runs on a fake clock (deadlines are set on it); the backend
// reads the steady clock, so a running job's deadline is a real one. Time
// bounds are relative to the same job's uncancelled time (see cancel_test).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "server/clock.h"
#include "server/executor.h"
#include "server/metrics.h"
#include "server/request.h"
#include "tests/testutil/job_results.h"
#include "tests/testutil/random.h"

namespace scatterbrain {
namespace server {
namespace {

using ::testing::HasSubstr;
using Results = testutil::JobResults;
using Steady = std::chrono::steady_clock;

// The CPU backend, counting the calls that reach it.
class CountingBackend : public Backend {
 public:
  CountingBackend() : cpu_(*CreateBackend("cpu")) {}
  std::string name() const override { return "counting-cpu"; }
  absl::Status Supports(const AttentionParams&) const override {
    return absl::OkStatus();
  }
  int64_t WorkspaceBytes(const AttentionParams& p) const override {
    return cpu_->WorkspaceBytes(p);
  }
  MemoryStats GetMemoryStats() const override { return cpu_->GetMemoryStats(); }
  int calls() const { return calls_.load(); }

 protected:
  absl::StatusOr<AttentionStats> ForwardImpl(
      const AttentionParams& p) override {
    calls_.fetch_add(1);
    return cpu_->Forward(p);
  }

 private:
  std::unique_ptr<Backend> cpu_;
  std::atomic<int> calls_{0};
};

AttentionParams Exact(int64_t heads, int64_t n) {
  AttentionParams p;
  p.method = Method::kExact;
  p.batch = 1;
  p.heads = heads;
  p.seq_q = p.seq_k = n;
  p.dim = p.dim_v = 64;
  return p;
}

class ExecutorCancelTest : public ::testing::Test {
 protected:
  // Batches close at `batch` requests only (the fake clock never moves).
  void Start(int batch) {
    ExecutorOptions o;
    o.batcher.max_batch_requests = batch;
    o.batcher.max_queue_delay_us = 60'000'000;
    o.error_sample_rows = 0;
    auto backend = std::make_unique<CountingBackend>();
    backend_ = backend.get();
    executor_ =
        Executor::CreateWithBackend(o, std::move(backend), &metrics_, &clock_);
  }
  JobPtr MakeJob(const std::string& id, const AttentionParams& p,
                 uint32_t seed) {
    absl::StatusOr<RequestSpec> spec = MakeRequestSpec(
        id, p, {}, DType::kFloat32, DType::kFloat32, RequestLimits());
    EXPECT_TRUE(spec.ok()) << spec.status();
    auto job = std::make_shared<Job>();
    job->spec = *std::move(spec);
    const AttentionShape s = ShapeOf(p);
    const int64_t n[] = {s.q_elements(), s.k_elements(), s.v_elements()};
    TensorBuffer* buf[] = {&job->q, &job->k, &job->v};
    for (int t = 0; t < 3; ++t) {
      const std::vector<float> x = testutil::RandomNormal(n[t], seed + t);
      EXPECT_TRUE(buf[t]->Allocate(n[t], "t").ok());
      std::memcpy(buf[t]->data(), x.data(), x.size() * sizeof(float));
    }
    job->done = [this](const JobPtr& j, JobResult r) {
      results_.Add(j, std::move(r));
    };
    return job;
  }
  // The value of scatterbrain_requests_stopped_total{reason, stage}.
  std::string Stopped(const std::string& reason, const std::string& stage) {
    const std::string text = metrics_.Serialize();
    const std::string key = "scatterbrain_requests_stopped_total{reason=\"" +
                            reason + "\",stage=\"" + stage + "\"} ";
    const size_t at = text.find(key);
    if (at == std::string::npos) return "missing";
    return text.substr(at + key.size(), text.find('\n', at) - at - key.size());
  }

  Metrics metrics_;
  FakeClock clock_{1'000'000};
  Results results_;
  CountingBackend* backend_ = nullptr;
  std::unique_ptr<Executor> executor_;
};

TEST_F(ExecutorCancelTest, AJobPastItsDeadlineIsNeverStarted) {
  Start(2);
  JobPtr late = MakeJob("late", Exact(1, 64), 1);
  late->deadline_us = clock_.NowMicros() + 1000;
  JobPtr fine = MakeJob("fine", Exact(1, 64), 4);
  ASSERT_TRUE(executor_->Submit(late).ok());
  clock_.AdvanceMicros(2000);  // the deadline passes while it is queued
  ASSERT_TRUE(executor_->Submit(fine).ok());
  ASSERT_TRUE(results_.WaitFor(2));
  EXPECT_TRUE(absl::IsDeadlineExceeded(results_.at("late").status))
      << results_.at("late").status;
  EXPECT_THAT(results_.at("late").status.message(), HasSubstr("deadline"));
  EXPECT_TRUE(results_.at("fine").status.ok());
  EXPECT_EQ(backend_->calls(), 1);  // "fine" only
  EXPECT_EQ(Stopped("deadline_exceeded", "queued"), "1");
  EXPECT_EQ(Stopped("cancelled", "running"), "0");
}

TEST_F(ExecutorCancelTest, ARunningJobStopsAtItsDeadline) {
  Start(1);
  const AttentionParams p = Exact(2, 6144);
  // Uncancelled, for the time it takes.
  Steady::time_point t0 = Steady::now();
  ASSERT_TRUE(executor_->Submit(MakeJob("full", p, 1)).ok());
  ASSERT_TRUE(results_.WaitFor(1));
  const double full = std::chrono::duration<double>(Steady::now() - t0).count();
  ASSERT_TRUE(results_.at("full").status.ok());

  // The same with a deadline a fifth of the way in.
  JobPtr job = MakeJob("timed", p, 1);
  const int64_t budget_us = static_cast<int64_t>(full * 1e6 / 5);
  job->deadline_us = clock_.NowMicros() + budget_us;
  t0 = Steady::now();
  ASSERT_TRUE(executor_->Submit(job).ok());
  ASSERT_TRUE(results_.WaitFor(2));
  const double took = std::chrono::duration<double>(Steady::now() - t0).count();
  EXPECT_TRUE(absl::IsDeadlineExceeded(results_.at("timed").status))
      << results_.at("timed").status;
  EXPECT_LT(took - budget_us * 1e-6, 0.25 * full);
  EXPECT_EQ(Stopped("deadline_exceeded", "running"), "1");
  std::printf(
      "[ measured ] exact H=2 N=6144: %.3f s; deadline after %.3f s, "
      "answered after %.3f s\n",
      full, budget_us * 1e-6, took);
}

TEST_F(ExecutorCancelTest, CancellingOneJobOfABatchLeavesTheOthers) {
  Start(3);
  // One batch: a large job first, then two small ones.
  JobPtr big = MakeJob("big", Exact(4, 16384), 1);
  JobPtr a = MakeJob("a", Exact(2, 200), 4);
  JobPtr b = MakeJob("b", Exact(1, 300), 7);
  ASSERT_TRUE(executor_->Submit(big).ok());
  ASSERT_TRUE(executor_->Submit(a).ok());
  const Steady::time_point t0 = Steady::now();
  ASSERT_TRUE(executor_->Submit(b).ok());  // the batch closes and runs
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  executor_->Cancel(big);  // running: the backend sees the flag
  ASSERT_TRUE(results_.WaitFor(3));
  const double took = std::chrono::duration<double>(Steady::now() - t0).count();
  EXPECT_TRUE(absl::IsCancelled(results_.at("big").status))
      << results_.at("big").status;
  EXPECT_EQ(Stopped("cancelled", "running"), "1");
  for (const char* id : {"a", "b"}) {
    const JobResult& r = results_.at(id);
    ASSERT_TRUE(r.status.ok()) << id << ": " << r.status;
    // The right answer: the same call made on its own.
    const JobPtr& job = std::string(id) == "a" ? a : b;
    AttentionParams p = job->spec.params;
    std::vector<float> expect(static_cast<size_t>(job->spec.out_elements));
    const AttentionShape s = ShapeOf(p);
    const uint32_t seed = std::string(id) == "a" ? 4 : 7;
    const std::vector<float> q = testutil::RandomNormal(s.q_elements(), seed);
    const std::vector<float> k =
        testutil::RandomNormal(s.k_elements(), seed + 1);
    const std::vector<float> v =
        testutil::RandomNormal(s.v_elements(), seed + 2);
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    p.out = expect.data();
    ASSERT_TRUE((*CreateBackend("cpu"))->Forward(p).ok());
    EXPECT_EQ(0, std::memcmp(expect.data(), r.out.data(),
                             expect.size() * sizeof(float)))
        << id;
  }
  // "big" alone (3.8e11 estimated flops) takes about 10 s on a 2-core
  // machine; the batch is answered soon after the cancel (generous bound).
  EXPECT_LT(took, 5.0);
  std::printf("[ measured ] batch answered %.3f s after it closed\n", took);
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
