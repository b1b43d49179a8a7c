// scatterbrain/server/executor.cc — see executor.h.
#include "server/executor.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <new>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "kernels/cancel.h"
#include "kernels/error_estimate.h"
#include "server/backend_select.h"

namespace scatterbrain {
namespace server {
namespace {

// Seed of the error estimate's row sample: derived from the request's seed
// so that a request's stats are reproducible too.
constexpr uint64_t kErrorSampleSalt = 0x9e3779b97f4a7c15ull;

// A job cancelled at `now_us`: by its deadline if that has passed, else by
// its caller. The transport cancels a call at its deadline too, and the
// client's copy of the deadline runs ahead of ours (started when the call
// arrived): a cancel up to 100 ms before our deadline is that deadline.
StopReason ReasonAt(const Job& job, int64_t now_us) {
  constexpr int64_t kSlackUs = 100'000;
  return job.deadline_us != Job::kNoDeadline &&
                 now_us + kSlackUs >= job.deadline_us
             ? StopReason::kDeadlineExceeded
             : StopReason::kCancelled;
}

// The job's deadline on the steady clock the backend reads, given the
// executor clock's `now_us` and the steady clock's `now` at one instant.
CancelToken::Clock::time_point SteadyDeadline(
    int64_t deadline_us, int64_t now_us, CancelToken::Clock::time_point now) {
  // Beyond ~3 years is no deadline (and keeps the sum from overflowing).
  constexpr int64_t kFarUs = int64_t{100'000'000} * 1'000'000;
  if (deadline_us == Job::kNoDeadline || deadline_us - now_us > kFarUs) {
    return CancelToken::Clock::time_point::max();
  }
  return now +
         std::chrono::microseconds(std::max<int64_t>(deadline_us - now_us, 0));
}

// The per-head choices, the error bound and the cost of a call, from the
// backend's stats into the request's (both of a one-shot call and of a
// session step, whose prefill goes through the backend).
void CopyPlans(const AttentionStats& stats, RequestStats* rs) {
  rs->head_plans = stats.head_plans;
  if (stats.error_bound >= 0) rs->error_bound = stats.error_bound;
  rs->score_evaluations = stats.score_evaluations;
  rs->exact_score_evaluations = stats.exact_score_evaluations;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Executor>> Executor::Create(
    const ExecutorOptions& options, Metrics* metrics, const Clock* clock) {
  SB_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                      SelectBackend(options.backend, options.backend_options));
  return std::unique_ptr<Executor>(
      new Executor(options, std::move(backend), metrics, clock));
}

std::unique_ptr<Executor> Executor::CreateWithBackend(
    const ExecutorOptions& options, std::unique_ptr<Backend> backend,
    Metrics* metrics, const Clock* clock) {
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
  // Session calls never wait for a batch to fill: a lone decode step runs
  // at once, and steps arriving while a batch runs form the next
  // (continuous batching).
  const int64_t delay_us = job->session != nullptr ? 0 : -1;
  absl::Status st = batcher_.Enqueue(key, std::move(job), tokens, delay_us);
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
    metrics_->RequestStopped(ReasonAt(*j, clock_->NowMicros()),
                             StopStage::kQueued);
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
    metrics_->RequestStopped(ReasonAt(*j, clock_->NowMicros()),
                             StopStage::kQueued);
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
  {
    // Batches with the backend finish (their jobs complete) first.
    absl::MutexLock lock(&mu_);
    const auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return batches_in_flight_ == 0;
    };
    mu_.Await(absl::Condition(&idle));
  }
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

// A batch handed to the backend: its jobs, their calls (which point into
// the jobs' buffers and tokens) and when it started.
struct Executor::RunningBatch {
  std::vector<JobPtr> jobs;
  std::vector<CancelToken> tokens;  // per call: its job's flag and deadline
  std::vector<AttentionCall> calls;
  std::vector<JobResult> results;
  int64_t start_us = 0;
};

bool Executor::StartJob(const JobPtr& job, int64_t enqueued_us,
                        int64_t start_us, int batch_size, JobResult* result) {
  if (job->cancelled.load()) {
    metrics_->RequestStopped(ReasonAt(*job, start_us), StopStage::kQueued);
    result->status = absl::CancelledError("request cancelled before it ran");
    Complete(job, std::move(*result));
    return false;
  }
  if (start_us >= job->deadline_us) {
    metrics_->RequestStopped(StopReason::kDeadlineExceeded, StopStage::kQueued);
    result->status = absl::DeadlineExceededError(
        absl::StrCat("request's deadline passed after ",
                     (start_us - enqueued_us) * 1e-6, " s in the queue"));
    Complete(job, std::move(*result));
    return false;
  }
  result->stats.batch_size = batch_size;
  result->stats.backend = backend_name_;
  result->stats.queue_seconds = (start_us - enqueued_us) * 1e-6;
  metrics_->QueueTime(job->spec.method_label, result->stats.queue_seconds);
  // A request whose output cannot be had fails alone.
  absl::Status st;
  if (job->out_view && job->out_view.size >= job->spec.out_elements) {
    result->out = std::move(job->out_view);
  } else {
    st = result->out.Allocate(job->spec.out_elements, "output",
                              host_allocator());
  }
  if (!st.ok()) {
    result->status = st;
    job->q.Release();
    job->k.Release();
    job->v.Release();
    Complete(job, std::move(*result));
    return false;
  }
  return true;
}

void Executor::CountStopped(const Job& job, const absl::Status& status,
                            int64_t end_us) {
  if (absl::IsCancelled(status)) {
    metrics_->RequestStopped(ReasonAt(job, end_us), StopStage::kRunning);
  } else if (absl::IsDeadlineExceeded(status)) {
    metrics_->RequestStopped(StopReason::kDeadlineExceeded,
                             StopStage::kRunning);
  }
}

void Executor::RunBatch(Batch<JobPtr>& batch) {
  if (!batch.items.empty() && batch.items.front().first->session != nullptr) {
    return RunSessionBatch(batch);
  }
  auto run = std::make_shared<RunningBatch>();
  run->start_us = clock_->NowMicros();
  const int size = static_cast<int>(batch.items.size());
  metrics_->BatchExecuted(size);
  for (auto& [job, enqueued_us] : batch.items) {
    JobResult result;
    if (!StartJob(job, enqueued_us, run->start_us, size, &result)) continue;
    run->jobs.push_back(job);
    run->results.push_back(std::move(result));
  }
  if (run->jobs.empty()) return;
  run->calls.resize(run->jobs.size());
  run->tokens.resize(run->jobs.size());
  const CancelToken::Clock::time_point steady_start = CancelToken::Clock::now();
  for (size_t i = 0; i < run->jobs.size(); ++i) {
    const Job& job = *run->jobs[i];
    AttentionCall& c = run->calls[i];
    c.params = job.spec.params;
    // Each call stops alone: its own job's flag and deadline.
    CancelToken& token = run->tokens[i];
    token.cancelled = &job.cancelled;
    token.deadline =
        SteadyDeadline(job.deadline_us, run->start_us, steady_start);
    c.params.cancel = &token;
    c.params.key_lengths =
        job.spec.key_lengths.empty() ? nullptr : job.spec.key_lengths.data();
    c.q = TensorRef{job.q.raw(), job.q.dtype, job.q.space()};
    c.k = TensorRef{job.k.raw(), job.k.dtype, job.k.space()};
    c.v = TensorRef{job.v.raw(), job.v.dtype, job.v.space()};
    TensorBuffer& out = run->results[i].out;
    c.out = MutableTensorRef{out.data(), DType::kFloat32, out.space()};
  }
  // At most max_batches_in_flight() batches with the backend: the next one
  // is prepared (and, on a device, uploaded) while this one computes.
  {
    absl::MutexLock lock(&mu_);
    const int limit = std::max(backend_->max_batches_in_flight(), 1);
    const auto room = [this, limit]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return batches_in_flight_ < limit;
    };
    mu_.Await(absl::Condition(&room));
    ++batches_in_flight_;
  }
  // Nothing may abort the server: the backend never throws by contract, but
  // an allocation inside it can; then the batch fails, alone.
  try {
    backend_->ForwardBatchAsync(absl::MakeSpan(run->calls),
                                [this, run] { FinishBatch(*run); });
  } catch (const std::exception& e) {
    const bool oom = dynamic_cast<const std::bad_alloc*>(&e) != nullptr;
    for (AttentionCall& c : run->calls) {
      c.status =
          oom ? absl::ResourceExhaustedError(
                    "the server ran out of memory computing this request")
              : absl::InternalError(absl::StrCat("backend failed: ", e.what()));
    }
    FinishBatch(*run);
  }
}

void Executor::FinishBatch(RunningBatch& run) {
  const int64_t end_us = clock_->NowMicros();
  for (size_t i = 0; i < run.jobs.size(); ++i) {
    const JobPtr& job = run.jobs[i];
    JobResult& result = run.results[i];
    const AttentionCall& call = run.calls[i];
    result.status = call.status;
    // The batch's computation (queue + compute is the request's time in the
    // executor).
    result.stats.compute_seconds = (end_us - run.start_us) * 1e-6;
    if (result.status.ok()) {
      FillStats(*job, call, &result);
      metrics_->ComputeTime(job->spec.method_label,
                            result.stats.compute_seconds);
      metrics_->MemorySaved(result.stats.memory_saved_bytes);
      metrics_->DenominatorGuards(result.stats.denominator_guards);
      // One value per request: the planner's bound when the request had
      // an error target (what the target was held to, an upper bound over
      // every slice), else the sampled estimate; both stay in the stats.
      const std::optional<double>& err =
          result.stats.error_bound.has_value()
              ? result.stats.error_bound
              : result.stats.estimated_relative_error;
      if (err.has_value()) {
        metrics_->ApproxError(job->spec.method_label, *err);
      }
      metrics_->HeadPlans(result.stats.head_plans);
    } else {
      result.out.Release();
      CountStopped(*job, result.status, end_us);
    }
    job->q.Release();
    job->k.Release();
    job->v.Release();
    Complete(job, std::move(result));
  }
  ReportDeviceMemory();
  absl::MutexLock lock(&mu_);
  --batches_in_flight_;
}

void Executor::RunSessionBatch(Batch<JobPtr>& batch) {
  const int64_t start_us = clock_->NowMicros();
  const int size = static_cast<int>(batch.items.size());
  metrics_->BatchExecuted(size);
  std::vector<JobPtr> jobs;
  std::vector<JobResult> results;
  for (auto& [job, enqueued_us] : batch.items) {
    JobResult result;
    if (!StartJob(job, enqueued_us, start_us, size, &result)) continue;
    jobs.push_back(job);
    results.push_back(std::move(result));
  }
  if (jobs.empty()) return;
  std::vector<SessionCall> calls(jobs.size());
  std::vector<CancelToken> tokens(jobs.size());
  // Queries kept in their wire dtype (a device backend) are decoded: a
  // session's attend reads float32 queries on the host.
  std::vector<std::vector<float>> decoded(jobs.size());
  const CancelToken::Clock::time_point steady_start = CancelToken::Clock::now();
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Job& job = *jobs[i];
    SessionCall& c = calls[i];
    c.session = job.session.get();
    c.seq_q = job.spec.params.seq_q;
    if (job.q.dtype == DType::kFloat32) {
      c.q = job.q.data();
    } else {
      decoded[i].resize(static_cast<size_t>(job.q.size));
      DecodeToFloat(job.q.dtype, static_cast<const char*>(job.q.raw()),
                    job.q.size, decoded[i].data());
      c.q = decoded[i].data();
    }
    if (job.spec.session_append) {
      c.k = job.k.raw();
      c.v = job.v.raw();
      c.kv_dtype = job.k.dtype;
    }
    c.see_all = job.spec.session_see_all;
    c.out = results[i].out.data();
    tokens[i].cancelled = &job.cancelled;
    tokens[i].deadline =
        SteadyDeadline(job.deadline_us, start_us, steady_start);
    c.cancel = &tokens[i];
  }
  {
    // The backend (prefills go through it) has no other batch meanwhile.
    absl::MutexLock lock(&mu_);
    const auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return batches_in_flight_ == 0;
    };
    mu_.Await(absl::Condition(&idle));
    ++batches_in_flight_;
  }
  // Never throws: a failure (an allocation included) is its call's status.
  AttendSessions(absl::MakeSpan(calls), backend_.get(),
                 options_.backend_options.threads);
  {
    absl::MutexLock lock(&mu_);
    --batches_in_flight_;
  }
  const int64_t end_us = clock_->NowMicros();
  for (size_t i = 0; i < jobs.size(); ++i) {
    const JobPtr& job = jobs[i];
    JobResult& result = results[i];
    const SessionCall& call = calls[i];
    result.status = call.status;
    result.stats.compute_seconds = (end_us - start_us) * 1e-6;
    result.stats.session_lengths = call.lengths;
    result.stats.incremental = call.incremental;
    if (result.status.ok()) {
      result.stats.dense_score_bytes = call.stats.dense_score_bytes;
      result.stats.workspace_bytes = call.stats.workspace_bytes;
      result.stats.memory_saved_bytes = std::max<int64_t>(
          call.stats.dense_score_bytes - call.stats.workspace_bytes, 0);
      result.stats.denominator_guards = call.stats.denominator_guards;
      result.stats.fallbacks = call.stats.fallbacks;
      CopyPlans(call.stats, &result.stats);
      metrics_->HeadPlans(result.stats.head_plans);
      metrics_->ComputeTime(job->spec.method_label,
                            result.stats.compute_seconds);
      metrics_->SessionStep(call.incremental, result.stats.compute_seconds);
      metrics_->DenominatorGuards(call.stats.denominator_guards);
      if (job->spec.session_append) metrics_->SessionAppended();
    } else {
      result.out.Release();
      CountStopped(*job, result.status, end_us);
    }
    job->q.Release();
    job->k.Release();
    job->v.Release();
    Complete(job, std::move(result));
  }
}

