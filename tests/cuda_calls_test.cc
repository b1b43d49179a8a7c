// tests/cuda_calls_test.cc — the CUDA backend's entry points beyond
// Forward: ForwardBatch and ForwardBatchAsync on typed tensor refs in every
// wire dtype and memory space (pageable, pinned from AllocateHost,
// device-resident), a batch against each request alone, a call's own
// failure inside a batch, the workspace limit (RESOURCE_EXHAUSTED, never a
// crash), memory stats and concurrent callers. Guard bytes sit past every
// tensor; outputs start as NaN so an unwritten element shows.
//
// Tolerances as tests/testutil/gpu.h states them; a low-precision output
// may differ from the CPU's by one unit in its last place on top.
// CudaSmokeCallsTest is part of the compute-sanitizer subset.
#include <atomic>
#include <chrono>
#include <cmath>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/testutil/gpu.h"
#include "tests/testutil/reference.h"

namespace scatterbrain {
namespace {

using testutil::AllowedGpuError;
using testutil::GuardedTensor;
using testutil::kCpuAgreement;
using testutil::RelDiff;

// A request: its shape and settings, float32 inputs, key lengths.
struct Request {
  AttentionParams params;
  std::vector<float> q, k, v;
  std::vector<int32_t> key_lengths;
};

Request MakeRequest(Method method, int64_t b, int64_t h, int64_t nq, int64_t nk,
                    int64_t d, int64_t dv, uint64_t seed,
                    std::vector<int32_t> key_lengths = {}) {
  Request r;
  AttentionParams& p = r.params;
  SetShape(AttentionShape{b, h, nq, nk, d, dv}, p);
  p.method = method;
  p.num_features = 64;
  p.bucket_size = 32;
  p.window = 33;
  p.seed = 99;
  const AttentionShape s = ShapeOf(p);
  r.q.resize(s.q_elements());
  r.k.resize(s.k_elements());
  r.v.resize(s.v_elements());
  testing::GenerateInputs(testing::kClustered, seed, 1.0, p, r.q.data(),
                          ContiguousStrides(h, nq, d), r.k.data(),
                          ContiguousStrides(h, nk, d), r.v.data(),
                          ContiguousStrides(h, nk, dv));
  r.key_lengths = std::move(key_lengths);
  return r;
}

// One call's tensors.
struct Buffers {
  GuardedTensor q, k, v, out;
};

Buffers MakeBuffers(const Request& r, DType in, DType out, MemorySpace in_space,
                    MemorySpace out_space, Backend* be) {
  Buffers b;
  auto make = [&](GuardedTensor* t, DType dt, MemorySpace sp, int64_t n,
                  const std::vector<float>* values) {
    absl::StatusOr<GuardedTensor> g = GuardedTensor::Make(dt, n, sp, be);
    ASSERT_TRUE(g.ok()) << g.status();
    *t = *std::move(g);
    if (values != nullptr) {
      ASSERT_TRUE(t->Set(*values).ok());
    }
  };
  const AttentionShape s = ShapeOf(r.params);
  make(&b.q, in, in_space, s.q_elements(), &r.q);
  make(&b.k, in, in_space, s.k_elements(), &r.k);
  make(&b.v, in, in_space, s.v_elements(), &r.v);
  make(&b.out, out, out_space, s.out_elements(), nullptr);
  return b;
}

AttentionCall MakeCall(const Request& r, const Buffers& b) {
  AttentionCall c;
  c.params = r.params;
  c.params.key_lengths = r.key_lengths.empty() ? nullptr : r.key_lengths.data();
  c.q = b.q.ref();
  c.k = b.k.ref();
  c.v = b.v.ref();
  c.out = b.out.mutable_ref();
  return c;
}

// The buffers and calls of several requests in the same dtypes and spaces
// (the calls point into the buffers and the requests' key lengths).
struct Batch {
  std::vector<Buffers> bufs;
  std::vector<AttentionCall> calls;
};

Batch MakeBatch(const std::vector<Request>& reqs, DType in, DType out,
                MemorySpace in_space, MemorySpace out_space, Backend* be) {
  Batch b;
  for (const Request& r : reqs) {
    b.bufs.push_back(MakeBuffers(r, in, out, in_space, out_space, be));
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    b.calls.push_back(MakeCall(reqs[i], b.bufs[i]));
  }
  return b;
}

// The call's output after checks: OK, every guard intact, every element
// written and finite. Empty when the call failed.
std::vector<float> Output(const AttentionCall& c, const Buffers& b,
                          const std::string& what) {
  EXPECT_TRUE(c.status.ok()) << what << ": " << c.status;
  for (const GuardedTensor* t : {&b.q, &b.k, &b.v, &b.out}) {
    absl::StatusOr<bool> intact = t->GuardsIntact();
    EXPECT_TRUE(intact.ok() && *intact) << what << ": a guard was written";
  }
  if (!c.status.ok()) return {};
  absl::StatusOr<std::vector<float>> out = b.out.Read();
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return {};
  for (float x : *out) {
    if (!std::isfinite(x)) {
      ADD_FAILURE() << what << ": an output element is unwritten or not finite";
      return {};
    }
  }
  return *out;
}

// The fp64 reference of `r` on its inputs as `dtype` stores them.
std::vector<double> Reference(const Request& r, DType dtype) {
  std::vector<float> q = r.q, k = r.k, v = r.v;
  for (std::vector<float>* x : {&q, &k, &v}) {
    std::vector<char> bytes(x->size() * DTypeBytes(dtype));
    EncodeFromFloat(dtype, x->data(), x->size(), bytes.data());
    DecodeToFloat(dtype, bytes.data(), x->size(), x->data());
  }
  AttentionParams p = r.params;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.key_lengths = r.key_lengths.empty() ? nullptr : r.key_lengths.data();
  SetContiguousStrides(p);
  return testing::ExactAttentionDouble(p);
}

double ErrorOf(const std::vector<float>& out, const Request& r,
               const std::vector<double>& ref) {
  const AttentionParams& p = r.params;
  return testing::RelativeError(
      out.data(), ContiguousStrides(p.heads, p.seq_q, p.dim_v), p, ref);
}

bool Deterministic(Method m) {
  return m == Method::kExact || m == Method::kPerformer || m == Method::kLocal;
}

// Relative size of one unit in the last place of `dtype` (0 for float32).
double UlpRel(DType dtype) {
  return dtype == DType::kFloat16    ? std::ldexp(1.0, -10)
         : dtype == DType::kBFloat16 ? std::ldexp(1.0, -7)
                                     : 0.0;
}

constexpr Method kMethods[] = {Method::kExact, Method::kPerformer,
                               Method::kLocal, Method::kLsh,
                               Method::kScatterbrain};
constexpr DType kDTypes[] = {DType::kFloat32, DType::kFloat16,
                             DType::kBFloat16};

class CudaCallsTest : public testutil::CudaTest {
 protected:
  // `r` alone through ForwardBatch on `be`; its checked output.
  std::vector<float> RunOne(Backend& be, const Request& r, DType in, DType out,
                            MemorySpace in_space, MemorySpace out_space,
                            const std::string& what) {
    Buffers b = MakeBuffers(r, in, out, in_space, out_space, &be);
    AttentionCall c = MakeCall(r, b);
    be.ForwardBatch(absl::MakeSpan(&c, 1));
    return Output(c, b, what);
  }

