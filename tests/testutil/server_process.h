// tests/testutil/server_process.h — build/bin/scatterbrain_server as a real
// process for the tests that need one (the client library, the CLI's
// server modes, scale-out, signals and exit codes): started on free
// loopback ports with the test's flags, its output in a log file, Start()
// returning once it answers SERVING, and Stop() checking that SIGTERM makes
// it exit 0.
//
// Part of sb_testutil_grpc (the readiness probe is a gRPC health check).
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_SERVER_PROCESS_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "tests/testutil/process.h"

namespace grpc {
class ChannelCredentials;
}  // namespace grpc

namespace scatterbrain {
namespace testutil {

// The server binary: SB_SERVER_PATH when the build defines it (it does for
// sb_testutil_grpc), else scatterbrain_server next to the running test
// binary (both live in build/bin).
std::string ServerBinary();

struct ServerProcessOptions {
  // Flags after the harness's own. The harness adds --port=<FreePort()> and
  // --metrics_port=<FreePort()> unless these flags set --port / --metrics_port
  // themselves; with --port=0 the server picks the port and the harness
  // reads it from the startup line.
  std::vector<std::string> flags;
  // The log is TempPath("<log_name>.<test pid>.<n>.log").
  std::string log_name = "scatterbrain_server";
  // Bound on Start(): the startup line, SERVING and /metrics together.
  absl::Duration start_timeout = absl::Seconds(30);
  // Credentials of the readiness probe's channel, for a server started
  // with TLS flags; nullptr = plaintext.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

class ServerProcess {
 public:
  ServerProcess() = default;
  // SIGKILLs a server still running (no clean-exit check: call Stop() for
  // that).
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Starts the server and waits, within options.start_timeout, until it
  // has printed its startup lines, answers grpc.health.v1 Check with
  // SERVING and (when the metrics port is on) serves /metrics. A server
  // that exits with status 1 during startup (a port taken between
  // FreePort() and its bind) is started again on fresh ports, 3 tries in
  // all. Errors carry the server's log; a server not ready in time is
  // killed.
  absl::Status Start(const ServerProcessOptions& options);

  // SIGTERM (the server drains and exits 0), then SIGKILL if it is still
  // running after `timeout`. OK on exit status 0; otherwise what happened,
  // with the server's log. FailedPrecondition when it is not running.
  absl::Status Stop(absl::Duration timeout = absl::Seconds(20));

  // SIGKILL and reap, at once (the scale-out test's dying replica).
  void Kill();

  // For tests of the process itself: signals, log lines, the exit code
  // (see Process).
  bool Signal(int signal);
  bool WaitForLog(const std::string& needle, absl::Duration timeout);
  int WaitExit(absl::Duration timeout);
  bool running();

  // "127.0.0.1:<port>", the gRPC port, the metrics port (0: off).
  std::string target() const;
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  pid_t pid() const;
  // Everything the server has written (stdout and stderr) and its file.
  std::string log() const;
  std::string log_path() const;

 private:
  // One try: starts the process and waits until ready. Sets *retry when
  // the server exited with status 1 and the harness chose its ports.
  absl::Status TryStart(const ServerProcessOptions& options, bool* retry);

  std::unique_ptr<Process> process_;
  int port_ = 0;
  int metrics_port_ = 0;
};

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_SERVER_PROCESS_H_
