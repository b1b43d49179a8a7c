// scatterbrain/kernels/cuda/host_memory.h — page-locked host memory: the
// buffers AllocateHost hands out (received bytes land where the copy engine
// reads them, no staging copy) and each stream's small staging area for a
// batch's metadata and read-backs.
#ifndef SCATTERBRAIN_KERNELS_CUDA_HOST_MEMORY_H_
#define SCATTERBRAIN_KERNELS_CUDA_HOST_MEMORY_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace scatterbrain {
namespace cuda {

// `bytes` of pinned host memory (cudaHostAlloc, portable across devices),
// freed by the HostBuffer with cudaFreeHost. RESOURCE_EXHAUSTED when the
// driver cannot pin that much.
absl::StatusOr<HostBuffer> AllocatePinned(int64_t bytes);

// A pinned block that grows on demand and is reused; not thread-safe (one
// per stream, touched only while that stream has no batch in flight).
class PinnedStaging {
 public:
  PinnedStaging() = default;
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;
  // At least `bytes` (contents are not kept when it grows).
  absl::Status Reserve(int64_t bytes);
  char* data() const { return buffer_.as<char>(); }
  int64_t capacity() const { return buffer_.bytes(); }

 private:
  HostBuffer buffer_;
};

}  // namespace cuda
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_HOST_MEMORY_H_
