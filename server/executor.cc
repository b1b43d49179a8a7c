// scatterbrain/server/executor.cc — see executor.h.
#include "server/executor.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <new>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "kernels/devices.h"
#include "kernels/error_estimate.h"

namespace scatterbrain {
namespace server {
namespace {

// Seed of the error estimate's row sample: derived from the request's seed
// so that a request's stats are reproducible too.
constexpr uint64_t kErrorSampleSalt = 0x9e3779b97f4a7c15ull;

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& name) {
  if (name == "cpu" || name == "cuda") return CreateBackend(name);
  if (name == "auto") {
    if (!CudaDevices().empty()) {
      absl::StatusOr<std::unique_ptr<Backend>> cuda = CreateBackend("cuda");
      if (cuda.ok()) return cuda;
      std::fprintf(stderr,
                   "scatterbrain_server: a GPU is present but the cuda backend "
                   "is not usable (%s); using cpu\n",
                   std::string(cuda.status().message()).c_str());
    }
    return CreateBackend("cpu");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("backend: must be auto, cpu or cuda, got '", name, "'"));
}

// Resident memory of this process: what "device memory in use" means for
// the CPU backend.
int64_t ResidentBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  if (n != 2) return 0;
  return static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Executor>> Executor::Create(
    const ExecutorOptions& options, Metrics* metrics, const Clock* clock) {
  SB_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                      MakeBackend(options.backend));
  return std::unique_ptr<Executor>(
      new Executor(options, std::move(backend), metrics, clock));
}

Executor::Executor(const ExecutorOptions& options,
                   std::unique_ptr<Backend> backend, Metrics* metrics,
                   const Clock* clock)
    : options_(options),
      backend_(std::move(backend)),
      backend_name_(backend_->name()),
      metrics_(metrics),
      clock_(clock),
      batcher_(options.batcher, clock) {
  ReportDeviceMemory();
  thread_ = std::thread([this] { Loop(); });
}

Executor::~Executor() { Stop(); }

absl::Status Executor::Submit(JobPtr job) {
  const std::string key = job->spec.batch_key;
  const int64_t tokens = job->spec.tokens;
  absl::Status st = batcher_.Enqueue(key, std::move(job), tokens);
  if (!st.ok()) {
    if (absl::IsUnavailable(st)) {
      return absl::UnavailableError(absl::StrCat(
          "server queue: ", st.message(), " (max_queue_requests=",
          options_.batcher.max_queue_requests, " or draining); retry later"));
    }
    return st;
  }
  metrics_->SetQueueDepth(batcher_.queued());
  Wake();
  return absl::OkStatus();
}

void Executor::Cancel(const JobPtr& job) {
  job->cancelled.store(true);
  std::vector<JobPtr> removed =
      batcher_.RemoveIf([&job](const JobPtr& j) { return j == job; });
  metrics_->SetQueueDepth(batcher_.queued());
  for (JobPtr& j : removed) {
    JobResult r;
    r.status = absl::CancelledError("request cancelled while queued");
    Complete(j, std::move(r));
  }
}

void Executor::RemoveCancelled() {
  std::vector<JobPtr> removed =
      batcher_.RemoveIf([](const JobPtr& j) { return j->cancelled.load(); });
  metrics_->SetQueueDepth(batcher_.queued());
  for (JobPtr& j : removed) {
    JobResult r;
    r.status = absl::CancelledError("request cancelled while queued");
    Complete(j, std::move(r));
  }
}

void Executor::Drain() {
  batcher_.Drain();
  Wake();
}

void Executor::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  batcher_.Drain();  // refuses new jobs and makes every queued one ready
  for (Batch<JobPtr>& batch : batcher_.TakeReadyBatches()) {
    for (auto& [job, enqueued_us] : batch.items) {
      JobResult r;
      r.status = absl::UnavailableError("server is shutting down");
      Complete(job, std::move(r));
    }
  }
  metrics_->SetQueueDepth(0);
}

void Executor::Wake() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

