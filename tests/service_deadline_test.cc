// scatterbrain/tests/service_deadline_test.cc — issue 9's finding 2 against
// the real server process: a large exact request whose client gives up
// (deadline) stops computing at once, so the next client's small request is
// answered right away and the server's CPU goes idle; a request over
// --max_request_flops is refused at its header, naming the limit.
//
// Before the fix the large request ran to its end after its client had
// gone, and the small one waited behind it. Time bounds are relative to the
// large request's own compute time, estimated on this machine from a run
// of a sixteenth of its work, and generous (see each).
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "client/cpp/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testutil/net.h"
#include "tests/testutil/process.h"
#include "tests/testutil/random.h"
#include "tests/testutil/server_process.h"

namespace scatterbrain {
namespace {

using ::testing::HasSubstr;
using Steady = std::chrono::steady_clock;
namespace v1 = ::scatterbrain::v1;

double Since(Steady::time_point t0) {
  return std::chrono::duration<double>(Steady::now() - t0).count();
}

// An exact request of [1, heads, n, d] on random data the caller keeps.
struct Request {
  std::vector<float> q, k, v;
  client::AttendInput in;
};
std::unique_ptr<Request> Exact(int64_t heads, int64_t n, int64_t d,
                               v1::DType dtype = v1::DTYPE_FLOAT32) {
  auto r = std::make_unique<Request>();
  const int64_t elems = heads * n * d;
  r->q = testutil::RandomNormal(elems, 1);
  r->k = testutil::RandomNormal(elems, 2);
  r->v = testutil::RandomNormal(elems, 3);
  r->in.q = r->q;
  r->in.k = r->k;
  r->in.v = r->v;
  r->in.shape = AttentionShape{1, heads, n, n, d, d};
  r->in.settings.set_method(v1::METHOD_EXACT);
  r->in.dtype = dtype;
  return r;
}

std::unique_ptr<client::AttentionClient> Client(
    const std::string& target,
    absl::Duration deadline = absl::InfiniteDuration()) {
  client::ClientOptions o;
  o.target = target;
  o.deadline = deadline;
  o.own_connection = true;  // clients A and B as separate machines would be
  auto c = client::AttentionClient::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return std::move(*c);
}

// The value of one series in a /metrics text (-1 when absent).
double Metric(const std::string& text, const std::string& series) {
  const size_t at = text.find(series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 1));
}

// Server CPU seconds per second over `window`.
double CpuRate(pid_t pid, std::chrono::milliseconds window) {
  const double cpu0 = testutil::CpuSeconds(pid);
  const Steady::time_point t0 = Steady::now();
  std::this_thread::sleep_for(window);
  return (testutil::CpuSeconds(pid) - cpu0) / Since(t0);
}

TEST(ServiceDeadlineTest, ADroppedLargeRequestStopsAndFreesTheServer) {
  testutil::ServerProcess server;
  ASSERT_TRUE(server.Start({{"--backend=cpu"}, "deadline_server"}).ok());
  // The default ceiling admits A (3.8e11 estimated flops).
  auto info = Client(server.target())->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->limits().max_request_flops(), 1'000'000'000'000u);

  // A sixteenth of A's work, uncancelled: A would take ~16x this.
  std::unique_ptr<Request> sixteenth = Exact(4, 4096, 64);
  Steady::time_point t0 = Steady::now();
  ASSERT_TRUE(Client(server.target())->Attend(sixteenth->in).ok());
  const double a_full = 16 * Since(t0);

