// tests/testutil/process.cc — see process.h.
#include "tests/testutil/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/testutil/files.h"

namespace scatterbrain {
namespace testutil {
namespace {

// Starts argv with stdout on out_fd and stderr on err_fd; -1 if fork fails.
// Only async-signal-safe calls between fork and exec.
pid_t Spawn(const std::vector<std::string>& argv, int out_fd, int err_fd) {
  if (argv.empty()) return -1;
  std::vector<char*> args;
  for (const std::string& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out_fd, 1);
    ::dup2(err_fd, 2);
    ::execv(args[0], args.data());
    static const char kMessage[] = "exec failed\n";
    if (::write(2, kMessage, sizeof(kMessage) - 1) < 0) {
      // Nothing more to say.
    }
    ::_exit(127);
  }
  return pid;
}

int OpenForWriting(const std::string& path) {
  return ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
}

// waitpid, retried on EINTR.
pid_t WaitPid(pid_t pid, int* status, int options) {
  pid_t r;
  do {
    r = ::waitpid(pid, status, options);
  } while (r < 0 && errno == EINTR);
  return r;
}

int ExitCode(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return -1;
}

}  // namespace

Process::Process(const std::vector<std::string>& argv,
                 const std::string& log_name) {
  static std::atomic<int> counter{0};
  log_path_ = TempPath(absl::StrCat(log_name, ".", ::getpid(), ".",
                                    counter.fetch_add(1), ".log"));
  const int fd = OpenForWriting(log_path_);
  if (fd < 0) return;
  pid_ = Spawn(argv, fd, fd);
  ::close(fd);
}

Process::~Process() {
  Kill();
  if (!log_path_.empty() && !::testing::Test::HasFailure()) {
    ::unlink(log_path_.c_str());
  }
}

std::string Process::output() const { return ReadFile(log_path_); }

void Process::Reaped(int wait_status) {
  exited_ = true;
  wait_status_ = wait_status;
}

bool Process::running() {
  if (!started() || exited_) return false;
  int status = 0;
  if (WaitPid(pid_, &status, WNOHANG) == pid_) Reaped(status);
  return !exited_;
}

bool Process::WaitFor(const std::string& needle, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    // Checked before the output, so that what it wrote before exiting is
    // read after its exit is seen.
    const bool alive = running();
    if (output().find(needle) != std::string::npos) return true;
    if (!alive || absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

int Process::WaitExit(absl::Duration timeout) {
  if (!started()) return -1;
  const absl::Time deadline = absl::Now() + timeout;
  while (running()) {
    if (absl::Now() >= deadline) return -1;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return ExitCode(wait_status_);
}

bool Process::Signal(int signal) {
  if (!running()) return false;
  return ::kill(pid_, signal) == 0;
}

int Process::Kill() {
  if (!started()) return -1;
  if (!exited_) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    if (WaitPid(pid_, &status, 0) == pid_) {
      Reaped(status);
    } else {
      exited_ = true;  // not our child any more: nothing left to wait for
      wait_status_ = 0;
    }
  }
  return ExitCode(wait_status_);
}

std::string Process::ExitDescription() const {
  if (!started()) return "not started";
  if (!exited_) return "running";
  if (WIFEXITED(wait_status_)) {
    return absl::StrCat("exit status ", WEXITSTATUS(wait_status_));
  }
  if (WIFSIGNALED(wait_status_)) {
    return absl::StrCat("killed by signal ", WTERMSIG(wait_status_));
  }
  return absl::StrCat("wait status ", wait_status_);
}

CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::string& dir) {
  CommandResult r;
  const std::string out_path = absl::StrCat(dir, "/stdout.txt");
  const std::string err_path = absl::StrCat(dir, "/stderr.txt");
  const int out_fd = OpenForWriting(out_path);
  const int err_fd = OpenForWriting(err_path);
  if (out_fd >= 0 && err_fd >= 0) {
    const pid_t pid = Spawn(argv, out_fd, err_fd);
    int status = 0;
    if (pid > 0 && WaitPid(pid, &status, 0) == pid && WIFEXITED(status)) {
      r.code = WEXITSTATUS(status);
    }
  }
  if (out_fd >= 0) ::close(out_fd);
  if (err_fd >= 0) ::close(err_fd);
  r.out = ReadFile(out_path);
  r.err = ReadFile(err_path);
  return r;
}

double CpuSeconds(pid_t pid) {
  const std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  // The command name (field 2) may hold spaces: count fields after its ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream in(stat.substr(close + 1));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  // Fields 3..13, then utime (14) and stime (15).
  for (int i = 3; i <= 13; ++i) in >> field;
  if (!(in >> utime >> stime)) return -1;
  return static_cast<double>(utime + stime) / sysconf(_SC_CLK_TCK);
}

}  // namespace testutil
}  // namespace scatterbrain
