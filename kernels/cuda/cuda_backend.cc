// scatterbrain/kernels/cuda/cuda_backend.cc — see cuda_backend.h.
#include "kernels/cuda/cuda_backend.h"

#include "absl/strings/str_cat.h"
#include "kernels/devices.h"

namespace scatterbrain {

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(
    const BackendOptions& options) {
  return absl::UnimplementedError(absl::StrCat(
      "backend: 'cuda' is being written (device ", options.device, ", ",
      CudaRuntimeSummary(), "); use --backend=cpu"));
}

}  // namespace scatterbrain
