// scatterbrain/server/service.cc — see service.h. The shell: it creates
// one reactor per call (attend_reactor.cc, unary_reactor.cc) and owns what
// they share: admission (the in-flight count), the drain, the streams'
// registry for drain notices.
#include "server/service.h"

#include <chrono>
#include <utility>
#include <vector>

#include "server/attend_reactor.h"
#include "server/unary_reactor.h"

namespace scatterbrain {
namespace server {

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
                                           const Clock* clock)
    : options_(options),
      info_(std::move(info)),
      executor_(executor),
      metrics_(metrics),
      clock_(clock) {}

AttentionServiceImpl::~AttentionServiceImpl() = default;

grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse>*
AttentionServiceImpl::Attend(grpc::CallbackServerContext* context) {
  auto* reactor = new AttendReactor(this, context);
  reactor->Begin();
  return reactor;
}

grpc::ServerUnaryReactor* AttentionServiceImpl::AttendUnary(
    grpc::CallbackServerContext* context, const v1::AttendUnaryRequest* request,
    v1::AttendUnaryResponse* response) {
  auto* reactor = new UnaryReactor(this, context, request, response);
  reactor->Start();
  return reactor;
}

grpc::ServerUnaryReactor* AttentionServiceImpl::GetServerInfo(
    grpc::CallbackServerContext* context,
    const v1::GetServerInfoRequest* /*request*/, v1::ServerInfo* response) {
  *response = info_;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

void AttentionServiceImpl::StartDrain() {
  std::vector<AttendReactor*> reactors;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    for (AttendReactor* r : reactors_) {
      r->Ref();  // alive until we are done with it, even past its OnDone
      reactors.push_back(r);
    }
  }
  for (AttendReactor* r : reactors) {
    r->OnServerDrain();
    r->Unref();
  }
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
