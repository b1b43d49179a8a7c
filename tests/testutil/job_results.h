// tests/testutil/job_results.h — the results an executor hands back, by
// request id, for tests that submit jobs directly (executor_test,
// executor_batch_test). Header-only: it needs the executor's types, not its
// library, so sb_testutil stays free of the server.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_JOB_RESULTS_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_JOB_RESULTS_H_

#include <cstddef>
#include <map>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/executor.h"

namespace scatterbrain {
namespace testutil {

class JobResults {
 public:
  // A job's `done` callback: records its result (and how often it came).
  void Add(const server::JobPtr& job, server::JobResult r) {
    absl::MutexLock lock(&mu_);
    ++calls_[job->spec.request_id];
    results_[job->spec.request_id] = std::move(r);
  }
  // Waits (bounded: 60 s) until `n` results are in.
  bool WaitFor(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return results_.size() >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(60));
  }
  server::JobResult& at(const std::string& id) {
    absl::MutexLock lock(&mu_);
    return results_.at(id);
  }
  // How many results came for `id` (each job must complete exactly once).
  int calls(const std::string& id) {
    absl::MutexLock lock(&mu_);
    return calls_[id];
  }
  // Releases the results: buffers from a backend's AllocateHost must go
  // before the backend does.
  void Clear() {
    absl::MutexLock lock(&mu_);
    results_.clear();
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, server::JobResult> results_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_JOB_RESULTS_H_
