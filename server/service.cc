// scatterbrain/server/service.cc — see service.h. The shell: it creates
// one reactor per call (attend_reactor.cc, unary_reactor.cc) and owns what
// they share: admission (the in-flight count), the drain, the streams'
// registry for drain notices and timeouts, the memory budget.
#include "server/service.h"

#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "proto/convert/wire.h"
#include "server/append_reactor.h"
#include "server/attend_reactor.h"
#include "server/unary_reactor.h"

namespace scatterbrain {
namespace server {
namespace {

// An Attend stream refused before it starts (UNAUTHENTICATED): finished at
// once, nothing read.
class RefusedStream final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit RefusedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::Status AttentionServiceImpl::Authorize(
    const grpc::CallbackServerContext& ctx) {
  if (auth_ == nullptr) return grpc::Status::OK;
  return wire::ToGrpcStatus(auth_->Authenticate(ctx));
}

absl::Status AttentionServiceImpl::DrainingError() {
  return absl::UnavailableError(
      "server is draining (shutting down): new requests are refused; retry "
      "on another server");
}

bool AttentionServiceImpl::AtDeadline(const grpc::CallbackServerContext& ctx) {
  // The client cancels at its own deadline, which runs ahead of the
  // server's copy (started when the call arrived), so a cancel shortly
  // before our deadline is that deadline.
  return std::chrono::system_clock::now() + std::chrono::milliseconds(100) >=
         ctx.deadline();
}

int64_t AttentionServiceImpl::DeadlineMicros(
    const grpc::CallbackServerContext& ctx) const {
  // gRPC gives a system_clock time point (max() without a deadline); the
  // executor keeps time on clock_: carry over what is left.
  const std::chrono::system_clock::time_point deadline = ctx.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return Job::kNoDeadline;
  }
  const int64_t left_us = std::chrono::duration_cast<std::chrono::microseconds>(
                              deadline - std::chrono::system_clock::now())
                              .count();
  // Beyond ~3 years is no deadline (and keeps the sum from overflowing).
  constexpr int64_t kFarUs = int64_t{100'000'000} * 1'000'000;
  if (left_us > kFarUs) return Job::kNoDeadline;
  return clock_->NowMicros() + left_us;
}

AttentionServiceImpl::AttentionServiceImpl(const ServiceOptions& options,
                                           v1::ServerInfo info,
                                           Executor* executor, Metrics* metrics,
                                           const Clock* clock,
                                           Authenticator* auth)
    : options_(options),
      info_(std::move(info)),
      executor_(executor),
      metrics_(metrics),
      clock_(clock),
      auth_(auth),
      budget_(options.max_memory_bytes > 0 ? options.max_memory_bytes
                                           : DefaultMaxMemoryBytes(),
              [metrics](int64_t reserved) {
                metrics->SetMemoryReserved(reserved);
              }),
      sessions_(std::make_unique<SessionRegistry>(options.sessions, &budget_,
                                                  metrics, clock)) {
  metrics_->SetMemoryBudget(budget_.limit_bytes());
  timer_ = std::thread([this] { TimerLoop(); });
}

AttentionServiceImpl::~AttentionServiceImpl() {
  {
    absl::MutexLock lock(&mu_);
    stop_timer_ = true;
  }
  timer_.join();
}

void AttentionServiceImpl::TimerLoop() {
  const absl::Duration interval = absl::Milliseconds(
      std::max<int64_t>(options_.timeout_check_interval_ms, 1));
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      const auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_timer_;
      };
      if (mu_.AwaitWithTimeout(absl::Condition(&stop), interval)) return;
    }
    CheckTimeouts();
  }
}

template <typename F>
void AttentionServiceImpl::ForEachStream(F f) {
  std::vector<AttendReactor*> reactors;
  {
    absl::MutexLock lock(&mu_);
    reactors.reserve(reactors_.size());
    for (AttendReactor* r : reactors_) {
      r->Ref();  // alive until we are done with it, even past its OnDone
      reactors.push_back(r);
    }
  }
  for (AttendReactor* r : reactors) {
    f(r);
    r->Unref();
  }
}

void AttentionServiceImpl::CheckTimeouts() {
  const int64_t now = clock_->NowMicros();
  ForEachStream([now](AttendReactor* r) { r->CheckTimeouts(now); });
  std::vector<AppendReactor*> appends;
  {
    absl::MutexLock lock(&mu_);
    for (AppendReactor* r : appends_) {
      r->Ref();  // alive until checked, even past its OnDone
      appends.push_back(r);
    }
  }
  for (AppendReactor* r : appends) {
    r->CheckTimeouts(now);
    r->Unref();
  }
  sessions_->Sweep();
}

