// scatterbrain/tests/cancel_test.cc — cancellation inside the CPU backend
// (kernels/cancel.h): for every method, a call whose token is already
// stopped returns at once without writing its output, and a large call
// stopped from another thread (flag or deadline) returns long before it
// would have finished, all worker threads with it; in a batch only the
// stopped call stops.
//
// Timing without flakes on a loaded 2-core machine: every bound is relative
// to the same call's uncancelled time T measured in the same test, and
// generous — the stop must come within 25% of T (one row block or chunk is
// well under 5% of T at these sizes), and the printed figures are the
// measurement.
#include "kernels/cancel.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/params.h"
#include "tests/testutil/process.h"
#include "tests/testutil/random.h"

namespace scatterbrain {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// One call with its own tensors; out starts as sentinels.
struct Call {
  AttentionParams p;
  std::vector<float> q, k, v, out;
};
constexpr float kSentinel = 12345.0f;

std::unique_ptr<Call> MakeCall(Method method, SparseSupport sparse, bool causal,
                               int64_t heads, int64_t n, int64_t d,
                               uint32_t seed) {
  auto c = std::make_unique<Call>();
  AttentionParams& p = c->p;
  p.method = method;
  p.sparse = sparse;
  p.causal = causal;
  p.batch = 1;
  p.heads = heads;
  p.seq_q = p.seq_k = n;
  p.dim = p.dim_v = d;
  p.seed = 7;
  const int64_t elems = heads * n * d;
  const std::vector<float> x = testutil::RandomNormal(3 * elems, seed);
  c->q.assign(x.begin(), x.begin() + elems);
  c->k.assign(x.begin() + elems, x.begin() + 2 * elems);
  c->v.assign(x.begin() + 2 * elems, x.end());
  c->out.assign(elems, kSentinel);
  p.q = c->q.data();
  p.k = c->k.data();
  p.v = c->v.data();
  p.out = c->out.data();
  SetContiguousStrides(p);
  return c;
}

std::unique_ptr<Backend> Cpu() {
  auto b = CreateBackend("cpu");
  EXPECT_TRUE(b.ok()) << b.status();
  return std::move(*b);
}

// Sizes that take around a second uncancelled on a 2-core machine, so that
// a quarter of it is far above the backend's unit of cancellation.
struct Case {
  const char* name;
  Method method;
  SparseSupport sparse;
  bool causal;
  int64_t heads, n, d;
};
const Case kCases[] = {
    {"exact", Method::kExact, SparseSupport::kLsh, false, 2, 6144, 64},
    {"exact_causal", Method::kExact, SparseSupport::kLsh, true, 2, 8192, 64},
    {"performer_causal", Method::kPerformer, SparseSupport::kLsh, true, 2,
     65536, 64},
    {"lsh", Method::kLsh, SparseSupport::kLsh, false, 2, 65536, 64},
    {"local", Method::kLocal, SparseSupport::kLsh, false, 2, 65536, 64},
    {"scatterbrain_lsh", Method::kScatterbrain, SparseSupport::kLsh, false, 2,
     65536, 64},
    {"scatterbrain_both_causal", Method::kScatterbrain, SparseSupport::kBoth,
     true, 2, 32768, 64},
};

// ctest lists a case by its name, not its bytes.
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class CancelTest : public ::testing::TestWithParam<Case> {};

TEST_P(CancelTest, StoppedBeforeStartReturnsAtOnceWritingNothing) {
  const Case& c = GetParam();
  auto be = Cpu();
  std::unique_ptr<Call> call =
      MakeCall(c.method, c.sparse, c.causal, c.heads, c.n, c.d, 1);
  std::atomic<bool> flag{true};
  CancelToken token;
  token.cancelled = &flag;
  call->p.cancel = &token;
  const Clock::time_point t0 = Clock::now();
  absl::StatusOr<AttentionStats> st = be->Forward(call->p);
  const double s = Seconds(Clock::now() - t0);
  EXPECT_TRUE(absl::IsCancelled(st.status())) << st.status();
  // Not even the input scan ran: well under a millisecond.
  EXPECT_LT(s, 0.05);
  EXPECT_TRUE(std::all_of(call->out.begin(), call->out.end(),
                          [](float x) { return x == kSentinel; }));

  CancelToken past;
  past.deadline = Clock::now() - std::chrono::milliseconds(1);
  call->p.cancel = &past;
  st = be->Forward(call->p);
  EXPECT_TRUE(absl::IsDeadlineExceeded(st.status())) << st.status();
  EXPECT_EQ(call->out[0], kSentinel);
}

TEST_P(CancelTest, StopsMidComputationWithinAFractionOfItsTime) {
  const Case& c = GetParam();
  auto be = Cpu();
  std::unique_ptr<Call> call =
      MakeCall(c.method, c.sparse, c.causal, c.heads, c.n, c.d, 2);

  // Uncancelled (with a token that never fires: its checks cost nothing).
  std::atomic<bool> never{false};
  CancelToken idle;
  idle.cancelled = &never;
  call->p.cancel = &idle;
  Clock::time_point t0 = Clock::now();
  absl::StatusOr<AttentionStats> st = be->Forward(call->p);
  const double full = Seconds(Clock::now() - t0);
  ASSERT_TRUE(st.ok()) << st.status();

  // The flag, set from another thread a fifth of the way in.
  const auto delay = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(full / 5));
  std::atomic<bool> flag{false};
  CancelToken token;
  token.cancelled = &flag;
  call->p.cancel = &token;
  Clock::time_point set_at;
  t0 = Clock::now();
  std::thread canceller([&] {
    std::this_thread::sleep_until(t0 + delay);
    set_at = Clock::now();
    flag.store(true);
  });
  st = be->Forward(call->p);
  const Clock::time_point returned = Clock::now();
  canceller.join();
  const double flag_latency = Seconds(returned - set_at);
  EXPECT_TRUE(absl::IsCancelled(st.status())) << st.status();
  EXPECT_LT(flag_latency, 0.25 * full);

