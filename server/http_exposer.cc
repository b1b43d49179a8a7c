// scatterbrain/server/http_exposer.cc — see http_exposer.h. One thread runs
// Loop::Run: poll() over the listening socket, a wake-up pipe and every
// client connection; each connection reads its request head, then writes
// its response, then (kept alive) waits for the next request, each step
// under a deadline. Nothing here blocks: sockets are non-blocking.
#include "server/http_exposer.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace scatterbrain {
namespace server {
namespace {

using SteadyClock = std::chrono::steady_clock;
using TimePoint = SteadyClock::time_point;

// accept() failing for want of file descriptors leaves the listening socket
// readable; the loop stops polling it this long instead of spinning.
constexpr std::chrono::milliseconds kAcceptPause{100};

std::chrono::milliseconds Ms(int64_t ms) {
  return std::chrono::milliseconds(ms);
}

// A parsed request head: what the response depends on.
struct Request {
  bool ok = false;  // a request line of three parts, version HTTP/1.x
  std::string method;
  std::string path;
  bool keep_alive = false;  // what the client asked for (version, header)
  bool has_body = false;    // Content-Length > 0 or Transfer-Encoding
};

Request ParseHead(absl::string_view head) {
  Request r;
  std::vector<absl::string_view> lines = absl::StrSplit(head, "\r\n");
  std::vector<absl::string_view> parts =
      absl::StrSplit(lines[0], ' ', absl::SkipEmpty());
  if (parts.size() != 3 || !absl::StartsWith(parts[2], "HTTP/1.")) return r;
  r.ok = true;
  r.method = std::string(parts[0]);
  r.path = std::string(parts[1]);
  r.keep_alive = parts[2] != "HTTP/1.0";
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == absl::string_view::npos) continue;
    const std::string name = absl::AsciiStrToLower(lines[i].substr(0, colon));
    const std::string value = absl::AsciiStrToLower(
        absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
    if (name == "connection") {
      if (absl::StrContains(value, "close")) r.keep_alive = false;
      if (absl::StrContains(value, "keep-alive")) r.keep_alive = true;
    } else if (name == "content-length") {
      int64_t n = 0;
      if (!absl::SimpleAtoi(value, &n) || n != 0) r.has_body = true;
    } else if (name == "transfer-encoding") {
      r.has_body = true;
    }
  }
  return r;
}

std::string Response(absl::string_view status, absl::string_view type,
                     absl::string_view body, bool head_only, bool keep_alive,
                     int64_t keepalive_timeout_ms) {
  std::string out =
      absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                   "\r\nContent-Length: ", body.size(), "\r\nConnection: ");
  if (keep_alive) {
    absl::StrAppend(&out, "keep-alive\r\nKeep-Alive: timeout=",
                    keepalive_timeout_ms / 1000, "\r\n\r\n");
  } else {
    absl::StrAppend(&out, "close\r\n\r\n");
  }
  if (!head_only) absl::StrAppend(&out, body);
  return out;
}

}  // namespace

absl::Status ValidateHttpExposerOptions(const HttpExposerOptions& o) {
  auto bad = [](absl::string_view field, int64_t value,
                absl::string_view want) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": must be ", want, ", got ", value));
  };
  if (o.request_timeout_ms <= 0)
    return bad("request_timeout_ms", o.request_timeout_ms, "> 0");
  if (o.response_timeout_ms <= 0)
    return bad("response_timeout_ms", o.response_timeout_ms, "> 0");
  if (o.keepalive_timeout_ms < 0)
    return bad("keepalive_timeout_ms", o.keepalive_timeout_ms, ">= 0");
  if (o.max_connections < 1)
    return bad("max_connections", o.max_connections, ">= 1");
  if (o.max_request_bytes < 64)
    return bad("max_request_bytes", o.max_request_bytes, ">= 64");
  return absl::OkStatus();
}

