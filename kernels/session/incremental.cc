// scatterbrain/kernels/session/incremental.cc — see incremental.h.
#include "kernels/session/incremental.h"

namespace scatterbrain {
namespace session {

std::unique_ptr<IncrementalState> IncrementalState::Create(
    const SessionConfig& config) {
  (void)config;
  return nullptr;
}

}  // namespace session
}  // namespace scatterbrain
