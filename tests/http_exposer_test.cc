// tests/http_exposer_test.cc — the /metrics endpoint (server/http_exposer.h)
// on loopback with raw sockets: scrapes stay fast while idle and slow-loris
// clients hold connections (the endpoint used to serve one connection at a
// time: one idle connection delayed a scrape by 2 s), every deadline and cap
// closes what it should, keep-alive and pipelining work, and file
// descriptors return to their baseline.
//
// Timing: the box running the tests may be loaded (2 cores, parallel
// builds), so latency bounds are generous (1 s for a scrape that takes
// ~1 ms; the old endpoint took 2 s per idle connection) and waits for a
// deadline to fire are bounded at several seconds past it; the measured
// figures are printed.
#include "server/http_exposer.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testutil/net.h"
#include "tests/testutil/proc.h"

namespace scatterbrain {
namespace server {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kBody[] = "scatterbrain_queue_depth 7\n";

// A client connection, closed on destruction.
class Socket {
 public:
  explicit Socket(int port) : fd_(testutil::ConnectLoopback(port)) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  int fd() const { return fd_; }
  bool Send(const std::string& bytes) const {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  // One response: its head, then Content-Length bytes of body (none for a
  // HEAD request's response). "" on timeout or a closed connection.
  std::string ReadResponse(bool head_only = false) {
    for (;;) {
      const size_t end = buffer_.find("\r\n\r\n");
      if (end != std::string::npos) {
        const size_t cl = buffer_.find("Content-Length: ");
        int64_t length = 0;
        if (cl != std::string::npos && cl < end) {
          const size_t eol = buffer_.find("\r\n", cl);
          if (!absl::SimpleAtoi(buffer_.substr(cl + 16, eol - cl - 16),
                                &length))
            return "";
        }
        if (head_only) length = 0;
        const size_t total = end + 4 + static_cast<size_t>(length);
        if (buffer_.size() >= total) {
          std::string response = buffer_.substr(0, total);
          buffer_.erase(0, total);
          return response;
        }
      }
      char buf[8192];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return "";
      buffer_.append(buf, static_cast<size_t>(n));
    }
  }
  // True once the server has closed the connection (EOF or reset), waiting
  // up to `timeout`; false while it stays open.
  bool ClosedWithin(absl::Duration timeout) const {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) <=
        0) {
      return false;
    }
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd_, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
    }
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
  }

 private:
  int fd_;
  std::string buffer_;
};

std::unique_ptr<HttpExposer> StartExposer(const HttpExposerOptions& o = {}) {
  absl::StatusOr<std::unique_ptr<HttpExposer>> e = HttpExposer::Start(
      "127.0.0.1:0", [] { return std::string(kBody); }, o);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? *std::move(e) : nullptr;
}

// Polls `done` every 10 ms for up to `timeout`.
bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > end) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

// One GET /metrics on a fresh connection: its seconds, -1 when it failed.
double TimedScrape(int port) {
  const absl::Time start = absl::Now();
  const std::string response = testutil::HttpGetResponse(port, "/metrics");
  if (!absl::StartsWith(response, "HTTP/1.1 200 OK") ||
      !absl::StrContains(response, kBody)) {
    return -1;
  }
  return absl::ToDoubleSeconds(absl::Now() - start);
}

