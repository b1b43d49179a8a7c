// scatterbrain/kernels/cuda/gemm.h — row-major strided-batched SGEMM on
// cuBLAS (column-major underneath), so the launchers read like
// kernels/cpu's Gemm calls. float32 math (no TF32): the backend's handles
// use CUBLAS_DEFAULT_MATH.
#ifndef SCATTERBRAIN_KERNELS_CUDA_GEMM_H_
#define SCATTERBRAIN_KERNELS_CUDA_GEMM_H_

#include <cstdint>

#include "absl/status/status.h"

struct cublasContext;

namespace scatterbrain {
namespace cuda {

// For b in [0, batch): C_b = alpha * op(A_b) * op(B_b) + beta * C_b, with
// C_b M x N, op(A_b) M x K, op(B_b) K x N, all row-major; X_b = X +
// b * stride_x (a stride of 0 shares one matrix).
absl::Status GemmStridedBatched(cublasContext* handle, bool trans_a,
                                bool trans_b, int64_t m, int64_t n, int64_t k,
                                float alpha, const float* a, int64_t lda,
                                int64_t stride_a, const float* b, int64_t ldb,
                                int64_t stride_b, float beta, float* c,
                                int64_t ldc, int64_t stride_c, int64_t batch);

}  // namespace cuda
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_GEMM_H_
