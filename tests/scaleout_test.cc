// Scale-out of the C++ client: three scatterbrain_server processes (from
// build/bin, next to this test binary, --backend=cpu, free loopback ports),
// one AttentionClient with a list of endpoints (round_robin). Checks that
// every server serves work (their /metrics), then SIGKILLs one while
// requests are in flight: every request still gets exactly one answer
// (UNAVAILABLE is retried on the others), equal to the local CPU backend.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
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
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/params.h"
#include "proto/convert/settings.h"

namespace scatterbrain {
namespace {

using client::AttendInput;
using client::AttendResult;
using client::AttentionClient;

// --- helpers (as in client_test.cc / server_process_test.cc) --------------

std::string BinDir() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

// GET http://127.0.0.1:port/path; the body ("" on failure).
std::string HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "";
  }
  const std::string req =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  ::send(fd, req.data(), req.size(), 0);
  std::string resp;
  char buf[8192];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) resp.append(buf, n);
  ::close(fd);
  const size_t body = resp.find("\r\n\r\n");
  return body == std::string::npos ? "" : resp.substr(body + 4);
}

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

class ServerProcess {
 public:
  ~ServerProcess() { Kill(); }

  bool Start(int index, std::string* error) {
    const std::string bin = BinDir() + "/scatterbrain_server";
    port_ = FreePort();
    metrics_port_ = FreePort();
    log_ = absl::StrCat(::testing::TempDir(), "/scaleout_test_server.",
                        ::getpid(), ".", index, ".log");
    const std::string port_flag = absl::StrCat("--port=", port_);
    const std::string metrics_flag =
        absl::StrCat("--metrics_port=", metrics_port_);
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      ::execl(bin.c_str(), bin.c_str(), port_flag.c_str(), metrics_flag.c_str(),
              "--backend=cpu", "--drain_timeout_s=5",
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    if (pid_ < 0) {
      *error = "fork failed";
      return false;
    }
    client::ClientOptions o;
    o.target = target();
    o.deadline = absl::Seconds(1);
    o.max_attempts = 1;
    auto c = AttentionClient::Create(o);
    const absl::Time deadline = absl::Now() + absl::Seconds(15);
    while (absl::Now() < deadline) {
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        *error = "server exited early: " + ReadFile(log_);
        return false;
      }
      auto h = (*c)->Health();
      if (h.ok() && *h == client::ServingStatus::kServing &&
          !HttpGet(metrics_port_, "/metrics").empty()) {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    *error = "server not SERVING after 15 s: " + ReadFile(log_);
    Kill();
    return false;
  }

  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  std::string target() const { return absl::StrCat("127.0.0.1:", port_); }
  int metrics_port() const { return metrics_port_; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  std::string log_;
};

// One small request (B=1, H=2, N=64, d=16, scatterbrain) with its seed.
struct Request {
  client::TensorShape shape{1, 2, 64, 64, 16, 16};
  std::vector<float> q, k, v;
  uint64_t seed = 0;

  explicit Request(uint64_t s) : seed(s) {
    std::mt19937 rng(static_cast<uint32_t>(s));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (auto* t : {&q, &k, &v}) {
      t->resize(static_cast<size_t>(shape.q_elements()));
      for (float& x : *t) x = normal(rng);
    }
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
    const absl::Status mapped =
        wire::SettingsToParams(Input().settings, "settings", &p);
    EXPECT_TRUE(mapped.ok()) << mapped;
    SetShape(shape, p);
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    std::vector<float> out(static_cast<size_t>(shape.out_elements()));
    p.out = out.data();
    SetContiguousStrides(p);
    auto backend = CreateBackend("cpu");
    EXPECT_TRUE(backend.ok());
    auto st = (*backend)->Forward(p);
    EXPECT_TRUE(st.ok()) << st.status();
    return out;
  }
};

class ScaleOutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 3; ++i) {
      std::string error;
      ASSERT_TRUE(servers_[i].Start(i, &error)) << error;
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