void Executor::FillStats(const Job& job, const AttentionCall& call,
                         JobResult* result) {
  const AttentionStats& stats = call.stats;
  RequestStats& rs = result->stats;
  rs.dense_score_bytes = stats.dense_score_bytes;
  rs.workspace_bytes = stats.workspace_bytes;
  rs.memory_saved_bytes =
      std::max<int64_t>(stats.dense_score_bytes - stats.workspace_bytes, 0);
  rs.denominator_guards = stats.denominator_guards;
  rs.fallbacks = stats.fallbacks;
  CopyPlans(stats, &rs);
  if (options_.error_sample_rows <= 0 ||
      job.spec.params.method == Method::kExact) {
    return;
  }
  try {
    // The sample reads float32 on the host: inputs kept in their wire dtype
    // are decoded for it.
    std::vector<float> decoded[3];
    const TensorBuffer* in[] = {&job.q, &job.k, &job.v};
    const float* f32[3];
    for (int t = 0; t < 3; ++t) {
      if (in[t]->dtype == DType::kFloat32) {
        f32[t] = in[t]->data();
        continue;
      }
      decoded[t].resize(static_cast<size_t>(in[t]->size));
      DecodeToFloat(in[t]->dtype, static_cast<const char*>(in[t]->raw()),
                    in[t]->size, decoded[t].data());
      f32[t] = decoded[t].data();
    }
    AttentionParams p = call.params;
    p.q = f32[0];
    p.k = f32[1];
    p.v = f32[2];
    p.out = result->out.data();
    SetContiguousStrides(p);
    absl::StatusOr<double> err = EstimateRelativeError(
        p, std::min<int64_t>(options_.error_sample_rows, p.seq_q),
        p.seed ^ kErrorSampleSalt);
    // No estimate (e.g. every sampled row is all-zero) is not an error.
    if (err.ok()) rs.estimated_relative_error = *err;
  } catch (const std::bad_alloc&) {
    // The estimate is optional: skipped rather than failing the request.
  }
}

HostAllocator Executor::host_allocator() const {
  Backend* backend = backend_.get();
  return [backend](int64_t bytes) { return backend->AllocateHost(bytes); };
}

void Executor::Complete(const JobPtr& job, JobResult result) {
  if (job->done) job->done(job, std::move(result));
}

void Executor::ReportDeviceMemory() {
  const MemoryStats m = backend_->GetMemoryStats();
  metrics_->SetDeviceMemory(m.device, m.used_bytes);
}

}  // namespace server
}  // namespace scatterbrain
