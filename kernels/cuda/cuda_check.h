// scatterbrain/kernels/cuda/cuda_check.h — every CUDA runtime and cuBLAS
// call of the backend goes through these: an error becomes an absl::Status
// naming the call and its file:line, never an abort.
//
// Out of memory (cudaErrorMemoryAllocation, CUBLAS_STATUS_ALLOC_FAILED) is
// RESOURCE_EXHAUSTED, so that the batch that hit it fails alone; anything
// else is INTERNAL. Non-sticky errors are cleared (cudaGetLastError) so the
// next call on this thread does not see them again; a sticky error (a
// kernel fault) poisons the context, and every later call reports it.
#ifndef SCATTERBRAIN_KERNELS_CUDA_CUDA_CHECK_H_
#define SCATTERBRAIN_KERNELS_CUDA_CUDA_CHECK_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace scatterbrain {
namespace cuda {

// OK for cudaSuccess; otherwise the error as a Status ("<expr> at
// <file>:<line>: <name>: <description>").
absl::Status CudaStatus(cudaError_t err, const char* expr, const char* file,
                        int line);
absl::Status CublasStatus(cublasStatus_t err, const char* expr,
                          const char* file, int line);
// The error a kernel launch left behind (cudaGetLastError), as a Status.
absl::Status LaunchStatus(const char* kernel, const char* file, int line);

}  // namespace cuda
}  // namespace scatterbrain

// Evaluates a cudaError_t expression once; returns its Status on error.
#define SB_CUDA_RETURN_IF_ERROR(expr)                                        \
  do {                                                                       \
    const cudaError_t sb_cuda_err_ = (expr);                                 \
    if (sb_cuda_err_ != cudaSuccess)                                         \
      return ::scatterbrain::cuda::CudaStatus(sb_cuda_err_, #expr, __FILE__, \
                                              __LINE__);                     \
  } while (0)

// Evaluates a cublasStatus_t expression once; returns its Status on error.
#define SB_CUBLAS_RETURN_IF_ERROR(expr)                                \
  do {                                                                 \
    const cublasStatus_t sb_cublas_err_ = (expr);                      \
    if (sb_cublas_err_ != CUBLAS_STATUS_SUCCESS)                       \
      return ::scatterbrain::cuda::CublasStatus(sb_cublas_err_, #expr, \
                                                __FILE__, __LINE__);   \
  } while (0)

// After a <<<...>>> launch: returns the launch's error, if any.
#define SB_CUDA_RETURN_IF_LAUNCH_FAILED(kernel_name)                         \
  do {                                                                       \
    absl::Status sb_launch_st_ =                                             \
        ::scatterbrain::cuda::LaunchStatus(kernel_name, __FILE__, __LINE__); \
    if (!sb_launch_st_.ok()) return sb_launch_st_;                           \
  } while (0)

#endif  // SCATTERBRAIN_KERNELS_CUDA_CUDA_CHECK_H_
