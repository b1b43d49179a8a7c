// scatterbrain/kernels/cancel.cc — see cancel.h.
#include "kernels/cancel.h"

namespace scatterbrain {

absl::Status CancelStatus(const CancelToken* token) {
  if (token == nullptr) return absl::OkStatus();
  if (token->cancelled != nullptr &&
      token->cancelled->load(std::memory_order_relaxed)) {
    return absl::CancelledError("call cancelled: its caller dropped it");
  }
  if (token->Stopped()) {
    return absl::DeadlineExceededError("call stopped at its deadline");
  }
  return absl::OkStatus();
}

}  // namespace scatterbrain