  // GPU against CPU for outputs of `r` (same refs' dtypes), by the rules.
  void ExpectAgree(const std::vector<float>& gpu, const std::vector<float>& cpu,
                   const Request& r, DType in, DType out,
                   const std::string& what) {
    if (gpu.empty() || cpu.empty()) return;
    if (Deterministic(r.params.method)) {
      const double diff = RelDiff(gpu, cpu);
      if (out == DType::kFloat32) NoteCpuDiff(diff);
      EXPECT_LE(diff, kCpuAgreement + UlpRel(out)) << what;
    } else {
      const std::vector<double> ref = Reference(r, in);
      EXPECT_LE(ErrorOf(gpu, r, ref), AllowedGpuError(ErrorOf(cpu, r, ref)))
          << what;
    }
  }
};

TEST_F(CudaCallsTest, EveryWireDtypeMatchesTheCpu) {
  for (Method m : kMethods) {
    const Request r = MakeRequest(m, 2, 2, 97, 130, 64, 48, 3, {130, 77});
    for (DType in : kDTypes) {
      std::vector<DType> outs = {DType::kFloat32};
      if (in != DType::kFloat32) outs.push_back(in);
      for (DType out : outs) {
        const std::string what = absl::StrCat(
            MethodName(m), " in ", DTypeName(in), " out ", DTypeName(out));
        const std::vector<float> g =
            RunOne(cuda(), r, in, out, MemorySpace::kHost, MemorySpace::kHost,
                   "cuda " + what);
        const std::vector<float> c =
            RunOne(cpu(), r, in, out, MemorySpace::kHost, MemorySpace::kHost,
                   "cpu " + what);
        ExpectAgree(g, c, r, in, out, what);
      }
    }
  }
}

TEST_F(CudaCallsTest, PinnedAndDeviceRefsGiveTheHostAnswer) {
  absl::StatusOr<HostBuffer> pinned = cuda().AllocateHost(4096);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  if (!stand_in()) {
    EXPECT_EQ(pinned->space(), MemorySpace::kPinnedHost);
  }
  const MemorySpace kHost = MemorySpace::kHost,
                    kPinned = MemorySpace::kPinnedHost, kDevice = DeviceSpace();
  const std::pair<MemorySpace, MemorySpace> spaces[] = {{kPinned, kPinned},
                                                        {kDevice, kDevice},
                                                        {kDevice, kHost},
                                                        {kHost, kDevice},
                                                        {kPinned, kDevice}};
  for (Method m : {Method::kExact, Method::kPerformer, Method::kScatterbrain}) {
    const Request r = MakeRequest(m, 1, 3, 257, 257, 64, 64, 4, {201});
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      const std::vector<float> host =
          RunOne(cuda(), r, dt, dt, kHost, kHost, "host refs");
      for (const auto& [in_space, out_space] : spaces) {
        const std::string what = absl::StrCat(
            MethodName(m), " ", DTypeName(dt), " in ",
            MemorySpaceName(in_space), " out ", MemorySpaceName(out_space));
        const std::vector<float> got =
            RunOne(cuda(), r, dt, dt, in_space, out_space, what);
        if (got.empty() || host.empty()) continue;
        if (Deterministic(m)) {
          EXPECT_LE(RelDiff(got, host), 1e-6 + UlpRel(dt)) << what;
        } else {
          const std::vector<double> ref = Reference(r, dt);
          EXPECT_LE(ErrorOf(got, r, ref),
                    AllowedGpuError(ErrorOf(host, r, ref)))
              << what;
        }
      }
    }
  }
}

TEST_F(CudaCallsTest, ABadCallInABatchFailsAlone) {
  std::vector<Request> reqs;
  for (int i = 0; i < 3; ++i) {
    reqs.push_back(
        MakeRequest(Method::kExact, 2, 1, 40 + i, 50, 32, 16, 10 + i));
  }
  // A non-finite value in device memory: the backend's own scan names it.
  reqs[1].q[((1 * 1 + 0) * 41 + 5) * 32 + 3] = NAN;  // [1, 0, 5, 3]
  Batch batch = MakeBatch(reqs, DType::kFloat32, DType::kFloat32, DeviceSpace(),
                          DeviceSpace(), &cuda());
  std::vector<AttentionCall>& calls = batch.calls;
  // And one the host rejects before the backend sees it.
  Request bad = MakeRequest(Method::kExact, 1, 1, 8, 8, 32, 16, 1);
  Buffers bad_bufs =
      MakeBuffers(bad, DType::kFloat32, DType::kFloat32, MemorySpace::kHost,
                  MemorySpace::kHost, &cuda());
  calls.push_back(MakeCall(bad, bad_bufs));
  calls.back().q.data = nullptr;
  cuda().ForwardBatch(absl::MakeSpan(calls));
  EXPECT_EQ(calls[1].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(calls[1].status.message()),
              ::testing::HasSubstr("q: non-finite value at [1, 0, 5, 3]"));
  EXPECT_EQ(calls[3].status.code(), absl::StatusCode::kInvalidArgument);
  for (size_t i : {0, 2}) {
    const std::vector<float> got = Output(calls[i], batch.bufs[i], "good call");
    const std::vector<float> cpu_out =
        RunOne(cpu(), reqs[i], DType::kFloat32, DType::kFloat32,
               MemorySpace::kHost, MemorySpace::kHost, "cpu");
    if (!got.empty()) NoteCpuDiff(RelDiff(got, cpu_out));
    EXPECT_LE(RelDiff(got, cpu_out), kCpuAgreement);
  }
}

TEST_F(CudaCallsTest, ABatchEqualsEachRequestAlone) {
  struct Size {
    int64_t b, h, nq, nk;
    std::vector<int32_t> lengths;
  };
  const Size sizes[] = {{1, 2, 97, 97, {}},
                        {2, 1, 1025, 1025, {1025, 600}},
                        {1, 3, 1, 300, {}},
                        {3, 2, 200, 77, {77, 1, 40}}};
  for (Method m : kMethods) {
    for (bool causal : {false, true}) {
      std::vector<Request> reqs;
      for (size_t i = 0; i < std::size(sizes); ++i) {
        const Size& s = sizes[i];
        reqs.push_back(
            MakeRequest(m, s.b, s.h, s.nq, s.nk, 64, 48, 20 + i, s.lengths));
        reqs.back().params.causal = causal;
      }
      Batch batch = MakeBatch(reqs, DType::kFloat32, DType::kFloat32,
                              MemorySpace::kHost, MemorySpace::kHost, &cuda());
      cuda().ForwardBatch(absl::MakeSpan(batch.calls));
      for (size_t i = 0; i < reqs.size(); ++i) {
        const std::string what =
            absl::StrCat(MethodName(m), " causal ", causal, " request ", i);
        const std::vector<float> batched =
            Output(batch.calls[i], batch.bufs[i], what);
        const std::vector<float> alone =
            RunOne(cuda(), reqs[i], DType::kFloat32, DType::kFloat32,
                   MemorySpace::kHost, MemorySpace::kHost, what + " alone");
        if (batched.empty() || alone.empty()) continue;
        if (Deterministic(m)) {
          EXPECT_LE(RelDiff(batched, alone), 1e-5) << what;
        } else {
          const std::vector<double> ref = Reference(reqs[i], DType::kFloat32);
          EXPECT_LE(ErrorOf(batched, reqs[i], ref),
                    AllowedGpuError(ErrorOf(alone, reqs[i], ref)))
              << what;
        }
      }
    }
  }
}

TEST_F(CudaCallsTest, AsyncBatchesCompleteOnceEach) {
  const int batches = cuda().max_batches_in_flight() + 2;
  std::vector<Request> reqs;
  for (int i = 0; i < 2 * batches; ++i) {
    reqs.push_back(
        MakeRequest(Method::kExact, 1, 2, 100 + 31 * i, 257, 64, 64, 40 + i));
  }
  std::vector<Buffers> bufs;
  for (const Request& r : reqs) {
    bufs.push_back(MakeBuffers(r, DType::kFloat16, DType::kFloat32,
                               MemorySpace::kPinnedHost,
                               MemorySpace::kPinnedHost, &cuda()));
  }
  std::vector<std::vector<AttentionCall>> calls(batches);
  std::vector<std::atomic<int>> done(batches);
  absl::Mutex mu;
  int finished = 0;
  for (int j = 0; j < batches; ++j) {
    for (int i : {2 * j, 2 * j + 1})
      calls[j].push_back(MakeCall(reqs[i], bufs[i]));
    done[j] = 0;
    cuda().ForwardBatchAsync(absl::MakeSpan(calls[j]), [&, j] {
      done[j].fetch_add(1);
      absl::MutexLock l(&mu);
      ++finished;
    });
  }
  {
    absl::MutexLock l(&mu);
    auto all_done = [&]() { return finished >= batches; };
    const bool all =
        mu.AwaitWithTimeout(absl::Condition(&all_done), absl::Seconds(120));
    ASSERT_TRUE(all) << "async batches did not complete";
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (int j = 0; j < batches; ++j) {
    EXPECT_EQ(done[j].load(), 1) << "batch " << j;
    for (int i : {2 * j, 2 * j + 1}) {
      const std::vector<float> got =
          Output(calls[j][i - 2 * j], bufs[i], absl::StrCat("async ", i));
      const std::vector<float> cpu_out =
          RunOne(cpu(), reqs[i], DType::kFloat16, DType::kFloat32,
                 MemorySpace::kHost, MemorySpace::kHost, "cpu");
      if (got.empty()) continue;
      NoteCpuDiff(RelDiff(got, cpu_out));
      EXPECT_LE(RelDiff(got, cpu_out), kCpuAgreement) << i;
    }
  }
  // A batch with no valid call completes once too.
  std::vector<AttentionCall> none(1);
  int none_done = 0;
  cuda().ForwardBatchAsync(absl::MakeSpan(none), [&] { ++none_done; });
  EXPECT_EQ(none_done, 1);
  EXPECT_EQ(none[0].status.code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaCallsTest, ATinyWorkspaceLimitIsResourceExhausted) {
  if (stand_in()) GTEST_SKIP() << "the CPU backend has no workspace limit";
  BackendOptions tiny;
  tiny.workspace_limit_bytes = 4096;
  std::unique_ptr<Backend> be = NewCuda(tiny);
  ASSERT_NE(be, nullptr);
  for (Method m : {Method::kPerformer, Method::kLsh, Method::kScatterbrain}) {
    testing::TestTensors t =
        testing::Make(1, 4, 1025, 1025, 64, 64, testing::kGaussian, 2);
    t.params.method = m;
    for (int attempt = 0; attempt < 2; ++attempt) {  // no sticky state
      absl::StatusOr<AttentionStats> st = be->Forward(t.params);
      EXPECT_EQ(st.status().code(), absl::StatusCode::kResourceExhausted)
          << MethodName(m) << ": " << st.status();
      EXPECT_TRUE(t.SentinelsIntact()) << t.SentinelReport();
    }
    const Request r = MakeRequest(m, 1, 4, 1025, 1025, 64, 64, 2);
    Buffers b = MakeBuffers(r, DType::kFloat32, DType::kFloat32,
                            MemorySpace::kHost, MemorySpace::kHost, be.get());
    AttentionCall c = MakeCall(r, b);
    be->ForwardBatch(absl::MakeSpan(&c, 1));
    EXPECT_EQ(c.status.code(), absl::StatusCode::kResourceExhausted);
    // A limit of exactly what WorkspaceBytes promises is enough.
    BackendOptions exact_fit;
    exact_fit.workspace_limit_bytes = cuda().WorkspaceBytes(t.params);
    std::unique_ptr<Backend> fit = NewCuda(exact_fit);
    ASSERT_NE(fit, nullptr);
    t.ResetOut();
    absl::StatusOr<AttentionStats> ok = fit->Forward(t.params);
    EXPECT_TRUE(ok.ok()) << MethodName(m) << " with limit "
                         << exact_fit.workspace_limit_bytes << ": "
                         << ok.status();
    EXPECT_TRUE(t.SentinelsIntact());
  }
  const MemoryStats ms = be->GetMemoryStats();
  EXPECT_LE(ms.workspace_high_water_bytes, 4096);
}

TEST_F(CudaCallsTest, MemoryStatsDescribeTheDevice) {
  if (stand_in()) GTEST_SKIP() << "no device to describe";
  std::unique_ptr<Backend> be = NewCuda(BackendOptions());
  ASSERT_NE(be, nullptr);
  testing::TestTensors t =
      testing::Make(1, 8, 2048, 2048, 64, 64, testing::kGaussian, 5);
  t.params.method = Method::kScatterbrain;
  absl::StatusOr<AttentionStats> st = be->Forward(t.params);
  ASSERT_TRUE(st.ok()) << st.status();
  const MemoryStats ms = be->GetMemoryStats();
  EXPECT_EQ(ms.device, "cuda:0");
  EXPECT_GT(ms.total_bytes, 0);
  EXPECT_GT(ms.used_bytes, 0);
  EXPECT_LE(ms.used_bytes, ms.total_bytes);
  EXPECT_GE(ms.workspace_high_water_bytes, st->workspace_bytes);
  EXPECT_LE(ms.workspace_bytes, ms.workspace_high_water_bytes);
  EXPECT_LE(st->workspace_bytes, be->WorkspaceBytes(t.params));
}

TEST_F(CudaCallsTest, ConcurrentCallersGetTheirOwnAnswers) {
  std::vector<Request> reqs;
  std::vector<std::vector<float>> want;
  for (int i = 0; i < 4; ++i) {
    reqs.push_back(MakeRequest(i % 2 ? Method::kPerformer : Method::kExact, 1,
                               2, 300 + 50 * i, 300, 64, 32, 60 + i));
    want.push_back(RunOne(cuda(), reqs.back(), DType::kFloat32, DType::kFloat32,
                          MemorySpace::kHost, MemorySpace::kHost, "alone"));
  }
  std::vector<double> worst(reqs.size(), 0);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < reqs.size(); ++i) {
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 3; ++rep) {
        const std::vector<float> got =
            RunOne(cuda(), reqs[i], DType::kFloat32, DType::kFloat32,
                   MemorySpace::kHost, MemorySpace::kHost, "concurrent");
        worst[i] = std::max(worst[i], RelDiff(got, want[i]));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_LE(worst[i], 1e-6) << i;
}

TEST_F(CudaCallsTest, InvalidParamsAreInvalidArgument) {
  testing::TestTensors t =
      testing::Make(1, 1, 4, 4, 8, 8, testing::kGaussian, 1);
  auto expect_bad = [&](auto mutate) {
    AttentionParams p = t.params;
    mutate(p);
    EXPECT_EQ(cuda().Forward(p).status().code(),
              absl::StatusCode::kInvalidArgument);
  };
  expect_bad([](AttentionParams& p) { p.dim = 0; });
  expect_bad([](AttentionParams& p) {
    p.method = Method::kPerformer;
    p.num_features = 7;
  });
  expect_bad([](AttentionParams& p) {
    p.method = Method::kLsh;
    p.bucket_size = 0;
  });
  t.Q(0, 0, 2, 3) = INFINITY;
  expect_bad([](AttentionParams&) {});
}

// The compute-sanitizer subset: a small batch in bf16 on device refs, the
// same asynchronously, checked against the CPU.
class CudaSmokeCallsTest : public CudaCallsTest {};

TEST_F(CudaSmokeCallsTest, BatchAndAsyncOnDeviceRefsSmall) {
  for (Method m : kMethods) {
    std::vector<Request> reqs = {
        MakeRequest(m, 1, 2, 33, 65, 48, 40, 1),
        MakeRequest(m, 2, 1, 97, 40, 48, 40, 2, {40, 17})};
    Batch batch = MakeBatch(reqs, DType::kBFloat16, DType::kFloat32,
                            DeviceSpace(), DeviceSpace(), &cuda());
    std::vector<AttentionCall>& calls = batch.calls;
    std::atomic<int> done{0};
    absl::Notification finished;
    cuda().ForwardBatchAsync(absl::MakeSpan(calls), [&] {
      if (done.fetch_add(1) == 0) finished.Notify();
    });
    ASSERT_TRUE(finished.WaitForNotificationWithTimeout(absl::Seconds(60)));
    EXPECT_EQ(done.load(), 1);
    for (size_t i = 0; i < reqs.size(); ++i) {
      const std::string what = absl::StrCat("smoke ", MethodName(m), " ", i);
      const std::vector<float> g = Output(calls[i], batch.bufs[i], what);
      const std::vector<float> c =
          RunOne(cpu(), reqs[i], DType::kBFloat16, DType::kFloat32,
                 MemorySpace::kHost, MemorySpace::kHost, "cpu " + what);
      ExpectAgree(g, c, reqs[i], DType::kBFloat16, DType::kFloat32, what);
    }
  }
}

}  // namespace
}  // namespace scatterbrain
