// tests/restart_test.cc — single calls of the C++ client (Attend on its
// stream, AttendUnary) and of the CLI (`scatterbrain_cli attend --server`)
// survive a restart of the real server on the same port: the retry budget
// (ClientOptions::retry_budget, 5 s; --retry_budget_s) outlasts it. The
// issue: the old 5 tries (~0.9 s of waits, and gRPC's own reconnect backoff
// of 1 s, then 1.6 s, ...) were shorter than a restart (~1.2 s), so single
// calls failed across one.
//
// Each restart keeps the port closed for kDowntime (1.5 s, a restart's
// length on a loaded machine: exit, supervisor, start-up) before the new
// server starts. Two restarts, SIGTERM (drain) then SIGKILL, each followed
// by kUptime (3 s) of calls on the new server: longer than a retry's
// longest wait plus the channel's (1.2 s each), so a call still retrying
// from the first restart is answered before the second (restarts 1 s apart
// could make a call miss the window and spend its budget across both).
// Every call has a 60 s deadline.
// Also the retry policy itself (RetryDelay), without a server.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cli/npy.h"
#include "client/cpp/client.h"
#include "gtest/gtest.h"
#include "tests/testutil/files.h"
#include "tests/testutil/process.h"
#include "tests/testutil/random.h"
#include "tests/testutil/server_process.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace {

using client::AttendInput;
using client::AttentionClient;
using client::ClientOptions;
using testutil::IsOk;
using testutil::ServerProcess;

constexpr absl::Duration kDowntime = absl::Milliseconds(1500);
constexpr absl::Duration kUptime = absl::Seconds(3);

// --- the policy ------------------------------------------------------------

TEST(RetryPolicyTest, WhatIsRetriedAndForHowLong) {
  ClientOptions o;  // the defaults: 5 s budget, no count limit
  const absl::Time now = absl::Now();
  EXPECT_TRUE(
      client::internal::RetryDelay(o, absl::UnavailableError("down"), 1, now)
          .has_value());
  // A server shutting down cancels the calls it has not started.
  EXPECT_TRUE(client::internal::RetryDelay(o, absl::CancelledError("x"), 1, now)
                  .has_value());
  for (const absl::Status& s :
       {absl::InvalidArgumentError("x"), absl::ResourceExhaustedError("x"),
        absl::DeadlineExceededError("x"), absl::InternalError("x")}) {
    EXPECT_FALSE(client::internal::RetryDelay(o, s, 1, now).has_value()) << s;
  }
  // Many tries are fine within the budget; none starts past it.
  const std::optional<absl::Duration> later = client::internal::RetryDelay(
      o, absl::UnavailableError("down"), 30, now - absl::Seconds(2));
  ASSERT_TRUE(later.has_value());
  EXPECT_LE(*later, o.max_backoff * 1.2);
  EXPECT_FALSE(client::internal::RetryDelay(o, absl::UnavailableError("down"),
                                            2, now - absl::Seconds(5))
                   .has_value());
  // max_attempts, when set, still caps the tries; a zero budget: no retry.
  o.max_attempts = 3;
  EXPECT_TRUE(
      client::internal::RetryDelay(o, absl::UnavailableError("x"), 2, now)
          .has_value());
  EXPECT_FALSE(
      client::internal::RetryDelay(o, absl::UnavailableError("x"), 3, now)
          .has_value());
  o.max_attempts = 0;
  o.retry_budget = absl::ZeroDuration();
  EXPECT_FALSE(
      client::internal::RetryDelay(o, absl::UnavailableError("x"), 1, now)
          .has_value());
}

// --- a real restart --------------------------------------------------------

// Calls of one kind in a loop until stopped: how many succeeded, and the
// first few failures.
class CallLoop {
 public:
  CallLoop(std::string name, std::function<absl::Status()> call)
      : name_(std::move(name)), call_(std::move(call)) {
    thread_ = std::thread([this] {
      while (!stop_.load()) Record(call_());
    });
  }
  ~CallLoop() { Stop(); }

  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  void Check() {
    std::lock_guard<std::mutex> lock(mu_);
    std::printf("%s: %d calls OK, %d failed\n", name_.c_str(), ok_,
                static_cast<int>(failures_.size()));
    EXPECT_TRUE(failures_.empty())
        << name_ << ": " << failures_.size()
        << " calls failed, the first: " << failures_.front();
    // Calls ran before, between and after the restarts.
    EXPECT_GE(ok_, 3) << name_;
  }

