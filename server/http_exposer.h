// scatterbrain/server/http_exposer.h — a minimal HTTP/1.1 endpoint that
// serves GET /metrics from a callback: one thread of our own running a
// poll() event loop over non-blocking sockets, so any number of idle or slow
// connections never delays another client's scrape.
//
// Why not prometheus-cpp's Exposer: it runs civetweb worker threads with a
// fixed 100 KiB stack, and glibc carves every loaded library's static TLS
// out of a thread's stack. OpenBLAS (pthread build) alone takes 60 KiB of
// it, so the first scrape overflowed the worker's stack and killed the
// server. This endpoint uses a default-sized thread.
//
// Why an event loop: the endpoint used to serve one connection at a time,
// so one idle TCP connection delayed a scrape by its 2 s socket timeout and
// four made Prometheus time out (false target-down alerts, and an autoscaler
// on queue depth went blind). Now every connection is a state machine
// (reading its request head, writing its response) with a deadline, and the
// loop moves whichever is ready; a scrape costs one Serialize() of the
// registry (~1 ms) plus a loop turn, whatever else is connected.
//
// Limits (HttpExposerOptions): a deadline to send the request head, one to
// take the response, a keep-alive idle timeout (Prometheus reuses its
// connections), a cap on the request head's size, and a cap on open
// connections. At the cap a new connection is always taken: the oldest idle
// connection is closed to make room, or, with none idle, the one whose
// request has been arriving longest (a slow-loris client). So misbehaving
// clients can cost each other their connections, never a fresh scrape.
#ifndef SCATTERBRAIN_SERVER_HTTP_EXPOSER_H_
#define SCATTERBRAIN_SERVER_HTTP_EXPOSER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace scatterbrain {
namespace server {

struct HttpExposerOptions {
  // A new connection must deliver its whole request head (request line and
  // headers) within this long of being accepted; a kept-alive one within
  // this long of the request's first byte. Prometheus sends its ~200-byte
  // request at once, so this only ends slow or stuck clients.
  int64_t request_timeout_ms = 5000;
  // Once a response is ready, the client has this long to take all of it
  // (a client that never reads cannot hold its connection).
  int64_t response_timeout_ms = 10000;
  // A kept-alive connection waiting for its next request is closed after
  // this long. 75 s (nginx's default) outlasts Prometheus's default 1 min
  // scrape interval, so a scraper keeps one connection. 0 = no keep-alive:
  // every response says "Connection: close".
  int64_t keepalive_timeout_ms = 75000;
  // Open client connections at most; at the cap the oldest idle one (or,
  // with none idle, the slowest request) is closed for each new one.
  int max_connections = 128;
  // Largest request head; a longer one is answered 431 and closed.
  int64_t max_request_bytes = 8192;
};

// INVALID_ARGUMENT naming the field when an option is out of range.
absl::Status ValidateHttpExposerOptions(const HttpExposerOptions& options);

class HttpExposer {
 public:
  // Listens on `bind_address` ("host:port", "[v6]:port"; port 0 picks a free
  // port) and answers GET (and HEAD) /metrics with body(). Errors (busy
  // port, bad address, bad options) come back as a Status.
  static absl::StatusOr<std::unique_ptr<HttpExposer>> Start(
      const std::string& bind_address, std::function<std::string()> body,
      const HttpExposerOptions& options = {});
  ~HttpExposer();  // stops the thread, closes every connection and socket

  HttpExposer(const HttpExposer&) = delete;
  HttpExposer& operator=(const HttpExposer&) = delete;

  int port() const { return port_; }
  // Client connections open now (for tests and debugging).
  int open_connections() const { return open_connections_.load(); }

 private:
  class Loop;
  HttpExposer(int listen_fd, int wake_read_fd, int wake_write_fd, int port,
              std::function<std::string()> body,
              const HttpExposerOptions& options);

  const int listen_fd_;
  // A pipe: the destructor writes a byte to wake the loop at once.
  const int wake_read_fd_;
  const int wake_write_fd_;
  const int port_;
  const std::function<std::string()> body_;
  const HttpExposerOptions options_;
  std::atomic<bool> stop_{false};
  std::atomic<int> open_connections_{0};
  std::thread thread_;
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_HTTP_EXPOSER_H_
