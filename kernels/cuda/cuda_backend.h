// scatterbrain/kernels/cuda/cuda_backend.h — the CUDA backend (compiled when
// the build has CUDA): every method on one device, batches of requests as
// fused launches on its streams, pinned host buffers, a per-stream scratch
// arena.
#ifndef SCATTERBRAIN_KERNELS_CUDA_CUDA_BACKEND_H_
#define SCATTERBRAIN_KERNELS_CUDA_CUDA_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace scatterbrain {

// FAILED_PRECONDITION when there is no usable device `options.device`.
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(
    const BackendOptions& options);

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_CUDA_BACKEND_H_
