// scatterbrain/kernels/backend.h — the backend interface (CPU now, CUDA
// later). Backends compute the same function from the same seed: random
// draws are made on the host by random_draws.h and shared.
#ifndef SCATTERBRAIN_KERNELS_BACKEND_H_
#define SCATTERBRAIN_KERNELS_BACKEND_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/params.h"

namespace scatterbrain {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // OK if this backend can run `p` (after ValidateParams).
  virtual absl::Status Supports(const AttentionParams& p) const = 0;
  // Validates `p`, computes attention into p.out. Thread-safe: several calls
  // may run at once. Never aborts; errors come back as a Status.
  virtual absl::StatusOr<AttentionStats> Forward(
      const AttentionParams& p) = 0;
};

// "cpu" (always), "cuda" (when compiled with CUDA and a device is present).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const std::string& name);
// Names of the backends compiled into this build.
std::vector<std::string> CompiledBackends();

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_BACKEND_H_