void Executor::Loop() {
  for (;;) {
    std::vector<Batch<JobPtr>> batches = batcher_.TakeReadyBatches();
    if (!batches.empty()) {
      metrics_->SetQueueDepth(batcher_.queued());
      for (Batch<JobPtr>& batch : batches) RunBatch(batch);
      continue;
    }
    absl::MutexLock lock(&mu_);
    if (stop_) return;
    // wake_ is set after every Enqueue, so a job queued since
    // TakeReadyBatches above is never slept through.
    if (!wake_) {
      const std::optional<int64_t> deadline = batcher_.NextDeadlineMicros();
      const absl::Condition woken(
          +[](Executor* e)
               ABSL_NO_THREAD_SAFETY_ANALYSIS { return e->wake_ || e->stop_; },
          this);
      if (deadline.has_value()) {
        const int64_t wait_us = *deadline - clock_->NowMicros();
        if (wait_us > 0) {
          mu_.AwaitWithTimeout(woken, absl::Microseconds(wait_us));
        }
      } else {
        mu_.Await(woken);
      }
    }
    wake_ = false;
  }
}

void Executor::RunBatch(Batch<JobPtr>& batch) {
  const int64_t start_us = clock_->NowMicros();
  const int size = static_cast<int>(batch.items.size());
  metrics_->BatchExecuted(size);
  for (auto& [job, enqueued_us] : batch.items) {
    JobResult result;
    if (job->cancelled.load()) {
      result.status = absl::CancelledError("request cancelled before it ran");
      Complete(job, std::move(result));
      continue;
    }
    result.stats.batch_size = size;
    result.stats.backend = backend_name_;
    result.stats.queue_seconds = (start_us - enqueued_us) * 1e-6;
    metrics_->QueueTime(job->spec.method_label, result.stats.queue_seconds);
    result.status = Compute(*job, &result);
    // The batch's computation up to this request's output (queue + compute
    // is the request's time in the executor).
    result.stats.compute_seconds = (clock_->NowMicros() - start_us) * 1e-6;
    if (result.status.ok()) {
      metrics_->ComputeTime(job->spec.method_label,
                            result.stats.compute_seconds);
      metrics_->MemorySaved(result.stats.memory_saved_bytes);
      metrics_->DenominatorGuards(result.stats.denominator_guards);
      if (result.stats.estimated_relative_error.has_value()) {
        metrics_->ApproxError(job->spec.method_label,
                              *result.stats.estimated_relative_error);
      }
    } else {
      result.out.Release();
    }
    job->q.Release();
    job->k.Release();
    job->v.Release();
    Complete(job, std::move(result));
  }
  ReportDeviceMemory();
}

absl::Status Executor::Compute(Job& job, JobResult* result) {
  const RequestSpec& spec = job.spec;
  AttentionParams p = spec.params;
  p.q = job.q.data.get();
  p.k = job.k.data.get();
  p.v = job.v.data.get();
  p.key_lengths = spec.key_lengths.empty() ? nullptr : spec.key_lengths.data();
  SetContiguousStrides(p);
  // Nothing may abort the server: the backend never throws by contract, but
  // an allocation inside it can; a request that cannot get memory fails
  // alone.
  try {
    SB_RETURN_IF_ERROR(result->out.Allocate(spec.out_elements, "output"));
    p.out = result->out.data.get();
    SB_ASSIGN_OR_RETURN(const AttentionStats stats, backend_->Forward(p));
    RequestStats& rs = result->stats;
    rs.dense_score_bytes = stats.dense_score_bytes;
    rs.workspace_bytes = stats.workspace_bytes;
    rs.memory_saved_bytes =
        std::max<int64_t>(stats.dense_score_bytes - stats.workspace_bytes, 0);
    rs.denominator_guards = stats.denominator_guards;
    rs.fallbacks = stats.fallbacks;
    if (options_.error_sample_rows > 0 && p.method != Method::kExact) {
      absl::StatusOr<double> err = EstimateRelativeError(
          p, std::min<int64_t>(options_.error_sample_rows, p.seq_q),
          p.seed ^ kErrorSampleSalt);
      // No estimate (e.g. every sampled row is all-zero) is not an error.
      if (err.ok()) {
        rs.estimated_relative_error = *err;
      }
    }
    return absl::OkStatus();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        "the server ran out of memory computing this request");
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("backend failed: ", e.what()));
  }
}

void Executor::Complete(const JobPtr& job, JobResult result) {
  if (job->done) job->done(job, std::move(result));
}

void Executor::ReportDeviceMemory() {
  if (backend_name_ == "cpu") metrics_->SetDeviceMemory("cpu", ResidentBytes());
}

}  // namespace server
}  // namespace scatterbrain
