// scatterbrain/kernels/validate.h — the single place that checks an
// AttentionParams. Errors are INVALID_ARGUMENT naming the bad field.
#ifndef SCATTERBRAIN_KERNELS_VALIDATE_H_
#define SCATTERBRAIN_KERNELS_VALIDATE_H_

#include "absl/status/status.h"
#include "kernels/params.h"

namespace scatterbrain {

// Hard limits, so that sizes never overflow and a caller cannot ask for an
// absurd amount of work by accident.
inline constexpr int64_t kMaxDim = 1024;
inline constexpr int kMaxFeatures = 8192;
inline constexpr int kMaxHashes = 32;
inline constexpr int kMaxHashProjections = 64;
inline constexpr int kMaxCalibrationRows = 1024;
inline constexpr int kMaxGlobalKeys = 256;

// Checks shapes, strides, settings, and (when check_values) that q, k and v
// hold only finite numbers.
absl::Status ValidateParams(const AttentionParams& p, bool check_values = true);

// The shape, settings and key lengths of a call that has no tensors yet (a
// request being received, a batch call whose tensors are refs): as
// ValidateParams on contiguous stand-ins; `p`'s pointers and strides are
// ignored.
absl::Status ValidateShapeAndSettings(const AttentionParams& p);

// After a computation: INVALID_ARGUMENT naming the first non-finite element
// of p.out. Finite inputs can still overflow float32 inside a computation
// (scores |q·k| * scale past 3.4e38, sums over huge values of v); such a
// call must fail rather than hand its caller NaN or inf as an answer.
absl::Status CheckOutputFinite(const AttentionParams& p);

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_VALIDATE_H_
