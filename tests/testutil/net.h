// tests/testutil/net.h — loopback sockets for tests: a free TCP port, a
// listening socket that holds one (a busy port), and a plain HTTP/1.0 GET
// for scraping /metrics. POSIX sockets only.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_NET_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_NET_H_

#include <string>

namespace scatterbrain {
namespace testutil {

// A listening TCP socket on 127.0.0.1 with a kernel-chosen port, closed on
// destruction (or by Close()).
class Listener {
 public:
  Listener();
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  void Close();
  // The port; 0 when the socket could not be set up.
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// A loopback port that was free a moment ago (bound, then released), for
// flags that take a port number; -1 on failure. Another process may take it
// in between: callers that start a server retry on a bind failure.
int FreePort();

// A TCP connection to 127.0.0.1:`port` with `io_timeout_s` send and
// receive timeouts (blocking socket); -1 on failure. The caller closes it.
int ConnectLoopback(int port, int io_timeout_s = 5);

// GET `path` from 127.0.0.1:`port` with HTTP/1.0: the whole response
// (status line, headers, body), or "" on any socket error. 5 s send and
// receive timeouts bound the call.
std::string HttpGetResponse(int port, const std::string& path);

// The body of that response; "" on error or without a header/body break.
std::string HttpGet(int port, const std::string& path);

// Whether the peer has closed `fd` (a read returns 0 or a reset), waiting
// at most `timeout_ms`. Data the peer sent before closing is skipped.
bool PeerClosed(int fd, int timeout_ms);

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_NET_H_