// The event loop's state: every open connection. Lives on the exposer's
// thread only (no locks); the exposer reads open_connections_ atomically.
class HttpExposer::Loop {
 public:
  explicit Loop(HttpExposer* e) : e_(e), o_(e->options_) {}
  ~Loop() {
    for (Conn& c : conns_) ::close(c.fd);
    e_->open_connections_.store(0);
  }

  void Run();

 private:
  struct Conn {
    int fd = -1;
    bool writing = false;      // false: reading a request head
    bool started = false;      // a byte of the current request has arrived
    bool kept_alive = false;   // has answered a request already
    bool close_after = false;  // close once `out` is sent
    std::string in;            // bytes received, not yet parsed
    std::string out;           // response bytes not yet sent
    TimePoint deadline;        // closed when this passes
    TimePoint since;           // start of the current phase (eviction order)
  };

  void Accept(TimePoint now);
  // Makes room for one more connection: closes the oldest idle one, or with
  // none idle, the one whose request started first.
  void EvictOne();
  void OnReadable(Conn& c, TimePoint now);
  // Moves the connection on as far as it can without blocking: sends its
  // response, then answers the next request if it has fully arrived
  // (pipelined), and so on. A loop, not recursion, however many requests
  // are waiting.
  void Progress(Conn& c, TimePoint now);
  // Sends what it can of c.out; true once all is sent (false: blocked, or
  // the connection failed and is closed).
  bool Flush(Conn& c);
  // Parses a complete request head in c.in, if there is one, and starts its
  // response (true). Answers 431 for a head over the size cap.
  bool HandleInput(Conn& c, TimePoint now);
  void Respond(Conn& c, std::string response, bool keep_alive, TimePoint now);
  void Close(Conn& c) {
    if (c.fd < 0) return;
    ::close(c.fd);
    c.fd = -1;
  }
  bool Idle(const Conn& c) const { return !c.writing && !c.started; }

  HttpExposer* const e_;
  const HttpExposerOptions& o_;
  std::vector<Conn> conns_;
  TimePoint accept_paused_until_{};
};

void HttpExposer::Loop::Run() {
  std::vector<pollfd> fds;
  while (!e_->stop_.load()) {
    TimePoint now = SteadyClock::now();
    fds.clear();
    fds.push_back({e_->wake_read_fd_, POLLIN, 0});
    const bool accepting = now >= accept_paused_until_;
    fds.push_back({accepting ? e_->listen_fd_ : -1, POLLIN, 0});
    TimePoint wake = accepting ? TimePoint::max() : accept_paused_until_;
    for (const Conn& c : conns_) {
      fds.push_back(
          {c.fd, static_cast<short>(c.writing ? POLLOUT : POLLIN), 0});
      wake = std::min(wake, c.deadline);
    }
    int timeout_ms = -1;
    if (wake != TimePoint::max()) {
      // Rounded up, so the loop never wakes just before a deadline.
      timeout_ms = static_cast<int>(std::max<int64_t>(
          0, std::chrono::ceil<std::chrono::milliseconds>(wake - now).count()));
    }
    int ready = ::poll(fds.data(), fds.size(), timeout_ms);
    if (e_->stop_.load()) break;
    if (ready < 0) {
      // EINTR, or a transient failure (ENOMEM): the endpoint keeps going,
      // and deadlines are still enforced below; no busy loop meanwhile.
      if (errno != EINTR) std::this_thread::sleep_for(kAcceptPause);
      ready = 0;
    }
    now = SteadyClock::now();
    // Connections first (fds[i + 2] is conns_[i]); accepting may evict.
    for (size_t i = 0; ready > 0 && i < conns_.size(); ++i) {
      const short rev = fds[i + 2].revents;
      Conn& c = conns_[i];
      if (rev == 0 || c.fd < 0) continue;
      if (c.writing && (rev & (POLLOUT | POLLERR | POLLHUP))) {
        Progress(c, now);
      } else if (!c.writing && (rev & (POLLIN | POLLERR | POLLHUP))) {
        OnReadable(c, now);
      } else if (rev & (POLLERR | POLLNVAL)) {
        Close(c);
      }
    }
    for (Conn& c : conns_) {
      if (c.fd >= 0 && c.deadline <= now) Close(c);
    }
    conns_.erase(std::remove_if(conns_.begin(), conns_.end(),
                                [](const Conn& c) { return c.fd < 0; }),
                 conns_.end());
    if (ready > 0 && (fds[1].revents & POLLIN)) Accept(now);
    e_->open_connections_.store(static_cast<int>(conns_.size()));
  }
}

