// scatterbrain/server/executor.h — runs batches of assembled requests.
//
// Owns the Backend and one dispatcher thread. The service Submits jobs (a
// validated spec plus float32 q/k/v); they wait in the Batcher under their
// batch key until a batch closes; the dispatcher wakes on Submit or at the
// batcher's next deadline, runs every job of each ready batch and hands each
// result to the job's `done` callback.
//
// A batch goes to the backend as one Backend::ForwardBatchAsync (requests of
// a batch share every setting, so a device backend runs it as one fused
// launch; the CPU backend runs its requests one after the other, each over
// every core). Up to the backend's max_batches_in_flight() batches are with
// it at once, so batch n+1 uploads while batch n computes; each batch's
// completion finishes its jobs on the backend's thread.
#ifndef SCATTERBRAIN_SERVER_EXECUTOR_H_
#define SCATTERBRAIN_SERVER_EXECUTOR_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kernels/backend.h"
#include "kernels/session/kv_session.h"
#include "server/batcher.h"
#include "server/clock.h"
#include "server/memory_budget.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/tensor_assembler.h"

namespace scatterbrain {
namespace server {

struct ExecutorOptions {
  // "auto": cuda when a CUDA device is present and the cuda backend can be
  // created, else cpu. "cpu", "cuda": that backend or a startup error.
  std::string backend = "auto";
  // Device, streams, workspace limit and CPU threads of the backend.
  BackendOptions backend_options;
  BatcherOptions batcher;
  // Query rows per (batch, head) recomputed exactly to estimate each
  // approximate request's relative error (Stats.estimated_relative_error);
  // 0 turns sampling off. Exact requests are never sampled.
  int error_sample_rows = 8;
};

struct JobResult {
  absl::Status status;
  RequestStats stats;
  TensorBuffer out;  // [batch, heads, seq_q, dim_v] float32 when status is OK
};

struct Job;
using JobPtr = std::shared_ptr<Job>;

// One request, assembled. Inputs are released as soon as it has run.
struct Job {
  RequestSpec spec;
  // float32, or the wire dtype when the executor's inputs_in_wire_dtype().
  TensorBuffer q, k, v;
  // Set by whoever drops the request; checked before it runs and, while it
  // runs, by the backend between pieces of work (kernels/cancel.h), so the
  // computation stops within milliseconds (CPU) or before launch (CUDA).
  std::atomic<bool> cancelled{false};
  // When the caller stops waiting, on the executor's clock (microseconds);
  // kNoDeadline: never. Past it the job is not started (DEADLINE_EXCEEDED)
  // and a running computation stops. Set before Submit.
  static constexpr int64_t kNoDeadline = std::numeric_limits<int64_t>::max();
  int64_t deadline_us = kNoDeadline;
  // Called exactly once for every job Submit accepted: with its result, or
  // CANCELLED (removed while queued or cancelled before it ran), or
  // UNAVAILABLE (server stopped). Runs on the dispatcher thread, or on the
  // thread that called Cancel / RemoveCancelled / Stop: it must not block
  // and the caller of those must not hold locks `done` takes.
  std::function<void(const JobPtr& job, JobResult result)> done;
  // A request on a server-held session (spec.on_session()): the session,
  // held until the job is done (a delete or an eviction meanwhile frees it
  // after). Such jobs batch together (their batch key) and run as one
  // AttendSessions call.
  std::shared_ptr<KvSession> session;
  // Its share of the server's memory budget (memory_budget.h), held until
  // the last owner (upload, executor, answer) lets the job go.
  MemoryReservation memory;
  // Optional: where the float32 output goes (a caller's buffer that stays
  // valid as long as this one holds it, e.g. a view of a client's shared-
  // memory region, so the backend writes the answer in place). Empty: the
  // executor allocates the output.
  TensorBuffer out_view;
};

class Executor {
 public:
  // Creates the backend (see ExecutorOptions::backend) and starts the
  // dispatcher. `metrics` and `clock` must outlive the executor.
  static absl::StatusOr<std::unique_ptr<Executor>> Create(
      const ExecutorOptions& options, Metrics* metrics, const Clock* clock);
  ~Executor();  // Stop()

  // The same with a backend made by the caller (tests inject fakes);
  // options.backend is ignored.
  static std::unique_ptr<Executor> CreateWithBackend(
      const ExecutorOptions& options, std::unique_ptr<Backend> backend,
      Metrics* metrics, const Clock* clock);

  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Queues the job. UNAVAILABLE when the queue is full or draining; then
  // `done` is not called.
  absl::Status Submit(JobPtr job);
  // Marks `job` cancelled and, if it is still queued, removes it (its `done`
  // runs now, on this thread, with CANCELLED). A running job stops at the
  // backend's next check and `done` gets CANCELLED (or its result, if it
  // finished first): the caller discards either.
  void Cancel(const JobPtr& job);
  // Removes every queued job already marked cancelled (each `done` runs on
  // this thread).
  void RemoveCancelled();
  // New jobs are refused (UNAVAILABLE); queued ones run without waiting
  // for their batch delay.
  void Drain();
  // Stops the dispatcher after the batch it is running; queued jobs get
  // UNAVAILABLE. Idempotent.
  void Stop();

  const std::string& backend_name() const { return backend_name_; }
  // Host buffers from the backend (pinned on CUDA), for the tensors of the
  // jobs submitted here.
  HostAllocator host_allocator() const;
  // Whether jobs' inputs stay in their wire dtype (the backend converts
  // them on its device) rather than float32.
  bool inputs_in_wire_dtype() const { return backend_->ConvertsOnDevice(); }
  // The backend's memory now.
  MemoryStats memory_stats() const { return backend_->GetMemoryStats(); }
  // Whether the backend computes calls with these settings
  // (Backend::Supports: UNIMPLEMENTED for what it does not run).
  absl::Status Supports(const AttentionParams& p) const {
    return backend_->Supports(p);
  }
  int queued() const { return batcher_.queued(); }

 private:
  Executor(const ExecutorOptions& options, std::unique_ptr<Backend> backend,
           Metrics* metrics, const Clock* clock);
  void Loop();
  void Wake();
  struct RunningBatch;
  // Hands a ready batch to the backend (waiting while
  // max_batches_in_flight() are with it); FinishBatch completes its jobs.
  void RunBatch(Batch<JobPtr>& batch);
  // A batch of session jobs: one AttendSessions call, on this thread, once
  // no other batch is with the backend.
  void RunSessionBatch(Batch<JobPtr>& batch);
  // Whether a job taken from a batch at `start_us` may run: false (and the
  // job completed) when it was cancelled, its deadline passed or its output
  // cannot be allocated; else `result` has its output and queue stats.
  bool StartJob(const JobPtr& job, int64_t enqueued_us, int64_t start_us,
                int batch_size, JobResult* result);
  // Counts a job that stopped (cancelled, deadline) while running.
  void CountStopped(const Job& job, const absl::Status& status, int64_t end_us);
  void FinishBatch(RunningBatch& run);
  void FillStats(const Job& job, const AttentionCall& call, JobResult* result);
  void Complete(const JobPtr& job, JobResult result);
  void ReportDeviceMemory();

  const ExecutorOptions options_;
  const std::unique_ptr<Backend> backend_;
  const std::string backend_name_;
  Metrics* const metrics_;
  const Clock* const clock_;
  Batcher<JobPtr> batcher_;

  absl::Mutex mu_;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  int batches_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_EXECUTOR_H_
