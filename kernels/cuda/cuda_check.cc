// scatterbrain/kernels/cuda/cuda_check.cc — see cuda_check.h.
#include "kernels/cuda/cuda_check.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace scatterbrain {
namespace cuda {

absl::Status CudaStatus(cudaError_t err, const char* expr, const char* file,
                        int line) {
  if (err == cudaSuccess) return absl::OkStatus();
  // Clear the error if it is not sticky, so it is reported once.
  cudaGetLastError();
  const std::string msg =
      absl::StrCat(expr, " at ", file, ":", line, ": ", cudaGetErrorName(err),
                   ": ", cudaGetErrorString(err));
  if (err == cudaErrorMemoryAllocation) {
    return absl::ResourceExhaustedError(msg);
  }
  return absl::InternalError(msg);
}

absl::Status CublasStatus(cublasStatus_t err, const char* expr,
                          const char* file, int line) {
  if (err == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  cudaGetLastError();
  const std::string msg =
      absl::StrCat(expr, " at ", file, ":", line, ": ",
                   cublasGetStatusName(err), ": ", cublasGetStatusString(err));
  if (err == CUBLAS_STATUS_ALLOC_FAILED) {
    return absl::ResourceExhaustedError(msg);
  }
  return absl::InternalError(msg);
}

absl::Status LaunchStatus(const char* kernel, const char* file, int line) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return absl::OkStatus();
  return CudaStatus(err, absl::StrCat("launch of ", kernel).c_str(), file,
                    line);
}

}  // namespace cuda
}  // namespace scatterbrain
