// scatterbrain/server/unknown_method.cc — see unknown_method.h.
#include "server/unknown_method.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace scatterbrain {
namespace server {
namespace {

// Ends the call at once; its messages, if any, are never read.
class Refusal final : public grpc::ServerGenericBidiReactor {
 public:
  explicit Refusal(grpc::Status status) { Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

UnknownMethodService::UnknownMethodService(std::vector<std::string> services,
                                           Metrics* metrics)
    : served_(absl::StrJoin(services, ", ")), metrics_(metrics) {}

grpc::ServerGenericBidiReactor* UnknownMethodService::CreateReactor(
    grpc::GenericCallbackServerContext* ctx) {
  metrics_->ProtocolErrorSeen(ProtocolError::kUnknownMethod);
  // Bounded: the method path is client input.
  std::string method = ctx->method().substr(0, 256);
  return new Refusal(
      grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                   absl::StrCat("unknown method '", method,
                                "'; this server serves: ", served_)));
}

}  // namespace server
}  // namespace scatterbrain