TEST(HttpExposerTest, ServesMetricsAndRefusesTheRest) {
  auto e = StartExposer();
  ASSERT_NE(e, nullptr);
  Socket s(e->port());
  ASSERT_GE(s.fd(), 0);
  ASSERT_TRUE(s.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::string r = s.ReadResponse();
  EXPECT_THAT(r, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(r, HasSubstr("Content-Type: text/plain; version=0.0.4"));
  EXPECT_THAT(r, HasSubstr(absl::StrCat("\r\n\r\n", kBody)));
  ASSERT_TRUE(s.Send("GET /metrics?name[]=x HTTP/1.1\r\n\r\n"));
  EXPECT_THAT(s.ReadResponse(), HasSubstr(kBody));
  ASSERT_TRUE(s.Send("HEAD /metrics HTTP/1.1\r\n\r\n"));
  r = s.ReadResponse(/*head_only=*/true);
  EXPECT_THAT(r, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(r,
              HasSubstr(absl::StrCat("Content-Length: ", sizeof(kBody) - 1)));
  ASSERT_TRUE(s.Send("GET /other HTTP/1.1\r\n\r\n"));
  EXPECT_THAT(s.ReadResponse(), StartsWith("HTTP/1.1 404 Not Found\r\n"));
  ASSERT_TRUE(s.Send("DELETE /metrics HTTP/1.1\r\n\r\n"));
  EXPECT_THAT(s.ReadResponse(), StartsWith("HTTP/1.1 405 "));
  // A malformed request line is answered and the connection closed.
  ASSERT_TRUE(s.Send("hello\r\n\r\n"));
  EXPECT_THAT(s.ReadResponse(), StartsWith("HTTP/1.1 400 Bad Request\r\n"));
  EXPECT_TRUE(s.ClosedWithin(absl::Seconds(5)));
}

TEST(HttpExposerTest, ScrapeIsFastWithIdleAndSlowLorisConnections) {
  HttpExposerOptions o;
  // No deadline fires during the test: the connections stay open.
  o.request_timeout_ms = 120000;
  auto e = StartExposer(o);
  ASSERT_NE(e, nullptr);
  std::vector<std::unique_ptr<Socket>> idle;
  for (int i = 0; i < 64; ++i) {
    idle.push_back(std::make_unique<Socket>(e->port()));
    ASSERT_GE(idle.back()->fd(), 0);
  }
  // Slow-loris clients: a request head one byte every 100 ms, never ending.
  std::atomic<bool> stop{false};
  std::vector<std::thread> slow;
  for (int i = 0; i < 8; ++i) {
    slow.emplace_back([&stop, port = e->port()] {
      Socket s(port);
      const std::string head =
          "GET /metrics HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaa";
      for (size_t b = 0; !stop.load(); ++b) {
        s.Send(std::string(1, head[std::min(b, head.size() - 1)]));
        absl::SleepFor(absl::Milliseconds(100));
      }
    });
  }
  ASSERT_TRUE(
      WaitUntil([&] { return e->open_connections() == 72; }, absl::Seconds(10)))
      << e->open_connections();
  absl::SleepFor(absl::Milliseconds(300));  // every slow client has started

  std::vector<double> seconds;
  for (int i = 0; i < 10; ++i) seconds.push_back(TimedScrape(e->port()));
  stop.store(true);
  for (std::thread& t : slow) t.join();
  std::sort(seconds.begin(), seconds.end());
  std::printf(
      "scrape with 64 idle + 8 slow-loris connections: min %.2f ms, median "
      "%.2f ms, max %.2f ms\n",
      seconds.front() * 1e3, seconds[seconds.size() / 2] * 1e3,
      seconds.back() * 1e3);
  EXPECT_GE(seconds.front(), 0) << "a scrape failed";
  // ~1 ms measured; 1 s is far below the old endpoint's 2 s per idle
  // connection, and generous for a loaded machine.
  EXPECT_LT(seconds.back(), 1.0);
  // The idle connections were not touched by the scrapes.
  EXPECT_FALSE(idle.front()->ClosedWithin(absl::ZeroDuration()));
}

TEST(HttpExposerTest, IdleAndSlowConnectionsCloseAtTheirDeadline) {
  HttpExposerOptions o;
  o.request_timeout_ms = 300;
  auto e = StartExposer(o);
  ASSERT_NE(e, nullptr);
  const int baseline = testutil::OpenFdCount();
  {
    std::vector<std::unique_ptr<Socket>> idle;
    for (int i = 0; i < 16; ++i)
      idle.push_back(std::make_unique<Socket>(e->port()));
    // A slow client that keeps sending is closed all the same: the deadline
    // is for the whole request head, not between bytes.
    Socket slow(e->port());
    const absl::Time start = absl::Now();
    bool closed = false;
    while (!closed && absl::Now() - start < absl::Seconds(10)) {
      slow.Send("a");
      closed = slow.ClosedWithin(absl::Milliseconds(50));
    }
    EXPECT_TRUE(closed);
    EXPECT_GE(absl::Now() - start, absl::Milliseconds(250));
    // Closed 300 ms after being accepted; 5 s more for a loaded machine.
    for (auto& s : idle) EXPECT_TRUE(s->ClosedWithin(absl::Seconds(5)));
    EXPECT_TRUE(WaitUntil([&] { return e->open_connections() == 0; },
                          absl::Seconds(5)));
  }
  EXPECT_TRUE(WaitUntil([&] { return testutil::OpenFdCount() == baseline; },
                        absl::Seconds(5)))
      << testutil::OpenFdCount() << " fds open, " << baseline << " before";
}

TEST(HttpExposerTest, FdsReturnToBaselineWhenClientsLeave) {
  const int before = testutil::OpenFdCount();
  {
    auto e = StartExposer();
    ASSERT_NE(e, nullptr);
    const int baseline = testutil::OpenFdCount();
    {
      std::vector<std::unique_ptr<Socket>> clients;
      for (int i = 0; i < 64; ++i)
        clients.push_back(std::make_unique<Socket>(e->port()));
      ASSERT_TRUE(WaitUntil([&] { return e->open_connections() == 64; },
                            absl::Seconds(10)));
      EXPECT_GE(TimedScrape(e->port()), 0);
    }
    // The server sees each client's EOF and closes its end.
    EXPECT_TRUE(WaitUntil([&] { return testutil::OpenFdCount() == baseline; },
                          absl::Seconds(5)))
        << testutil::OpenFdCount() << " fds open, " << baseline << " before";
    // Connections still open when the exposer goes are closed with it.
    for (int i = 0; i < 8; ++i) {
      Socket s(e->port());
      s.Send("GET /met");
    }
  }
  EXPECT_EQ(testutil::OpenFdCount(), before);
}

TEST(HttpExposerTest, OversizedRequestHeadIsRefused) {
  HttpExposerOptions o;
  o.max_request_bytes = 1024;
  auto e = StartExposer(o);
  ASSERT_NE(e, nullptr);
  Socket s(e->port());
  ASSERT_TRUE(s.Send("GET /metrics HTTP/1.1\r\nX-Big: " +
                     std::string(2000, 'a') + "\r\n\r\n"));
  EXPECT_THAT(s.ReadResponse(),
              StartsWith("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
  EXPECT_TRUE(s.ClosedWithin(absl::Seconds(5)));
  // Just under the cap is fine.
  Socket ok(e->port());
  ASSERT_TRUE(ok.Send(
      "GET /metrics HTTP/1.1\r\nX-Big: " + std::string(900, 'a') + "\r\n\r\n"));
  EXPECT_THAT(ok.ReadResponse(), StartsWith("HTTP/1.1 200 OK\r\n"));
}

TEST(HttpExposerTest, KeepAlivePipeliningAndClose) {
  HttpExposerOptions o;
  o.keepalive_timeout_ms = 300;
  auto e = StartExposer(o);
  ASSERT_NE(e, nullptr);
  Socket s(e->port());
  // Two requests in one send: two responses, in order, on the connection.
  ASSERT_TRUE(
      s.Send("GET /metrics HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n"));
  std::string r = s.ReadResponse();
  EXPECT_THAT(r, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(r, HasSubstr("Connection: keep-alive\r\n"));
  EXPECT_THAT(s.ReadResponse(), StartsWith("HTTP/1.1 404 "));
  // Kept alive, then closed once idle past keepalive_timeout_ms.
  EXPECT_FALSE(s.ClosedWithin(absl::Milliseconds(50)));
  EXPECT_TRUE(s.ClosedWithin(absl::Seconds(5)));

  // "Connection: close" and HTTP/1.0 end the connection after the answer.
  Socket c(e->port());
  ASSERT_TRUE(c.Send("GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"));
  EXPECT_THAT(c.ReadResponse(), HasSubstr("Connection: close\r\n"));
  EXPECT_TRUE(c.ClosedWithin(absl::Seconds(5)));
  Socket h(e->port());
  ASSERT_TRUE(h.Send("GET /metrics HTTP/1.0\r\n\r\n"));
  EXPECT_THAT(h.ReadResponse(), HasSubstr(kBody));
  EXPECT_TRUE(h.ClosedWithin(absl::Seconds(5)));
}

TEST(HttpExposerTest, AtTheConnectionCapTheOldestIdleIsClosed) {
  HttpExposerOptions o;
  o.max_connections = 4;
  o.request_timeout_ms = 120000;
  auto e = StartExposer(o);
  ASSERT_NE(e, nullptr);
  // One slow client mid-request, then three idle ones, oldest first.
  Socket slow(e->port());
  ASSERT_TRUE(slow.Send("GET /met"));
  std::vector<std::unique_ptr<Socket>> idle;
  for (int i = 0; i < 3; ++i) {
    idle.push_back(std::make_unique<Socket>(e->port()));
    ASSERT_TRUE(WaitUntil([&] { return e->open_connections() == i + 2; },
                          absl::Seconds(10)));
  }
  // A fifth connection (the scrape) closes the oldest idle one, not the
  // slow client that came before it, and is served at once.
  EXPECT_GE(TimedScrape(e->port()), 0);
  EXPECT_TRUE(idle[0]->ClosedWithin(absl::Seconds(5)));
  EXPECT_FALSE(idle[1]->ClosedWithin(absl::Milliseconds(100)));
  EXPECT_FALSE(slow.ClosedWithin(absl::ZeroDuration()));
  EXPECT_LE(e->open_connections(), 4);
  // With nothing idle left, the request that started first goes.
  ASSERT_TRUE(idle[1]->Send("G"));
  ASSERT_TRUE(idle[2]->Send("G"));
  Socket another(e->port());
  ASSERT_TRUE(another.Send("G"));
  ASSERT_TRUE(
      WaitUntil([&] { return e->open_connections() == 4; }, absl::Seconds(10)));
  Socket fifth(e->port());
  EXPECT_TRUE(slow.ClosedWithin(absl::Seconds(5)));
  EXPECT_FALSE(idle[1]->ClosedWithin(absl::ZeroDuration()));
  EXPECT_LE(e->open_connections(), 4);
}

TEST(HttpExposerTest, ClientThatNeverReadsIsClosedAtResponseDeadline) {
  HttpExposerOptions o;
  o.response_timeout_ms = 300;
  // 64 MiB: more than the socket buffers hold, so the response cannot be
  // sent to a client that does not read.
  const std::string big(64 << 20, 'x');
  absl::StatusOr<std::unique_ptr<HttpExposer>> e = HttpExposer::Start(
      "127.0.0.1:0", [&big] { return big; }, o);
  ASSERT_TRUE(e.ok()) << e.status();
  Socket stuck((*e)->port());
  const absl::Time sent = absl::Now();
  ASSERT_TRUE(stuck.Send("GET /metrics HTTP/1.1\r\n\r\n"));
  // Meanwhile another client is served (and kept alive).
  Socket other((*e)->port());
  ASSERT_TRUE(other.Send("HEAD /metrics HTTP/1.1\r\n\r\n"));
  EXPECT_THAT(other.ReadResponse(/*head_only=*/true),
              StartsWith("HTTP/1.1 200 OK"));
  // The stuck one goes 300 ms after its response was ready; 10 s bound for
  // a loaded machine.
  EXPECT_TRUE(WaitUntil([&] { return (*e)->open_connections() == 1; },
                        absl::Seconds(10)))
      << (*e)->open_connections();
  EXPECT_GE(absl::Now() - sent, absl::Milliseconds(250));
  EXPECT_FALSE(other.ClosedWithin(absl::ZeroDuration()));
}

TEST(HttpExposerTest, BadOptionsAreRefused) {
  HttpExposerOptions o;
  o.max_connections = 0;
  absl::StatusOr<std::unique_ptr<HttpExposer>> e = HttpExposer::Start(
      "127.0.0.1:0", [] { return std::string(); }, o);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("max_connections"));
  o = HttpExposerOptions();
  o.request_timeout_ms = 0;
  EXPECT_FALSE(HttpExposer::Start(
                   "127.0.0.1:0", [] { return ""; }, o)
                   .ok());
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