  // No worker goes on computing after the call returns (the pool is
  // joined): the process is idle.
  const double cpu0 = testutil::CpuSeconds(getpid());
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_LT(testutil::CpuSeconds(getpid()) - cpu0, 0.1);

  // The deadline, a fifth of the way in.
  CancelToken timed;
  timed.deadline = Clock::now() + delay;
  call->p.cancel = &timed;
  st = be->Forward(call->p);
  const double deadline_latency = Seconds(Clock::now() - timed.deadline);
  EXPECT_TRUE(absl::IsDeadlineExceeded(st.status())) << st.status();
  EXPECT_LT(deadline_latency, 0.25 * full);

  std::printf(
      "[ measured ] %s (H=%lld N=%lld d=%lld): uncancelled %.3f s; stopped "
      "%.1f ms after the flag, %.1f ms after the deadline\n",
      c.name, static_cast<long long>(c.heads), static_cast<long long>(c.n),
      static_cast<long long>(c.d), full, flag_latency * 1e3,
      deadline_latency * 1e3);
}

INSTANTIATE_TEST_SUITE_P(EveryMethod, CancelTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

TEST(CancelBatchTest, OnlyTheStoppedCallOfABatchStops) {
  auto be = Cpu();
  // Call 0 is large and cancelled while it runs; 1 and 2 are small, and
  // 2 carries a token that never fires.
  std::unique_ptr<Call> calls[] = {
      MakeCall(Method::kExact, SparseSupport::kLsh, false, 2, 8192, 64, 3),
      MakeCall(Method::kExact, SparseSupport::kLsh, false, 2, 256, 64, 4),
      MakeCall(Method::kExact, SparseSupport::kLsh, false, 2, 300, 64, 5)};
  std::atomic<bool> flags[3] = {false, false, false};
  CancelToken tokens[3];
  std::vector<AttentionCall> batch(3);
  for (int i = 0; i < 3; ++i) {
    tokens[i].cancelled = &flags[i];
    AttentionCall& a = batch[i];
    a.params = calls[i]->p;
    a.params.cancel = &tokens[i];
    a.q = TensorRef{calls[i]->q.data(), DType::kFloat32, MemorySpace::kHost};
    a.k = TensorRef{calls[i]->k.data(), DType::kFloat32, MemorySpace::kHost};
    a.v = TensorRef{calls[i]->v.data(), DType::kFloat32, MemorySpace::kHost};
    a.out = MutableTensorRef{calls[i]->out.data(), DType::kFloat32,
                             MemorySpace::kHost};
  }
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    flags[0].store(true);
  });
  be->ForwardBatch(absl::MakeSpan(batch));
  canceller.join();
  EXPECT_TRUE(absl::IsCancelled(batch[0].status)) << batch[0].status;
  for (int i : {1, 2}) {
    ASSERT_TRUE(batch[i].status.ok()) << i << ": " << batch[i].status;
    // The same as the call made alone.
    std::unique_ptr<Call> alone =
        MakeCall(Method::kExact, SparseSupport::kLsh, false, 2,
                 i == 1 ? 256 : 300, 64, static_cast<uint32_t>(3 + i));
    ASSERT_TRUE(be->Forward(alone->p).ok());
    EXPECT_EQ(alone->out, calls[i]->out) << i;
  }
}

TEST(ParallelForTest, NoWorkerStartsATaskOnceStopped) {
  std::atomic<bool> flag{false};
  CancelToken token;
  token.cancelled = &flag;
  std::atomic<int> ran{0};
  constexpr int kThreads = 4;
  cpu::ParallelFor(
      1000, kThreads,
      [&](int64_t i) {
        ran.fetch_add(1);
        if (i == 3) flag.store(true);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      },
      &token);
  // Tasks 0..3 and at most one more per other worker already under way.
  EXPECT_GE(ran.load(), 1);
  EXPECT_LE(ran.load(), 4 + kThreads);
}

}  // namespace
}  // namespace scatterbrain
