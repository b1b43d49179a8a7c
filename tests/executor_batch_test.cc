// The executor's batch path against a fake device backend that records what
// it is handed: a batch arrives as one ForwardBatchAsync call (varlen: the
// requests' lengths differ), its tensors live in the backend's pinned host
// buffers, up to max_batches_in_flight() batches are with the backend at
// once (the next is handed over while one computes), an out-of-memory batch
// fails with RESOURCE_EXHAUSTED alone, and the device memory gauge carries
// the backend's device label. Links the protobuf-free core alone.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/dtype.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/params.h"
#include "server/clock.h"
#include "server/executor.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/tensor_assembler.h"
#include "tests/testutil/job_results.h"

namespace scatterbrain {
namespace server {
namespace {

using ::testing::HasSubstr;

// What the fake saw of one batch.
struct SeenBatch {
  std::vector<int64_t> seq_q;  // per call
  std::vector<MemorySpace> spaces;
  std::vector<DType> dtypes;
};

// A "device" that computes with the CPU backend on its own thread, one
// batch at a time per worker, and releases batches only when the test
// opens the gate.
class FakeDeviceBackend : public Backend {
 public:
  FakeDeviceBackend() : cpu_(*CreateBackend("cpu")) {}
  ~FakeDeviceBackend() override {
    for (std::thread& t : workers_) t.join();
  }

  std::string name() const override { return "fake-device"; }
  absl::Status Supports(const AttentionParams&) const override {
    return absl::OkStatus();
  }
  int max_batches_in_flight() const override { return 2; }
  bool ConvertsOnDevice() const override { return true; }
  int64_t WorkspaceBytes(const AttentionParams&) const override { return 0; }
  MemoryStats GetMemoryStats() const override {
    absl::MutexLock lock(&mu_);
    MemoryStats m;
    m.device = "fake:0";
    m.used_bytes = pinned_bytes_live_;
    return m;
  }
  absl::StatusOr<HostBuffer> AllocateHost(int64_t bytes) override {
    {
      absl::MutexLock lock(&mu_);
      ++pinned_allocations_;
      pinned_bytes_live_ += bytes;
    }
    char* p = new char[static_cast<size_t>(bytes)];
    return HostBuffer(p, bytes, MemorySpace::kPinnedHost,
                      [this, bytes](void* d) {
                        delete[] static_cast<char*>(d);
                        absl::MutexLock lock(&mu_);
                        pinned_bytes_live_ -= bytes;
                      });
  }

  // Batches wait for this before they compute.
  void OpenGate() {
    absl::MutexLock lock(&mu_);
    gate_open_ = true;
  }
  void FailNextBatchOutOfMemory() {
    absl::MutexLock lock(&mu_);
    fail_next_ = true;
  }
  // Waits (bounded) until `n` batches are with the backend at once.
  bool WaitInFlight(int n) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return in_flight_ >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), absl::Seconds(30));
  }
  std::vector<SeenBatch> seen() const {
    absl::MutexLock lock(&mu_);
    return seen_;
  }
  int max_in_flight() const {
    absl::MutexLock lock(&mu_);
    return max_in_flight_;
  }
  int pinned_allocations() const {
    absl::MutexLock lock(&mu_);
    return pinned_allocations_;
  }

