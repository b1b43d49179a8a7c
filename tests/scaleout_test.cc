// Scale-out of the C++ client: three scatterbrain_server processes (from
// build/bin, next to this test binary, --backend=cpu, free loopback ports),
// one AttentionClient with a list of endpoints (round_robin). Checks that
// every server serves work (their /metrics), then SIGKILLs one while
// requests are in flight: every request still gets exactly one answer
// (UNAVAILABLE is retried on the others), equal to the local CPU backend.
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cpp/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/params.h"
#include "proto/convert/settings.h"
#include "server/proto_convert.h"
#include "tests/testutil/cpu_attention.h"
#include "tests/testutil/net.h"
#include "tests/testutil/random.h"
#include "tests/testutil/server_process.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace {

using client::AttendInput;
using client::AttendResult;
using client::AttentionClient;
using testutil::HttpGet;
using testutil::IsOk;
using testutil::ServerProcess;

// Sum of scatterbrain_requests_total samples with code="OK".
double OkRequests(const std::string& metrics) {
  double total = 0;
  for (absl::string_view line : absl::StrSplit(metrics, '\n')) {
    if (!absl::StartsWith(line, "scatterbrain_requests_total{") ||
        !absl::StrContains(line, "code=\"OK\"")) {
      continue;
    }
    const size_t sp = line.rfind(' ');
    double v = 0;
    if (sp != absl::string_view::npos &&
        absl::SimpleAtod(line.substr(sp + 1), &v)) {
      total += v;
    }
  }
  return total;
}

// One small request (B=1, H=2, N=64, d=16, scatterbrain) with its seed.
struct Request {
  client::TensorShape shape{1, 2, 64, 64, 16, 16};
  std::vector<float> q, k, v;
  uint64_t seed = 0;

  // q, k and v in turn from one N(0, 1) stream seeded with `s`.
  explicit Request(uint64_t s) : seed(s) {
    const size_t n = static_cast<size_t>(shape.q_elements());
    const std::vector<float> all =
        testutil::RandomNormal(3 * n, static_cast<uint32_t>(s));
    q.assign(all.begin(), all.begin() + n);
    k.assign(all.begin() + n, all.begin() + 2 * n);
    v.assign(all.begin() + 2 * n, all.end());
  }

  AttendInput Input() const {
    AttendInput in;
    in.q = q;
    in.k = k;
    in.v = v;
    in.shape = shape;
    in.settings.set_method(v1::METHOD_SCATTERBRAIN);
    in.settings.set_num_features(16);
    in.settings.set_bucket_size(8);
    in.settings.set_seed(seed);
    return in;
  }

  std::vector<float> Local() const {
    AttentionParams p;
    const absl::Status mapped = server::RequestSettingsToParams(
        Input().settings, server::RequestDefaults(), "settings", &p);
    EXPECT_TRUE(mapped.ok()) << mapped;
    SetShape(shape, p);
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    return testutil::CpuAttention(p);
  }
};

class ScaleOutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 3; ++i) {
      testutil::ServerProcessOptions o;
      o.flags = {"--backend=cpu", "--drain_timeout_s=5"};
      o.log_name = absl::StrCat("scaleout_test_server.", i);
      o.start_timeout = absl::Seconds(15);
      ASSERT_THAT(servers_[i].Start(o), IsOk());
    }
    client::ClientOptions o;
    o.target = absl::StrCat(servers_[0].target(), ",", servers_[1].target(),
                            ",", servers_[2].target());
    o.deadline = absl::Seconds(10);
    auto c = AttentionClient::Create(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = *std::move(c);
  }

  // `threads` threads x `per_thread` blocking Attend() calls with distinct
  // seeds from `first_seed`; each answer is checked against the local
  // backend. `after_first` runs once, after the first answer.
  void Drive(int threads, int per_thread, uint64_t first_seed,
             std::atomic<int>* answered) {
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        for (int i = 0; i < per_thread; ++i) {
          const Request req(first_seed + t * per_thread + i);
          absl::StatusOr<AttendResult> r = client_->Attend(req.Input());
          ASSERT_TRUE(r.ok()) << "seed " << req.seed << ": " << r.status();
          EXPECT_EQ(r->out, req.Local()) << "seed " << req.seed;
          answered->fetch_add(1);
        }
      });
    }
    for (std::thread& th : pool) th.join();
  }

  ServerProcess servers_[3];
  std::unique_ptr<AttentionClient> client_;
};

