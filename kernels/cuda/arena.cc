// scatterbrain/kernels/cuda/arena.cc — see arena.h. The block lives on the
// device that is current when Reserve grows it (the backend's).
#include "kernels/cuda/arena.h"

#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"

namespace scatterbrain {
namespace cuda {
namespace {

constexpr int64_t kAlign = 256;

int64_t RoundUp(int64_t bytes) {
  return (bytes + kAlign - 1) / kAlign * kAlign;
}

}  // namespace

DeviceArena::~DeviceArena() {
  if (block_ != nullptr) cudaFree(block_);
}

absl::Status DeviceArena::Reserve(int64_t bytes) {
  bytes = RoundUp(bytes < 0 ? 0 : bytes);
  if (bytes <= capacity_) return absl::OkStatus();
  if (limit_ > 0 && bytes > limit_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cuda backend: this batch needs ", bytes,
                     " bytes of device scratch, over the workspace limit of ",
                     limit_, " bytes per stream"));
  }
  // Grow with headroom so that slowly growing batches do not reallocate
  // every time, but never past the limit.
  int64_t want = bytes + bytes / 4;
  if (limit_ > 0 && want > limit_) want = limit_;
  if (block_ != nullptr) {
    const cudaError_t err = cudaFree(block_);
    block_ = nullptr;
    capacity_ = 0;
    SB_CUDA_RETURN_IF_ERROR(err);
  }
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, static_cast<size_t>(want));
  if (err == cudaErrorMemoryAllocation && want > bytes) {
    cudaGetLastError();
    want = bytes;  // the headroom did not fit: try the bare need
    err = cudaMalloc(&p, static_cast<size_t>(want));
  }
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrCat(
        "cuda backend: cannot allocate ", bytes,
        " bytes of device scratch for this batch (device memory exhausted)"));
  }
  SB_CUDA_RETURN_IF_ERROR(err);
  block_ = p;
  capacity_ = want;
  used_ = 0;
  return absl::OkStatus();
}

absl::StatusOr<void*> DeviceArena::Allocate(int64_t bytes) {
  const int64_t n = RoundUp(bytes < 1 ? 1 : bytes);
  if (used_ + n > capacity_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cuda backend: scratch exhausted (", used_, " of ",
                     capacity_, " bytes in use, ", n, " more wanted)"));
  }
  void* p = static_cast<char*>(block_) + used_;
  used_ += n;
  if (used_ > high_water_) high_water_ = used_;
  return p;
}

}  // namespace cuda
}  // namespace scatterbrain