 protected:
  absl::StatusOr<AttentionStats> ForwardImpl(
      const AttentionParams& p) override {
    return cpu_->Forward(p);
  }
  void ForwardBatchAsyncImpl(absl::Span<AttentionCall*> calls,
                             std::function<void()> done) override {
    SeenBatch seen;
    for (const AttentionCall* c : calls) {
      seen.seq_q.push_back(c->params.seq_q);
      for (MemorySpace s : {c->q.space, c->k.space, c->v.space, c->out.space})
        seen.spaces.push_back(s);
      for (DType d : {c->q.dtype, c->k.dtype, c->v.dtype})
        seen.dtypes.push_back(d);
    }
    bool fail;
    {
      absl::MutexLock lock(&mu_);
      seen_.push_back(std::move(seen));
      ++in_flight_;
      max_in_flight_ = std::max(max_in_flight_, in_flight_);
      fail = fail_next_;
      fail_next_ = false;
    }
    std::vector<AttentionCall*> mine(calls.begin(), calls.end());
    workers_.emplace_back([this, mine, fail, done = std::move(done)]() mutable {
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(&gate_open_));
      }
      if (fail) {
        for (AttentionCall* c : mine) {
          c->status = absl::ResourceExhaustedError(
              "fake device: out of memory for this batch");
        }
      } else {
        ForwardBatchImpl(absl::MakeSpan(mine));  // the default: host float32
      }
      {
        absl::MutexLock lock(&mu_);
        --in_flight_;
      }
      done();
    });
  }

 private:
  std::unique_ptr<Backend> cpu_;
  std::vector<std::thread> workers_;  // dispatcher thread only, then ~
  mutable absl::Mutex mu_;
  bool gate_open_ ABSL_GUARDED_BY(mu_) = false;
  bool fail_next_ ABSL_GUARDED_BY(mu_) = false;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int max_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int pinned_allocations_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t pinned_bytes_live_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<SeenBatch> seen_ ABSL_GUARDED_BY(mu_);
};

using Results = testutil::JobResults;

class ExecutorBatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto fake = std::make_unique<FakeDeviceBackend>();
    fake_ = fake.get();
    ExecutorOptions o;
    o.batcher.max_batch_requests = 3;
    o.batcher.max_queue_delay_us = 60'000'000;  // only size closes a batch
    o.error_sample_rows = 0;
    executor_ =
        Executor::CreateWithBackend(o, std::move(fake), &metrics_, &clock_);
  }
  void TearDown() override {
    fake_->OpenGate();
    executor_->Stop();
    done_.Clear();
  }

  // A job with `seq` query and key rows, its tensors in the executor's
  // (the backend's) host buffers; `settings` picks its batch.
  JobPtr Job(const std::string& id, int seq, int settings = 0) {
    AttentionParams p;
    p.method = Method::kExact;
    p.batch = 1;
    p.heads = 2;
    p.seq_q = seq;
    p.seq_k = seq + 3;
    p.dim = 8;
    p.dim_v = 4;
    p.seed = static_cast<uint64_t>(settings);  // part of the batch key
    absl::StatusOr<RequestSpec> spec = MakeRequestSpec(
        id, p, {}, DType::kFloat32, DType::kFloat32, RequestLimits());
    EXPECT_TRUE(spec.ok()) << spec.status();
    auto job = std::make_shared<::scatterbrain::server::Job>();
    job->spec = *std::move(spec);
    std::mt19937 rng(static_cast<uint32_t>(seq));
    std::normal_distribution<float> g;
    const AttentionShape s = ShapeOf(p);
    const std::pair<TensorBuffer*, int64_t> tensors[] = {
        {&job->q, s.q_elements()},
        {&job->k, s.k_elements()},
        {&job->v, s.v_elements()}};
    for (auto [buf, n] : tensors) {
      EXPECT_TRUE(buf->Allocate(n, "t", executor_->host_allocator()).ok());
      for (int64_t i = 0; i < n; ++i) buf->data()[i] = g(rng);
    }
    job->done = [this](const JobPtr& j, JobResult r) {
      done_.Add(j, std::move(r));
    };
    return job;
  }

  // The job's output computed by the CPU backend directly.
  static std::vector<float> Direct(const JobPtr& job) {
    AttentionParams p = job->spec.params;
    std::vector<float> out(static_cast<size_t>(job->spec.out_elements));
    p.q = job->q.data();
    p.k = job->k.data();
    p.v = job->v.data();
    p.out = out.data();
    SetContiguousStrides(p);
    EXPECT_TRUE((*CreateBackend("cpu"))->Forward(p).ok());
    return out;
  }

  Metrics metrics_;
  FakeClock clock_{1'000'000};
  Results done_;
  FakeDeviceBackend* fake_ = nullptr;
  std::unique_ptr<Executor> executor_;
};

