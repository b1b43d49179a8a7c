// scatterbrain/server/session_service.cc — the session RPCs of the service
// (CreateSession, AppendKV, GetSession, DeleteSession) and what the Attend
// paths need of sessions: the caller's identity, the spec of a request on a
// session, its last use. The sessions themselves are the registry's
// (session_registry.h); the proto mapping is proto/convert/session.h's.
#include <utility>

#include "absl/strings/str_cat.h"
#include "proto/convert/session.h"
#include "server/append_reactor.h"
#include "server/proto_convert.h"
#include "server/service.h"

namespace scatterbrain {
namespace server {
namespace {

// An AppendKV call refused before it starts (UNAUTHENTICATED): finished at
// once, nothing read.
class RefusedAppend final
    : public grpc::ServerReadReactor<v1::AppendKVRequest> {
 public:
  explicit RefusedAppend(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

std::string AttentionServiceImpl::IdentityOf(
    const grpc::CallbackServerContext& ctx) const {
  return auth_ == nullptr ? "anonymous" : auth_->Identity(ctx);
}

absl::StatusOr<RequestSpec> AttentionServiceImpl::SpecFor(
    const v1::RequestHeader& header, const grpc::CallbackServerContext& ctx,
    bool require_id, std::shared_ptr<KvSession>* session) {
  if (!header.has_session()) {
    return SpecFromHeader(header, options_.limits, require_id,
                          options_.defaults);
  }
  absl::Status st = CheckSessionHeader(header, require_id);
  if (!st.ok()) return st;
  absl::StatusOr<SessionView> view =
      sessions_->Lookup(header.session().session_id(), IdentityOf(ctx),
                        "header.session.session_id");
  if (!view.ok()) return view.status();
  absl::StatusOr<RequestSpec> spec =
      SessionSpecFromHeader(header, *view->session, options_.limits);
  if (!spec.ok()) return spec.status();
  if (spec->session_append) {
    sessions_->MakeRoom(view->session->AppendBytes(spec->params.seq_q));
  }
  *session = std::move(view->session);
  return spec;
}

void AttentionServiceImpl::SessionUsed(const Job& job) {
  if (job.session != nullptr) sessions_->Used(job.spec.session_id);
}

void AttentionServiceImpl::FillSessionInfo(const SessionView& view,
                                           v1::SessionInfo* out) const {
  const SessionConfig& config = view.session->config();
  wire::SessionLimitsView limits;
  limits.max_tokens = config.max_tokens;
  limits.max_bytes = view.max_bytes;
  limits.ttl_seconds = view.ttl_s;
  limits.block_tokens = config.block_tokens;
  wire::SessionInfoToProto(view.id, view.session->Info(), config, limits,
                           view.idle_s, out);
}

grpc::ServerUnaryReactor* AttentionServiceImpl::CreateSession(
    grpc::CallbackServerContext* context,
    const v1::CreateSessionRequest* request, v1::SessionInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Status st = [&]() -> absl::Status {
    if (grpc::Status auth = Authorize(*context); !auth.ok()) {
      return wire::FromGrpcStatus(auth);
    }
    if (draining()) return DrainingError();
    SessionConfig config;
    double ttl_s = 0;
    absl::Status bad = wire::SessionConfigFromProto(*request, &config, &ttl_s);
    if (!bad.ok()) return bad;
    absl::StatusOr<SessionView> view =
        sessions_->Create(config, ttl_s, IdentityOf(*context));
    if (!view.ok()) return wire::CreateSessionPath(view.status());
    FillSessionInfo(*view, response);
    return absl::OkStatus();
  }();
  reactor->Finish(ToGrpcStatus(st));
  return reactor;
}

grpc::ServerReadReactor<v1::AppendKVRequest>* AttentionServiceImpl::AppendKV(
    grpc::CallbackServerContext* context, v1::SessionInfo* response) {
  if (grpc::Status st = Authorize(*context); !st.ok()) {
    return new RefusedAppend(st);
  }
  auto* reactor = new AppendReactor(this, context, response);
  reactor->Begin();
  return reactor;
}

grpc::ServerUnaryReactor* AttentionServiceImpl::GetSession(
    grpc::CallbackServerContext* context, const v1::GetSessionRequest* request,
    v1::SessionInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Status st = [&]() -> absl::Status {
    if (grpc::Status auth = Authorize(*context); !auth.ok()) {
      return wire::FromGrpcStatus(auth);
    }
    // A look is not a use: it does not keep the session alive.
    absl::StatusOr<SessionView> view =
        sessions_->Lookup(request->session_id(), IdentityOf(*context),
                          "session_id", /*touch=*/false);
    if (!view.ok()) return view.status();
    FillSessionInfo(*view, response);
    return absl::OkStatus();
  }();
  reactor->Finish(ToGrpcStatus(st));
  return reactor;
}

grpc::ServerUnaryReactor* AttentionServiceImpl::DeleteSession(
    grpc::CallbackServerContext* context,
    const v1::DeleteSessionRequest* request,
    v1::DeleteSessionResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Status st = [&]() -> absl::Status {
    if (grpc::Status auth = Authorize(*context); !auth.ok()) {
      return wire::FromGrpcStatus(auth);
    }
    absl::StatusOr<int64_t> freed = sessions_->Delete(
        request->session_id(), IdentityOf(*context), "session_id");
    if (!freed.ok()) return freed.status();
    response->set_freed_bytes(static_cast<uint64_t>(*freed));
    return absl::OkStatus();
  }();
  reactor->Finish(ToGrpcStatus(st));
  return reactor;
}

void AttentionServiceImpl::RegisterAppend(AppendReactor* reactor) {
  absl::MutexLock lock(&mu_);
  appends_.insert(reactor);
}

void AttentionServiceImpl::UnregisterAppend(AppendReactor* reactor) {
  absl::MutexLock lock(&mu_);
  appends_.erase(reactor);
}

}  // namespace server
}  // namespace scatterbrain
