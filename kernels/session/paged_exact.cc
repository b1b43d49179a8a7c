// scatterbrain/kernels/session/paged_exact.cc — see paged_exact.h.
#include "kernels/session/paged_exact.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/vmath.h"

namespace scatterbrain {
namespace session {

void PagedExactRows(const PagedKv& kv, int64_t b, int64_t h, const float* q,
                    int64_t n, const int64_t* lims, float tau, float* out) {
  const int64_t d = kv.dim(), dv = kv.dim_v(), T = kv.block_tokens();
  int64_t kmax = 0;
  for (int64_t r = 0; r < n; ++r) kmax = std::max(kmax, lims[r]);
  std::vector<float> scores(static_cast<size_t>(n * T));
  std::vector<float> kscratch(static_cast<size_t>(T * std::max(d, dv)));
  std::vector<float> vscratch(static_cast<size_t>(T * dv));
  std::vector<float> acc(static_cast<size_t>(n * dv), 0.0f);
  std::vector<float> blockout(static_cast<size_t>(n * dv));
  std::vector<float> rmax(n, -std::numeric_limits<float>::infinity());
  std::vector<double> rsum(n, 0.0);
  for (int64_t j0 = 0; j0 < kmax; j0 += T) {
    const int64_t j1 = std::min(kmax, j0 + T);
    const int64_t w = j1 - j0;
    const float* K = kv.KeyRows(b, h, j0, j1, kscratch.data());
    cpu::Gemm(false, true, n, w, d, tau, q, d, K, d, 0.0f, scores.data(), w);
    for (int64_t r = 0; r < n; ++r) {
      float* row = scores.data() + r * w;
      const int64_t lim = std::clamp<int64_t>(lims[r] - j0, 0, w);
      if (lim == 0) {
        std::fill(row, row + w, 0.0f);
        continue;
      }
      const float mx = std::max(rmax[r], cpu::Max(row, lim));
      if (mx > rmax[r]) {
        // Rescale what this row has so far to the new maximum.
        if (rmax[r] > -std::numeric_limits<float>::infinity()) {
          const float s = std::exp(rmax[r] - mx);
          rsum[r] *= s;
          for (int64_t c = 0; c < dv; ++c) acc[r * dv + c] *= s;
        }
        rmax[r] = mx;
      }
      cpu::ExpInPlace(row, lim, -mx);
      std::fill(row + lim, row + w, 0.0f);
      rsum[r] += cpu::Sum(row, lim);
    }
    const float* V = kv.ValueRows(b, h, j0, j1, vscratch.data());
    cpu::Gemm(false, false, n, dv, w, 1.0f, scores.data(), w, V, dv, 1.0f,
              acc.data(), dv);
  }
  for (int64_t r = 0; r < n; ++r) {
    const float inv = rsum[r] > 0 ? static_cast<float>(1.0 / rsum[r]) : 0.0f;
    for (int64_t c = 0; c < dv; ++c) out[r * dv + c] = acc[r * dv + c] * inv;
  }
}

}  // namespace session
}  // namespace scatterbrain