absl::StatusOr<MemoryReservation> AttentionServiceImpl::ReserveMemory(
    const RequestSpec& spec, int64_t unary_bytes) {
  return budget_.Reserve(
      RequestMemoryBytes(spec, executor_->inputs_in_wire_dtype(), unary_bytes),
      "header");
}

absl::StatusOr<JobPtr> AttentionServiceImpl::AdmitWhole(
    RequestSpec spec, const WholeTensor (&tensors)[3],
    absl::string_view expected_for, int64_t message_bytes,
    const grpc::CallbackServerContext& ctx) {
  const int64_t want[] = {spec.q_bytes, spec.k_bytes, spec.v_bytes};
  const int64_t elements[] = {spec.q_elements, spec.k_elements,
                              spec.v_elements};
  for (int i = 0; i < 3; ++i) {
    if (static_cast<int64_t>(tensors[i].bytes.size()) != want[i]) {
      return absl::InvalidArgumentError(absl::StrCat(
          tensors[i].name, ": ", tensors[i].bytes.size(), " bytes, expected ",
          want[i], " for ", expected_for, " ", DTypeName(spec.dtype)));
    }
  }
  // gRPC's copy of the message and the parsed one, until converted.
  absl::StatusOr<MemoryReservation> memory =
      ReserveMemory(spec, 2 * std::max<int64_t>(message_bytes, 1));
  if (!memory.ok()) return memory.status();
  auto job = std::make_shared<Job>();
  TensorBuffer* dst[] = {&job->q, &job->k, &job->v};
  const HostAllocator alloc = executor_->host_allocator();
  const bool wire = executor_->inputs_in_wire_dtype();
  for (int i = 0; i < 3; ++i) {
    // In place: the bytes are float32 where the backend reads float32, and
    // outlive the job (a shared-memory region held by its owner).
    const char* p = tensors[i].bytes.data();
    if (tensors[i].owner && spec.dtype == DType::kFloat32 &&
        reinterpret_cast<uintptr_t>(p) % alignof(float) == 0) {
      *dst[i] = TensorBuffer::View(
          const_cast<float*>(reinterpret_cast<const float*>(p)), elements[i],
          tensors[i].owner);
      continue;
    }
    TensorAssembler a;
    absl::Status st =
        a.Init(tensors[i].name, spec.dtype, elements[i], alloc, wire);
    if (st.ok()) st = a.Append(0, tensors[i].bytes);
    if (!st.ok()) return st;
    *dst[i] = a.Take();
  }
  job->spec = std::move(spec);
  job->memory = *std::move(memory);
  if (!TryAccept()) return DrainingError();
  job->deadline_us = DeadlineMicros(ctx);
  return job;
}

absl::Status AttentionServiceImpl::SubmitAdmitted(const JobPtr& job) {
  const absl::Status st = executor_->Submit(job);
  if (!st.ok()) Finished();
  return st;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
AttentionServiceImpl::Attend(grpc::CallbackServerContext* context) {
  if (grpc::Status st = Authorize(*context); !st.ok()) {
    return new RefusedStream(st);
  }
  auto* reactor = new AttendReactor(this, context);
  reactor->Begin();
  return reactor;
}

grpc::ServerUnaryReactor* AttentionServiceImpl::AttendUnary(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (grpc::Status st = Authorize(*context); !st.ok()) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(st);
    return reactor;
  }
  auto* reactor = new UnaryReactor(this, context, request, response);
  reactor->Start();
  return reactor;
}

grpc::ServerUnaryReactor* AttentionServiceImpl::GetServerInfo(
    grpc::CallbackServerContext* context,
    const v1::GetServerInfoRequest* /*request*/, v1::ServerInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const grpc::Status st = Authorize(*context);
  if (st.ok()) *response = info_;
  reactor->Finish(st);
  return reactor;
}

void AttentionServiceImpl::StartDrain() {
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
  }
  ForEachStream([](AttendReactor* r) { r->OnServerDrain(); });
}

bool AttentionServiceImpl::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

bool AttentionServiceImpl::WaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  const auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return inflight_ == 0;
  };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

int64_t AttentionServiceImpl::inflight() const {
  absl::MutexLock lock(&mu_);
  return inflight_;
}

bool AttentionServiceImpl::TryAccept() {
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return false;
    ++inflight_;
  }
  metrics_->InflightAdd(1);
  return true;
}

void AttentionServiceImpl::Finished() {
  {
    absl::MutexLock lock(&mu_);
    --inflight_;
  }
  metrics_->InflightAdd(-1);
}

bool AttentionServiceImpl::Register(AttendReactor* reactor) {
  absl::MutexLock lock(&mu_);
  reactors_.insert(reactor);
  return draining_;
}

void AttentionServiceImpl::Unregister(AttendReactor* reactor) {
  absl::MutexLock lock(&mu_);
  reactors_.erase(reactor);
}

}  // namespace server
}  // namespace scatterbrain
