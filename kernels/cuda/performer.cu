// scatterbrain/kernels/cuda/performer.cu — RunPerformer: features, the
// low-rank sums, then the output num / den with the CPU's guard rules
// (kernels/cpu/lowrank.cc WritePerformer): a row that sees no key is zeros
// and not counted; a row whose ratio is not usable (den not positive or not
// finite, or a non-finite quotient) answers the mean of the values it sees
// and counts one guard.
#include <cstdint>

#include "common/status_macros.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_util.cuh"

namespace scatterbrain {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;  // a warp per row

__global__ void __launch_bounds__(kThreads)
    WritePerformerKernel(BatchArgs batch, const float* num, const float* den,
                         int64_t row_tiles) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const SliceView sv = LoadSlice(batch, blockIdx.x);
  const int dv = batch.dim_v;
  for (int64_t tile = blockIdx.y; tile < row_tiles; tile += gridDim.y) {
    const int64_t i = tile * kRowsPerBlock + warp;
    if (i >= sv.nq) continue;  // no barrier below: warps leave freely
    float* o = sv.out + i * dv;
    const int64_t lim = devmath::KeyLimit(i, sv.offset, sv.nk, batch.causal);
    if (lim <= 0) {
      for (int c = lane; c < dv; c += 32) o[c] = 0.0f;
      continue;
    }
    const int64_t g = sv.q_row0 + i;
    const float dn = den[g];
    bool ok = true;
    for (int c = lane; c < dv; c += 32) {
      float x;
      ok = devmath::GuardedRatio(num[g * dv + c], dn, &x) && ok;
      o[c] = x;
    }
    if (__all_sync(0xffffffffu, ok)) continue;
    // No usable weight: the mean of the visible values, counted.
    if (lane == 0) atomicAdd(&batch.counters[sv.req].guards, 1ull);
    for (int c = lane; c < dv; c += 32) {
      double sum = 0.0;
      for (int64_t j = 0; j < lim; ++j) sum += sv.v[j * dv + c];
      o[c] = static_cast<float>(sum / static_cast<double>(lim));
    }
  }
}

}  // namespace

absl::Status RunPerformer(const DeviceBatch& batch, const LaunchContext& ctx) {
  DeviceFeatures f;
  SB_RETURN_IF_ERROR(ComputeFeatures(batch, ctx, &f));
  DeviceLowRank lr;
  SB_RETURN_IF_ERROR(ComputeLowRank(batch, ctx, f, &lr));
  if (batch.total_slices == 0 || batch.max_seq_q == 0) return absl::OkStatus();
  const int64_t tiles = devmath::CeilDiv(batch.max_seq_q, kRowsPerBlock);
  WritePerformerKernel<<<dim3(GridX(batch.total_slices), GridY(tiles)),
                         kThreads, 0, ctx.stream>>>(MakeBatchArgs(batch),
                                                    lr.num, lr.den, tiles);
  SB_CUDA_RETURN_IF_LAUNCH_FAILED("WritePerformerKernel");
  return absl::OkStatus();
}

}  // namespace cuda
}  // namespace scatterbrain
