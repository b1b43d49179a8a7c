// scatterbrain/kernels/error_estimate.h — cheap accuracy check of an
// approximate output: exact attention on a few sampled query rows (cost
// O(rows * seq_k * dim) per head), compared with the output's rows.
#ifndef SCATTERBRAIN_KERNELS_ERROR_ESTIMATE_H_
#define SCATTERBRAIN_KERNELS_ERROR_ESTIMATE_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "kernels/params.h"

namespace scatterbrain {

// Relative Frobenius error ||O_hat - O|| / ||O|| over `rows_per_head`
// query rows sampled (from `seed`) in every (batch, head) slice; p.out holds
// O_hat. Rows whose exact output is zero are skipped. Exact rows are
// computed in double precision.
absl::StatusOr<double> EstimateRelativeError(const AttentionParams& p,
                                             int rows_per_head, uint64_t seed);

// Exact attention for one query row in double precision (the reference the
// estimator and the calibration use). `out` has dim_v entries. Returns false
// if the row attends to no key (output set to zero).
bool ExactRowDouble(const AttentionParams& p, int64_t b, int64_t h, int64_t i,
                    double* out);

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_ERROR_ESTIMATE_H_
