// scatterbrain/server/unknown_method.h — what a call to a method this server
// does not serve gets: UNIMPLEMENTED naming the method and the services that
// are served (gRPC's own answer is UNIMPLEMENTED with an empty message, which
// tells a user nothing about a typo in a path or a wrong proto package).
#ifndef SCATTERBRAIN_SERVER_UNKNOWN_METHOD_H_
#define SCATTERBRAIN_SERVER_UNKNOWN_METHOD_H_

#include <string>
#include <vector>

#include "grpcpp/generic/async_generic_service.h"
#include "server/metrics.h"

namespace scatterbrain {
namespace server {

class UnknownMethodService final : public grpc::CallbackGenericService {
 public:
  // `services`: the full names of the services the server serves (for the
  // message). `metrics` must outlive the service.
  UnknownMethodService(std::vector<std::string> services, Metrics* metrics);

  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* ctx) override;

 private:
  const std::string served_;
  Metrics* const metrics_;
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_UNKNOWN_METHOD_H_