  // Client A: exact attention at N = 16384 with 4 heads (~10 s of a 2-core
  // machine) and a 1.5 s deadline.
  std::unique_ptr<Request> big = Exact(4, 16384, 64);
  absl::Status a_status;
  const Steady::time_point a_start = Steady::now();
  const Steady::time_point a_deadline =
      a_start + std::chrono::milliseconds(1500);
  std::thread a([&] {
    a_status = Client(server.target(), absl::Milliseconds(1500))
                   ->Attend(big->in)
                   .status();
  });
  // Wait until A computes (its batch has left the queue: the second
  // queue-time observation), then for how busy that keeps the server.
  const std::string queued =
      "scatterbrain_queue_duration_seconds_count{method=\"exact\"}";
  bool computing = false;
  while (!computing && Steady::now() < a_deadline) {
    computing = Metric(testutil::HttpGet(server.metrics_port(), "/metrics"),
                       queued) >= 2;
    if (!computing) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(computing) << "A did not start computing before its deadline";
  const double busy = CpuRate(server.pid(), std::chrono::milliseconds(300));

  // Client B, while A computes: a small request, no deadline.
  std::unique_ptr<Request> small = Exact(1, 256, 64);
  absl::StatusOr<client::AttendResult> b;
  Steady::time_point b_done;
  std::thread b_thread([&] {
    b = Client(server.target())->Attend(small->in);
    b_done = Steady::now();
  });
  // Half a second after A's deadline the server is idle (whether or not B
  // is answered yet): a quarter of the CPU it used while computing A is a
  // generous bound (it is ~0).
  std::this_thread::sleep_until(a_deadline + std::chrono::milliseconds(500));
  const double after = CpuRate(server.pid(), std::chrono::milliseconds(1000));
  EXPECT_LT(after, busy / 4);
  b_thread.join();
  a.join();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(absl::IsDeadlineExceeded(a_status)) << a_status;
  // B waited for A's deadline and A's stop, not for A's compute: it is
  // answered within a quarter of that compute time after A's deadline (the
  // stop itself takes milliseconds).
  const double b_after_deadline =
      std::chrono::duration<double>(b_done - a_deadline).count();
  EXPECT_LT(b_after_deadline, a_full / 4);
  const std::string metrics =
      testutil::HttpGet(server.metrics_port(), "/metrics");
  EXPECT_EQ(Metric(metrics,
                   "scatterbrain_requests_stopped_total{reason="
                   "\"deadline_exceeded\",stage=\"running\"}"),
            1);
  std::printf(
      "[ measured ] A alone would compute ~%.2f s; B answered %.3f s after "
      "A's deadline; server CPU %.2f s/s while computing A, %.2f s/s from "
      "0.5 s after A's deadline\n",
      a_full, b_after_deadline, busy, after);
  EXPECT_TRUE(server.Stop().ok());
}

TEST(ServiceDeadlineTest, AUnaryCallStopsComputingAtItsDeadline) {
  testutil::ServerProcess server;
  ASSERT_TRUE(server.Start({{"--backend=cpu"}, "deadline_unary"}).ok());
  // 768 KiB of float16, exact at N = 32768 with d = 4: 1.2e11 estimated
  // flops, several seconds of a 2-core machine; a 500 ms deadline.
  std::unique_ptr<Request> r = Exact(1, 32768, 4, v1::DTYPE_FLOAT16);
  absl::Status status;
  const Steady::time_point start = Steady::now();
  std::thread call([&] {
    status = Client(server.target(), absl::Milliseconds(500))
                 ->AttendUnary(r->in)
                 .status();
  });
  std::this_thread::sleep_until(start + std::chrono::milliseconds(150));
  const double busy = CpuRate(server.pid(), std::chrono::milliseconds(300));
  std::this_thread::sleep_until(start + std::chrono::milliseconds(1000));
  const double after = CpuRate(server.pid(), std::chrono::milliseconds(1000));
  call.join();
  EXPECT_TRUE(absl::IsDeadlineExceeded(status)) << status;
  EXPECT_LT(after, busy / 4);
  std::printf(
      "[ measured ] unary: server CPU %.2f s/s while computing, %.2f s/s "
      "from 0.5 s after the deadline\n",
      busy, after);
  EXPECT_TRUE(server.Stop().ok());
}

TEST(ServiceDeadlineTest, ARequestOverMaxRequestFlopsIsRefusedAtItsHeader) {
  testutil::ServerProcess server;
  // The 1.5 MiB request (float16 [1, 1, 65536, 4] exact: ~36 s on
  // a 2-core machine, 4.8e11 estimated flops) under a 2e11 ceiling.
  ASSERT_TRUE(server
                  .Start({{"--backend=cpu", "--max_request_flops=200000000000"},
                          "flops_server"})
                  .ok());
  auto c = Client(server.target());
  auto info = c->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->limits().max_request_flops(), 200'000'000'000u);
  std::unique_ptr<Request> r = Exact(1, 65536, 4, v1::DTYPE_FLOAT16);
  const Steady::time_point t0 = Steady::now();
  const absl::Status st = c->Attend(r->in).status();
  EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("over the server's limit of 200000000000 per request "
                        "(max_request_flops)"));
  EXPECT_LT(Since(t0), 10.0);  // refused, not computed (~36 s)
  EXPECT_TRUE(server.Stop().ok());
}

}  // namespace
}  // namespace scatterbrain
