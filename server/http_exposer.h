// scatterbrain/server/http_exposer.h — a minimal HTTP/1.1 endpoint that
// serves GET /metrics from a callback, on one thread of our own.
//
// Why not prometheus-cpp's Exposer: it runs civetweb worker threads with a
// fixed 100 KiB stack, and glibc carves every loaded library's static TLS
// out of a thread's stack. OpenBLAS (pthread build) alone takes 60 KiB of
// it, so the first scrape overflowed the worker's stack and killed the
// server. This endpoint uses a default-sized thread and serves one short
// connection at a time (scrapes are rare and small), with socket timeouts so
// a slow client cannot hold it.
#ifndef SCATTERBRAIN_SERVER_HTTP_EXPOSER_H_
#define SCATTERBRAIN_SERVER_HTTP_EXPOSER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace scatterbrain {
namespace server {

class HttpExposer {
 public:
  // Listens on `bind_address` ("host:port", "[v6]:port"; port 0 picks a free
  // port) and answers GET /metrics with body(). Errors (busy port, bad
  // address) come back as a Status.
  static absl::StatusOr<std::unique_ptr<HttpExposer>> Start(
      const std::string& bind_address, std::function<std::string()> body);
  ~HttpExposer();  // stops the thread and closes the socket

  int port() const { return port_; }

 private:
  HttpExposer(int fd, int port, std::function<std::string()> body);
  void Loop();
  void Serve(int client);

  const int fd_;
  const int port_;
  const std::function<std::string()> body_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_HTTP_EXPOSER_H_