 private:
  void Record(const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (s.ok()) {
      ++ok_;
    } else {
      failures_.push_back(s.ToString());
    }
  }

  const std::string name_;
  const std::function<absl::Status()> call_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  int ok_ = 0;
  std::vector<std::string> failures_;
  std::thread thread_;
};

TEST(RestartTest, SingleCallsSurviveRestartsOnTheSamePort) {
  auto server = std::make_unique<ServerProcess>();
  testutil::ServerProcessOptions so;
  so.flags = {"--backend=cpu"};
  ASSERT_THAT(server->Start(so), IsOk());
  const std::vector<std::string> same_ports = {
      "--backend=cpu", absl::StrCat("--port=", server->port()),
      absl::StrCat("--metrics_port=", server->metrics_port())};

  // Inputs: [1, 2, 64, 16], in memory for the library, in .npy files for
  // the CLI.
  const std::vector<float> x = testutil::RandomNormal(2 * 64 * 16, 3);
  AttendInput in;
  in.q = in.k = in.v = x;
  in.shape = {1, 2, 64, 64, 16, 16};
  in.settings.set_method(v1::METHOD_EXACT);
  testutil::ScratchDir dir("restart");
  ASSERT_TRUE(dir.ok());
  ASSERT_THAT(WriteNpy(dir.File("x.npy"), {1, 2, 64, 16}, x.data()), IsOk());

  ClientOptions o;
  o.target = server->target();
  o.deadline = absl::Seconds(60);
  absl::StatusOr<std::unique_ptr<AttentionClient>> c =
      AttentionClient::Create(o);
  ASSERT_THAT(c.status(), IsOk());
  AttentionClient* client = c->get();

  std::vector<std::unique_ptr<CallLoop>> loops;
  loops.push_back(std::make_unique<CallLoop>(
      "Attend", [&] { return client->Attend(in).status(); }));
  loops.push_back(std::make_unique<CallLoop>(
      "AttendUnary", [&] { return client->AttendUnary(in).status(); }));
  const std::string target = server->target();  // the same after restarts
  loops.push_back(std::make_unique<CallLoop>("scatterbrain_cli attend", [&] {
    const testutil::CommandResult r = testutil::RunCommand(
        {testutil::BinDir() + "/scatterbrain_cli", "attend",
         "--q=" + dir.File("x.npy"), "--k=" + dir.File("x.npy"),
         "--v=" + dir.File("x.npy"), "--out=" + dir.File("o.npy"),
         "--method=exact", "--server=" + target, "--timeout_s=60"},
        dir.path());
    return r.code == 0
               ? absl::OkStatus()
               : absl::UnknownError(absl::StrCat("exit ", r.code, ": ", r.err));
  }));
  absl::SleepFor(absl::Seconds(1));

  std::vector<std::unique_ptr<ServerProcess>> old;
  for (const int sig : {SIGTERM, SIGKILL}) {
    ASSERT_TRUE(server->Signal(sig));
    ASSERT_GE(server->WaitExit(absl::Seconds(60)), 0);
    const absl::Time down = absl::Now();
    absl::SleepFor(kDowntime);
    old.push_back(std::move(server));
    server = std::make_unique<ServerProcess>();
    so.flags = same_ports;
    ASSERT_THAT(server->Start(so), IsOk());
    std::printf(
        "restart after signal %d: serving again %.2f s after the exit\n", sig,
        absl::ToDoubleSeconds(absl::Now() - down));
    absl::SleepFor(kUptime);
  }
  for (auto& loop : loops) loop->Stop();
  for (auto& loop : loops) loop->Check();
  EXPECT_THAT(server->Stop(), IsOk());
}

}  // namespace
}  // namespace scatterbrain