TEST_F(ExecutorBatchTest, ABatchIsOneCallOnPinnedBuffers) {
  fake_->OpenGate();
  std::vector<std::pair<std::string, std::vector<float>>> want;
  for (int i = 0; i < 3; ++i) {
    JobPtr job = Job(absl::StrCat("r", i), 5 + 4 * i);
    want.emplace_back(job->spec.request_id, Direct(job));
    ASSERT_TRUE(executor_->Submit(job).ok());
  }
  ASSERT_TRUE(done_.WaitFor(3));
  const std::vector<SeenBatch> seen = fake_->seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].seq_q, (std::vector<int64_t>{5, 9, 13}));
  for (MemorySpace s : seen[0].spaces) EXPECT_EQ(s, MemorySpace::kPinnedHost);
  // q, k, v per job, and each output.
  EXPECT_EQ(fake_->pinned_allocations(), 3 * 4);
  for (const auto& [id, out] : want) {
    JobResult& r = done_.at(id);
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.stats.batch_size, 3);
    EXPECT_EQ(r.stats.backend, "fake-device");
    ASSERT_EQ(r.out.size, static_cast<int64_t>(out.size()));
    for (size_t i = 0; i < out.size(); ++i) ASSERT_EQ(r.out.data()[i], out[i]);
  }
  executor_->Stop();
  EXPECT_THAT(
      metrics_.Serialize(),
      HasSubstr("scatterbrain_device_memory_used_bytes{device=\"fake:0\"}"));
}

TEST_F(ExecutorBatchTest, TheNextBatchIsHandedOverWhileOneComputes) {
  // Three batches of three (different settings, so three queues): with the
  // gate closed, two reach the backend and the third waits for room.
  for (int b = 0; b < 3; ++b) {
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(
          executor_->Submit(Job(absl::StrCat("b", b, "r", i), 4 + i, b)).ok());
    }
  }
  ASSERT_TRUE(fake_->WaitInFlight(2));
  EXPECT_EQ(fake_->seen().size(), 2u);
  fake_->OpenGate();
  ASSERT_TRUE(done_.WaitFor(9));
  EXPECT_EQ(fake_->seen().size(), 3u);
  EXPECT_EQ(fake_->max_in_flight(), 2);
  for (int b = 0; b < 3; ++b) {
    EXPECT_TRUE(done_.at(absl::StrCat("b", b, "r0")).status.ok());
  }
}

TEST_F(ExecutorBatchTest, OutOfMemoryFailsThatBatchAlone) {
  fake_->FailNextBatchOutOfMemory();
  fake_->OpenGate();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(executor_->Submit(Job(absl::StrCat("oom", i), 6, 1)).ok());
  }
  ASSERT_TRUE(done_.WaitFor(3));
  for (int i = 0; i < 3; ++i) {
    const JobResult& r = done_.at(absl::StrCat("oom", i));
    EXPECT_EQ(r.status.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(r.out.size, 0);  // released
  }
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(executor_->Submit(Job(absl::StrCat("ok", i), 6, 1)).ok());
  }
  ASSERT_TRUE(done_.WaitFor(6));
  EXPECT_TRUE(done_.at("ok0").status.ok());
}

