// scatterbrain/kernels/cuda/host_memory.cc — see host_memory.h.
#include "kernels/cuda/host_memory.h"

#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"

namespace scatterbrain {
namespace cuda {

absl::StatusOr<HostBuffer> AllocatePinned(int64_t bytes) {
  if (bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("host buffer: negative size ", bytes));
  }
  void* p = nullptr;
  const cudaError_t err = cudaHostAlloc(
      &p, static_cast<size_t>(bytes > 0 ? bytes : 1), cudaHostAllocPortable);
  if (err != cudaSuccess) {
    cudaGetLastError();
    if (err == cudaErrorMemoryAllocation) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot allocate ", bytes, " bytes of pinned host memory"));
    }
    return CudaStatus(err, "cudaHostAlloc", __FILE__, __LINE__);
  }
  return HostBuffer(p, bytes, MemorySpace::kPinnedHost,
                    [](void* d) { cudaFreeHost(d); });
}

absl::Status PinnedStaging::Reserve(int64_t bytes) {
  if (bytes <= buffer_.bytes()) return absl::OkStatus();
  buffer_.Reset();
  absl::StatusOr<HostBuffer> b = AllocatePinned(bytes + bytes / 4);
  if (!b.ok()) return b.status();
  buffer_ = std::move(*b);
  return absl::OkStatus();
}

}  // namespace cuda
}  // namespace scatterbrain