TEST_F(ScaleOutTest, SpreadsLoadAndSurvivesAKilledServer) {
  // Phase 1: all three serve.
  std::atomic<int> answered{0};
  Drive(4, 30, 1, &answered);
  EXPECT_EQ(answered.load(), 120);
  for (int i = 0; i < 3; ++i) {
    const double ok =
        OkRequests(HttpGet(servers_[i].metrics_port(), "/metrics"));
    EXPECT_GT(ok, 0) << "server " << i << " served nothing";
  }

  // Phase 2: SIGKILL server 0 while requests are in flight; every request
  // still gets exactly one answer (Drive asserts each call succeeds).
  answered = 0;
  std::thread killer([&] {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (answered.load() < 20 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    servers_[0].Kill();
  });
  Drive(4, 30, 1000, &answered);
  killer.join();
  EXPECT_EQ(answered.load(), 120);
}

// The same through one AttendStream: requests without an answer when the
// server dies are resubmitted on a new stream; each completes exactly once.
TEST_F(ScaleOutTest, StreamResubmitsAfterAKilledServer) {
  constexpr int kRequests = 60;
  std::vector<std::unique_ptr<Request>> reqs;
  for (int i = 0; i < kRequests; ++i) {
    reqs.push_back(std::make_unique<Request>(5000 + i));
  }
  absl::Mutex mu;
  std::vector<int> calls(kRequests, 0);
  std::vector<absl::StatusOr<AttendResult>> results(kRequests);
  int done = 0;
  std::unique_ptr<client::AttendStream> stream = client_->OpenStream();
  auto submit = [&](int i) {
    auto id =
        stream->Submit(*client::Prepare(reqs[i]->Input()), absl::StrCat("q", i),
                       [&, i](absl::StatusOr<AttendResult> r) {
                         absl::MutexLock lock(&mu);
                         ++calls[i];
                         results[i] = std::move(r);
                         ++done;
                       });
    EXPECT_TRUE(id.ok()) << id.status();
  };
  for (int i = 0; i < 20; ++i) submit(i);
  {
    // A stream is one call to one server: the one whose counter moved
    // (the fixture's servers are fresh). Kill it with requests in flight.
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(
                                        +[](int* d) { return *d >= 1; }, &done),
                                    absl::Seconds(10)));
  }
  // The counter moves just after the answer is sent: poll (bounded).
  int victim = -1;
  for (int tries = 0; victim < 0 && tries < 500; ++tries) {
    for (int i = 0; i < 3; ++i) {
      if (OkRequests(HttpGet(servers_[i].metrics_port(), "/metrics")) > 0) {
        victim = i;
      }
    }
    if (victim < 0) absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_GE(victim, 0);
  servers_[victim].Kill();
  for (int i = 20; i < kRequests; ++i) submit(i);
  {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(
        mu.AwaitWithTimeout(absl::Condition(
                                +[](int* d) { return *d >= kRequests; }, &done),
                            absl::Seconds(20)));
  }
  EXPECT_TRUE(stream->Finish().ok());
  absl::MutexLock lock(&mu);
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_EQ(calls[i], 1) << i;
    ASSERT_TRUE(results[i].ok()) << i << ": " << results[i].status();
    EXPECT_EQ(results[i]->out, reqs[i]->Local()) << i;
  }
}

}  // namespace
}  // namespace scatterbrain
