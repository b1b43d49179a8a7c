// tests/testutil/proc.h — what a process holds, read from /proc: its open
// file descriptors, resident memory and threads. For the tests that check
// that connections, buffers and threads go back after load (the /metrics
// endpoint's connections, the allocator returning freed memory).
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_PROC_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_PROC_H_

#include <sys/types.h>

#include <cstdint>

namespace scatterbrain {
namespace testutil {

// Entries of /proc/<pid>/fd (0: this process); -1 when it cannot be read.
int OpenFdCount(pid_t pid = 0);

// VmRSS of /proc/<pid>/status in bytes (0: this process); -1 when it
// cannot be read (the process is gone).
int64_t ResidentBytes(pid_t pid = 0);

// Threads of /proc/<pid>/status (0: this process); -1 when unreadable.
int ThreadCount(pid_t pid = 0);

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_PROC_H_