void HttpExposer::Loop::Accept(TimePoint now) {
  // Those waiting, up to the cap per turn: a burst of connections costs one
  // loop turn, and a flood of them cannot keep the loop from the others.
  for (int i = 0; i < o_.max_connections; ++i) {
    const int fd = ::accept4(e_->listen_fd_, nullptr, nullptr,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
          errno == ENOMEM) {
        accept_paused_until_ = now + kAcceptPause;
      }
      return;
    }
    if (static_cast<int>(conns_.size()) >= o_.max_connections) EvictOne();
    Conn c;
    c.fd = fd;
    c.since = now;
    c.deadline = now + Ms(o_.request_timeout_ms);
    conns_.push_back(std::move(c));
  }
}

void HttpExposer::Loop::EvictOne() {
  auto victim = conns_.end();
  for (auto it = conns_.begin(); it != conns_.end(); ++it) {
    if (victim == conns_.end() || (Idle(*it) && !Idle(*victim)) ||
        (Idle(*it) == Idle(*victim) && it->since < victim->since)) {
      victim = it;
    }
  }
  if (victim == conns_.end()) return;
  ::close(victim->fd);
  conns_.erase(victim);
}

void HttpExposer::Loop::OnReadable(Conn& c, TimePoint now) {
  char buf[4096];
  // Read no more than one byte past the cap: enough to know it is exceeded.
  const size_t room = static_cast<size_t>(o_.max_request_bytes) + 1 -
                      std::min(c.in.size(), size_t(o_.max_request_bytes));
  const ssize_t n = ::recv(c.fd, buf, std::min(sizeof(buf), room), 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    return;
  }
  if (n <= 0) {  // the client closed (or reset) its end
    Close(c);
    return;
  }
  if (!c.started) {
    c.started = true;
    c.since = now;
    // A kept-alive connection's request deadline starts with its first
    // byte; a new connection's started when it was accepted.
    if (c.kept_alive) c.deadline = now + Ms(o_.request_timeout_ms);
  }
  c.in.append(buf, static_cast<size_t>(n));
  Progress(c, now);
}

void HttpExposer::Loop::Progress(Conn& c, TimePoint now) {
  for (;;) {
    if (c.writing) {
      if (!Flush(c)) return;
      if (c.close_after) {
        Close(c);
        return;
      }
      // Kept alive: wait for the next request (perhaps already pipelined).
      c.writing = false;
      c.kept_alive = true;
      c.started = !c.in.empty();
      c.since = now;
      c.deadline =
          now + Ms(c.started ? o_.request_timeout_ms : o_.keepalive_timeout_ms);
    }
    if (!HandleInput(c, now)) return;
  }
}

bool HttpExposer::Loop::Flush(Conn& c) {
  while (!c.out.empty()) {
    const ssize_t n =
        ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    if (n <= 0) {
      Close(c);
      return false;
    }
    c.out.erase(0, static_cast<size_t>(n));
  }
  return true;
}

