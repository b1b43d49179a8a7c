// scatterbrain/kernels/cuda/gemm.cc — see gemm.h.
#include "kernels/cuda/gemm.h"

#include <cublas_v2.h>

#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"

namespace scatterbrain {
namespace cuda {

absl::Status GemmStridedBatched(cublasContext* handle, bool trans_a,
                                bool trans_b, int64_t m, int64_t n, int64_t k,
                                float alpha, const float* a, int64_t lda,
                                int64_t stride_a, const float* b, int64_t ldb,
                                int64_t stride_b, float beta, float* c,
                                int64_t ldc, int64_t stride_c, int64_t batch) {
  if (m <= 0 || n <= 0 || batch <= 0) return absl::OkStatus();
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (m > kIntMax || n > kIntMax || k > kIntMax || lda > kIntMax ||
      ldb > kIntMax || ldc > kIntMax || batch > kIntMax) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda gemm: sizes beyond cuBLAS's int range (m=", m,
                     ", n=", n, ", k=", k, ", batch=", batch, ")"));
  }
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap
  // the operands, keep each one's transpose flag.
  SB_CUBLAS_RETURN_IF_ERROR(cublasSgemmStridedBatched(
      handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
      trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
      static_cast<int>(m), static_cast<int>(k), &alpha, b,
      static_cast<int>(ldb), stride_b, a, static_cast<int>(lda), stride_a,
      &beta, c, static_cast<int>(ldc), stride_c, static_cast<int>(batch)));
  return absl::OkStatus();
}

}  // namespace cuda
}  // namespace scatterbrain
