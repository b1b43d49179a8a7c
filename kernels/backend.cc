// scatterbrain/kernels/backend.cc — backend registry.
#include "kernels/backend.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/devices.h"

namespace scatterbrain {

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const std::string& name) {
  if (name == "cpu") return MakeCpuBackend();
  if (name == "cuda") {
    return absl::UnimplementedError(
        absl::StrCat("backend: 'cuda' is not available in this build yet (",
                     CudaRuntimeSummary(), "); use --backend=cpu"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("backend: unknown backend '", name, "' (known: cpu)"));
}

std::vector<std::string> CompiledBackends() { return {"cpu"}; }

}  // namespace scatterbrain