bool HttpExposer::Loop::HandleInput(Conn& c, TimePoint now) {
  const size_t end = c.in.find("\r\n\r\n");
  if (end == std::string::npos) {
    if (c.in.size() <= static_cast<size_t>(o_.max_request_bytes)) return false;
    Respond(c,
            Response("431 Request Header Fields Too Large", "text/plain",
                     absl::StrCat("request head over ", o_.max_request_bytes,
                                  " bytes\n"),
                     false, false, 0),
            false, now);
    return true;
  }
  const Request r = ParseHead(absl::string_view(c.in).substr(0, end));
  c.in.erase(0, end + 4);
  // No request bodies are read: a request with one ends the connection.
  const bool keep_alive =
      r.ok && r.keep_alive && !r.has_body && o_.keepalive_timeout_ms > 0;
  const bool head = r.method == "HEAD";
  auto respond = [&](absl::string_view status, absl::string_view type,
                     absl::string_view body) {
    Respond(
        c,
        Response(status, type, body, head, keep_alive, o_.keepalive_timeout_ms),
        keep_alive, now);
  };
  if (!r.ok) {
    respond("400 Bad Request", "text/plain", "malformed request line\n");
  } else if (r.method != "GET" && !head) {
    respond("405 Method Not Allowed", "text/plain", "GET only\n");
  } else if (r.path == "/metrics" || absl::StartsWith(r.path, "/metrics?")) {
    respond("200 OK", "text/plain; version=0.0.4; charset=utf-8", e_->body_());
  } else {
    respond("404 Not Found", "text/plain", "see /metrics\n");
  }
  return true;
}

void HttpExposer::Loop::Respond(Conn& c, std::string response, bool keep_alive,
                                TimePoint now) {
  c.writing = true;
  c.close_after = !keep_alive;
  c.out = std::move(response);
  c.since = now;
  c.deadline = now + Ms(o_.response_timeout_ms);
}

absl::StatusOr<std::unique_ptr<HttpExposer>> HttpExposer::Start(
    const std::string& bind_address, std::function<std::string()> body,
    const HttpExposerOptions& options) {
  if (absl::Status s = ValidateHttpExposerOptions(options); !s.ok()) return s;
  const size_t colon = bind_address.rfind(':');
  if (colon == std::string::npos || colon + 1 == bind_address.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", bind_address, "': want host:port"));
  }
  std::string host = bind_address.substr(0, colon);
  const std::string port = bind_address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const int gai = ::getaddrinfo(host.empty() ? nullptr : host.c_str(),
                                port.c_str(), &hints, &res);
  if (gai != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics address '", bind_address, "': ", ::gai_strerror(gai)));
  }
  int fd = -1;
  std::string last_error = "no address";
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                  a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    // A backlog that holds a burst of connections between two loop turns.
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 &&
        ::listen(fd, SOMAXCONN) == 0)
      break;
    last_error = std::strerror(errno);
    ::close(fd);
    fd = -1;
  }
  ::freeaddrinfo(res);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ",
                                               bind_address, ": ", last_error));
  }
  int wake[2];
  if (::pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    const std::string error = std::strerror(errno);
    ::close(fd);
    return absl::UnavailableError(
        absl::StrCat("metrics endpoint: cannot create a pipe: ", error));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  const int bound_port =
      bound.ss_family == AF_INET6
          ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
          : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  std::unique_ptr<HttpExposer> e(new HttpExposer(
      fd, wake[0], wake[1], bound_port, std::move(body), options));
  e->thread_ = std::thread([p = e.get()] { Loop(p).Run(); });
  return e;
}

HttpExposer::HttpExposer(int listen_fd, int wake_read_fd, int wake_write_fd,
                         int port, std::function<std::string()> body,
                         const HttpExposerOptions& options)
    : listen_fd_(listen_fd),
      wake_read_fd_(wake_read_fd),
      wake_write_fd_(wake_write_fd),
      port_(port),
      body_(std::move(body)),
      options_(options) {}

HttpExposer::~HttpExposer() {
  stop_.store(true);
  const char byte = 0;
  // The pipe is non-blocking and read by no one else: one byte always fits.
  while (::write(wake_write_fd_, &byte, 1) < 0 && errno == EINTR) {
  }
  if (thread_.joinable()) thread_.join();
  ::close(listen_fd_);
  ::close(wake_read_fd_);
  ::close(wake_write_fd_);
}

}  // namespace server
}  // namespace scatterbrain
