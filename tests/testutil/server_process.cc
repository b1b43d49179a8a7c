// tests/testutil/server_process.cc — see server_process.h.
#include "tests/testutil/server_process.h"

#include <signal.h>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "tests/testutil/files.h"
#include "tests/testutil/health.h"
#include "tests/testutil/net.h"

namespace scatterbrain {
namespace testutil {
namespace {

constexpr int kStartAttempts = 3;

bool HasFlag(const std::vector<std::string>& flags, const std::string& name) {
  for (const std::string& f : flags) {
    if (absl::StartsWith(f, absl::StrCat("--", name, "="))) return true;
  }
  return false;
}

// The server prints, once it serves (server/main.cc):
//   scatterbrain_server <version>: gRPC on <host>:<port> (backend <name>)
//   scatterbrain_server: security: ...
//   scatterbrain_server: metrics at http://<host>:<port>/metrics
//     (or: scatterbrain_server: metrics endpoint off)
// in one flush. True once the second line is complete.
bool StartupPrinted(const std::string& log) {
  const size_t at = log.find("scatterbrain_server: metrics ");
  return at != std::string::npos && log.find('\n', at) != std::string::npos;
}

// The port after the last ':' of the address that follows `tag`, up to
// `end`; 0 when absent or malformed.
int PortAfter(const std::string& log, const std::string& tag,
              const std::string& end) {
  const size_t at = log.find(tag);
  if (at == std::string::npos) return 0;
  const size_t from = at + tag.size();
  const size_t to = log.find(end, from);
  if (to == std::string::npos) return 0;
  const std::string address = log.substr(from, to - from);
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port)) {
    return 0;
  }
  return port;
}

}  // namespace

std::string ServerBinary() {
#ifdef SB_SERVER_PATH
  return SB_SERVER_PATH;
#else
  return BinDir() + "/scatterbrain_server";
#endif
}

ServerProcess::~ServerProcess() { Kill(); }

absl::Status ServerProcess::Start(const ServerProcessOptions& options) {
  absl::Status st;
  for (int attempt = 1; attempt <= kStartAttempts; ++attempt) {
    bool retry = false;
    st = TryStart(options, &retry);
    if (st.ok() || !retry) break;
  }
  return st;
}

absl::Status ServerProcess::TryStart(const ServerProcessOptions& options,
                                     bool* retry) {
  Kill();
  process_.reset();
  port_ = 0;
  metrics_port_ = 0;
  const std::string bin = ServerBinary();
  if (!Exists(bin)) {
    return absl::FailedPreconditionError(
        absl::StrCat("no server binary at ", bin));
  }
  std::vector<std::string> argv = {bin};
  const bool own_port = !HasFlag(options.flags, "port");
  const bool own_metrics_port = !HasFlag(options.flags, "metrics_port");
  if (own_port) {
    port_ = FreePort();
    argv.push_back(absl::StrCat("--port=", port_));
  }
  if (own_metrics_port) {
    metrics_port_ = FreePort();
    argv.push_back(absl::StrCat("--metrics_port=", metrics_port_));
  }
  argv.insert(argv.end(), options.flags.begin(), options.flags.end());
  process_ = std::make_unique<Process>(argv, options.log_name);
  if (!process_->started()) {
    return absl::InternalError(
        absl::StrCat("cannot start ", bin, " (log file or fork failed)"));
  }

  const absl::Time deadline = absl::Now() + options.start_timeout;
  // Each wait below: true once `ready`, else an error (exited, timed out).
  auto wait = [&](const char* what, absl::Duration poll,
                  auto ready) -> absl::Status {
    while (true) {
      const bool alive = process_->running();
      if (ready()) return absl::OkStatus();
      if (!alive) {
        *retry = process_->WaitExit(absl::ZeroDuration()) == 1 &&
                 (own_port || own_metrics_port);
        return absl::UnavailableError(absl::StrCat("server exited early (",
                                                   process_->ExitDescription(),
                                                   "): ", process_->output()));
      }
      if (absl::Now() >= deadline) {
        const std::string log = process_->output();
        process_->Kill();
        return absl::DeadlineExceededError(
            absl::StrCat("server not SERVING after ",
                         absl::FormatDuration(options.start_timeout),
                         " (waiting for ", what, "): ", log));
      }
      absl::SleepFor(poll);
    }
  };

  absl::Status st = wait("its startup lines", absl::Milliseconds(10),
                         [&] { return StartupPrinted(process_->output()); });
  if (!st.ok()) return st;
  // Ports the flags left to the caller (0: the server's pick) come from
  // the startup lines.
  const std::string startup = process_->output();
  if (!own_port) port_ = PortAfter(startup, "gRPC on ", " (backend");
  if (!own_metrics_port) {
    metrics_port_ = PortAfter(startup, "metrics at http://", "/metrics");
  }
  if (port_ <= 0) {
    process_->Kill();
    return absl::InternalError(
        absl::StrCat("no gRPC port in the server's startup line: ", startup));
  }

  const std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(target(), options.credentials != nullptr
                                        ? options.credentials
                                        : grpc::InsecureChannelCredentials());
  st = wait("SERVING", absl::Milliseconds(50), [&] {
    const absl::StatusOr<ServingStatus> h =
        CheckHealth(channel, absl::Seconds(1));
    return h.ok() && *h == ServingStatus::kServing;
  });
  if (!st.ok()) return st;

  if (metrics_port_ > 0) {
    st = wait("/metrics", absl::Milliseconds(50),
              [&] { return !HttpGet(metrics_port_, "/metrics").empty(); });
  }
  return st;
}

absl::Status ServerProcess::Stop(absl::Duration timeout) {
  if (process_ == nullptr || !process_->running()) {
    return absl::FailedPreconditionError("not running");
  }
  process_->Signal(SIGTERM);
  std::string what;
  const int code = process_->WaitExit(timeout);
  if (code == 0) return absl::OkStatus();
  if (code < 0) {
    process_->Kill();
    what = absl::StrCat("still running ", absl::FormatDuration(timeout),
                        " after SIGTERM (killed)");
  } else {
    what = process_->ExitDescription();
  }
  return absl::InternalError(
      absl::StrCat(what, "; server log:\n", process_->output()));
}

void ServerProcess::Kill() {
  if (process_ != nullptr) process_->Kill();
}

bool ServerProcess::Signal(int signal) {
  return process_ != nullptr && process_->Signal(signal);
}

bool ServerProcess::WaitForLog(const std::string& needle,
                               absl::Duration timeout) {
  return process_ != nullptr && process_->WaitFor(needle, timeout);
}

int ServerProcess::WaitExit(absl::Duration timeout) {
  return process_ == nullptr ? -1 : process_->WaitExit(timeout);
}

bool ServerProcess::running() {
  return process_ != nullptr && process_->running();
}

std::string ServerProcess::target() const {
  return absl::StrCat("127.0.0.1:", port_);
}

pid_t ServerProcess::pid() const {
  return process_ == nullptr ? -1 : process_->pid();
}

std::string ServerProcess::log() const {
  return process_ == nullptr ? "" : process_->output();
}

std::string ServerProcess::log_path() const {
  return process_ == nullptr ? "" : process_->log_path();
}

}  // namespace testutil
}  // namespace scatterbrain
