// scatterbrain/kernels/error_estimate.cc
#include "kernels/error_estimate.h"

#include <cmath>
#include <vector>

#include "common/status_macros.h"
#include "kernels/cancel.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/ops.h"
#include "kernels/random_draws.h"
#include "kernels/validate.h"

namespace scatterbrain {

bool ExactRowDouble(const AttentionParams& p, int64_t b, int64_t h, int64_t i,
                    double* out) {
  return cpu::ExactRow(cpu::MakeSlice(p, b, h), i, out);
}

absl::StatusOr<double> EstimateRelativeError(const AttentionParams& p,
                                             int rows_per_head, uint64_t seed) {
  SB_RETURN_IF_ERROR(ValidateParams(p, /*check_values=*/false));
  if (rows_per_head < 1)
    return absl::InvalidArgumentError("rows_per_head: must be >= 1");
  double num = 0, den = 0;
  std::vector<double> exact(p.dim_v);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      SB_RETURN_IF_ERROR(CancelStatus(p.cancel));
      const cpu::Slice s = cpu::MakeSlice(p, b, h);
      for (int64_t i : SampleRows(seed, DrawPurpose::kErrorSample, b, h, s.nq,
                                  rows_per_head)) {
        if (!cpu::ExactRow(s, i, exact.data())) continue;
        const float* o = s.orow(i);
        for (int64_t c = 0; c < s.dv; ++c) {
          const double diff = o[c] - exact[c];
          num += diff * diff;
          den += exact[c] * exact[c];
        }
      }
    }
  }
  if (den == 0) return num == 0 ? 0.0 : 1.0;
  return std::sqrt(num / den);
}

}  // namespace scatterbrain