// A backend that converts on its device gets the wire dtype as it came; the
// executor still computes the error estimate (decoding for it on the host).
TEST_F(ExecutorBatchTest, WireDTypeInputsReachTheBackendUnconverted) {
  fake_->OpenGate();
  ExecutorOptions o;
  o.batcher.max_batch_requests = 1;
  o.error_sample_rows = 4;
  Metrics metrics;
  auto fake = std::make_unique<FakeDeviceBackend>();
  FakeDeviceBackend* backend = fake.get();
  backend->OpenGate();
  std::unique_ptr<Executor> executor =
      Executor::CreateWithBackend(o, std::move(fake), &metrics, &clock_);
  // The results' buffers are this backend's: released before it goes, even
  // when an assertion ends the test early.
  absl::Cleanup release = [&] {
    executor->Stop();
    done_.Clear();
  };
  ASSERT_TRUE(executor->inputs_in_wire_dtype());

  AttentionParams p;
  p.method = Method::kPerformer;
  p.num_features = 16;
  p.batch = 1;
  p.heads = 2;
  p.seq_q = 7;
  p.seq_k = 9;
  p.dim = 8;
  p.dim_v = 4;
  absl::StatusOr<RequestSpec> spec = MakeRequestSpec(
      "h", p, {}, DType::kFloat16, DType::kFloat32, RequestLimits());
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto job = std::make_shared<::scatterbrain::server::Job>();
  job->spec = *spec;
  // Wire bytes through the assembler, kept as float16.
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  std::vector<float> f32[3];
  const AttentionShape s = ShapeOf(p);
  const int64_t n[] = {s.q_elements(), s.k_elements(), s.v_elements()};
  TensorBuffer* dst[] = {&job->q, &job->k, &job->v};
  for (int t = 0; t < 3; ++t) {
    std::vector<float> x(static_cast<size_t>(n[t]));
    for (float& v : x) v = g(rng);
    std::string wire(static_cast<size_t>(n[t] * 2), '\0');
    EncodeFromFloat(DType::kFloat16, x.data(), n[t], wire.data());
    f32[t].resize(x.size());
    DecodeToFloat(DType::kFloat16, wire.data(), n[t], f32[t].data());
    TensorAssembler a;
    ASSERT_TRUE(a.Init("t", DType::kFloat16, n[t], executor->host_allocator(),
                       /*keep_wire_dtype=*/true)
                    .ok());
    ASSERT_TRUE(a.Append(0, absl::string_view(wire).substr(0, 3)).ok());
    ASSERT_TRUE(a.Append(3, absl::string_view(wire).substr(3)).ok());
    ASSERT_TRUE(a.complete());
    *dst[t] = a.Take();
    EXPECT_EQ(dst[t]->dtype, DType::kFloat16);
    EXPECT_EQ(std::memcmp(dst[t]->raw(), wire.data(), wire.size()), 0);
  }
  job->done = [this](const JobPtr& j, JobResult r) {
    done_.Add(j, std::move(r));
  };
  ASSERT_TRUE(executor->Submit(job).ok());
  ASSERT_TRUE(done_.WaitFor(1));
  const std::vector<SeenBatch> seen = backend->seen();
  ASSERT_EQ(seen.size(), 1u);
  for (DType d : seen[0].dtypes) EXPECT_EQ(d, DType::kFloat16);
  JobResult& r = done_.at("h");
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(r.stats.estimated_relative_error.has_value());
  // The output is the CPU's on the decoded inputs.
  std::vector<float> want(static_cast<size_t>(s.out_elements()));
  p.q = f32[0].data();
  p.k = f32[1].data();
  p.v = f32[2].data();
  p.out = want.data();
  SetContiguousStrides(p);
  ASSERT_TRUE((*CreateBackend("cpu"))->Forward(p).ok());
  for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(r.out.data()[i], want[i]);
}

TEST_F(ExecutorBatchTest, StopWaitsForBatchesWithTheBackend) {
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(executor_->Submit(Job(absl::StrCat("s", i), 4)).ok());
  }
  ASSERT_TRUE(fake_->WaitInFlight(1));
  std::thread stopper([this] { executor_->Stop(); });
  fake_->OpenGate();
  stopper.join();
  // Every job completed exactly once, with its result.
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(done_.at(absl::StrCat("s", i)).status.ok());
  }
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
