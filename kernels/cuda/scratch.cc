// scatterbrain/kernels/cuda/scratch.cc — ScratchBytes: the arena a batch
// reserves for its launchers, summed from what each one takes (every
// arena allocation is rounded up to 256 bytes). Input and output tensors
// are the backend's and are not counted here.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/math.h"

namespace scatterbrain {
namespace cuda {
namespace {

int64_t Floats(int64_t n) {
  return (std::max<int64_t>(n, 1) * 4 + 255) / 256 * 256;
}

bool UsesFeatures(const AttentionParams& p) {
  return p.method == Method::kPerformer || p.method == Method::kScatterbrain;
}
bool UsesSparse(const AttentionParams& p) {
  return p.method == Method::kLsh || p.method == Method::kScatterbrain;
}

}  // namespace

int64_t ScratchBytes(const AttentionParams& s, int64_t total_slices,
                     int64_t total_q_rows, int64_t total_k_rows) {
  int64_t bytes = 0;
  const int64_t dv = s.dim_v;
  if (UsesFeatures(s)) {
    const int64_t m = s.num_features;
    // features.cu: phi(Q), qscale, phi(K), kscale, the keys' row scales.
    bytes += Floats(total_q_rows * m) + Floats(total_q_rows) +
             Floats(total_k_rows * m) + Floats(total_slices) +
             Floats(total_k_rows);
    // lowrank.cu: num, den, then the chunk states (causal) or the per-slice
    // sums and a vector of ones (non-causal).
    bytes += Floats(total_q_rows * dv) + Floats(total_q_rows);
    if (s.causal) {
      bytes += Floats(devmath::ChunkSlots(total_slices, total_k_rows,
                                          devmath::kLowRankChunk) *
                      m * (dv + 1));
    } else {
      bytes += Floats(total_slices * m * (dv + 1)) + Floats(total_k_rows);
    }
  }
  // The sparse support's own count (lsh.cu / scatterbrain.cu): the same
  // list of allocations its launchers take.
  if (UsesSparse(s)) {
    bytes += SparseScratchBytes(s, total_slices, total_q_rows, total_k_rows);
  }
  return bytes;
}

}  // namespace cuda
}  // namespace scatterbrain
