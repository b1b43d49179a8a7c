// tests/testutil/process.h — child processes for tests that run the real
// binaries: a Process (fork/exec, stdout and stderr to a log file the test
// can poll, bounded waits for a line and for the exit, signals) and
// RunCommand (run to completion, stdout and stderr apart).
//
// Output goes to files, not pipes, so a chatty child never blocks on a pipe
// nobody drains, and the log stays readable after the child is gone.
// Everything the child needs is prepared before fork(): the child only
// dup2()s and exec()s (the test process has gRPC's threads running).
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_PROCESS_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace scatterbrain {
namespace testutil {

class Process {
 public:
  // Starts argv[0] (a path: no PATH lookup) with `argv`; stdout and stderr
  // both go to a new file TempPath("<log_name>.<test pid>.<n>.log").
  // started() is false when the log or the fork failed; a failed exec
  // exits 127.
  explicit Process(const std::vector<std::string>& argv,
                   const std::string& log_name = "process");
  // SIGKILLs and reaps the child if it is still running. Removes the log
  // unless the current test has failed (its messages print the log).
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }

  // Everything the child has written so far (stdout and stderr, in order).
  std::string output() const;

  // True while the child has not exited (reaps it once it has).
  bool running();

  // Polls the output until it contains `needle` (true), the child exits
  // without having written it, or `timeout` passes (false).
  bool WaitFor(const std::string& needle, absl::Duration timeout);

  // The exit code (128 + signal when killed by a signal), or -1 when the
  // child is still running after `timeout`.
  int WaitExit(absl::Duration timeout);

  // kill(pid, signal) while the child runs; false once it has been reaped.
  bool Signal(int signal);

  // SIGKILL and reap; the exit code as WaitExit's (-1 if never started).
  int Kill();

  // "exit status N", "killed by signal N", "running" or "not started".
  std::string ExitDescription() const;

 private:
  // Records the wait status of the reaped child.
  void Reaped(int wait_status);

  pid_t pid_ = -1;
  std::string log_path_;
  bool exited_ = false;
  int wait_status_ = 0;
};

// What a finished command wrote and returned.
struct CommandResult {
  int code = -1;  // the exit status; -1 when it did not exit normally
  std::string out;
  std::string err;
};

// Runs argv[0] (a path) with `argv` to completion, no timeout; stdout and
// stderr go to `dir`/stdout.txt and `dir`/stderr.txt (overwritten) and are
// returned. No shell: arguments pass as they are.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::string& dir);

// CPU seconds (user + system, every thread) process `pid` has used so far,
// from /proc/<pid>/stat (getpid() for this process); -1 when unreadable.
// Tests compare two readings to see whether a process is still computing.
double CpuSeconds(pid_t pid);

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_PROCESS_H_
