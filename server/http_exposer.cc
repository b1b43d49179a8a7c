// scatterbrain/server/http_exposer.cc
#include "server/http_exposer.h"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace scatterbrain {
namespace server {
namespace {

constexpr size_t kMaxRequestBytes = 8192;
constexpr int kIoTimeoutSeconds = 2;
constexpr int kPollMillis = 100;

bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n =
        ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

std::string Response(const std::string& status, const std::string& type,
                     const std::string& body) {
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                      "\r\nContent-Length: ", body.size(),
                      "\r\nConnection: close\r\n\r\n", body);
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpExposer>> HttpExposer::Start(
    const std::string& bind_address, std::function<std::string()> body) {
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
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 16) == 0)
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
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  const int bound_port =
      bound.ss_family == AF_INET6
          ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
          : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  std::unique_ptr<HttpExposer> e(
      new HttpExposer(fd, bound_port, std::move(body)));
  e->thread_ = std::thread([p = e.get()] { p->Loop(); });
  return e;
}

HttpExposer::HttpExposer(int fd, int port, std::function<std::string()> body)
    : fd_(fd), port_(port), body_(std::move(body)) {}

HttpExposer::~HttpExposer() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  ::close(fd_);
}

void HttpExposer::Loop() {
  while (!stop_.load()) {
    pollfd p{fd_, POLLIN, 0};
    const int r = ::poll(&p, 1, kPollMillis);
    if (r <= 0) continue;
    const int client = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    timeval tv{kIoTimeoutSeconds, 0};
    ::setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    Serve(client);
    ::close(client);
  }
}

void HttpExposer::Serve(int client) {
  std::string request;
  char buf[1024];
  while (request.find("\r\n\r\n") == std::string::npos &&
         request.size() < kMaxRequestBytes) {
    const ssize_t n = ::recv(client, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    request.append(buf, static_cast<size_t>(n));
  }
  const std::string line = request.substr(0, request.find("\r\n"));
  const bool get = absl::StartsWith(line, "GET ");
  const bool head = absl::StartsWith(line, "HEAD ");
  const size_t path_start = line.find(' ');
  const size_t path_end = line.find(' ', path_start + 1);
  const std::string path =
      path_start == std::string::npos
          ? ""
          : line.substr(path_start + 1, path_end == std::string::npos
                                            ? std::string::npos
                                            : path_end - path_start - 1);
  std::string response;
  if (!get && !head) {
    response = Response("405 Method Not Allowed", "text/plain", "GET only\n");
  } else if (path == "/metrics" || absl::StartsWith(path, "/metrics?")) {
    response =
        Response("200 OK", "text/plain; version=0.0.4; charset=utf-8", body_());
    if (head) response.resize(response.find("\r\n\r\n") + 4);
  } else {
    response = Response("404 Not Found", "text/plain", "see /metrics\n");
  }
  SendAll(client, response);
}

}  // namespace server
}  // namespace scatterbrain
