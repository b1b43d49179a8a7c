// scatterbrain/kernels/cuda/scatterbrain.cu — RunScatterbrain: positive
// random features and their low-rank sums (ComputeFeatures /
// ComputeLowRank), the sparse support (LSH, local or both) with the
// low-rank estimate on the same pairs accumulated in the same loop, then
// the combination of exact-on-support and low-rank-off-support in log
// space: calibrated (calibrate.cu) or the textbook estimator (here).
// SparseScratchBytes counts what these launchers take from the arena.
#include <cuda_runtime.h>

#include "kernels/cuda/sparse_device.cuh"

namespace scatterbrain {
namespace cuda {
namespace sparse {
namespace {

bool UsesLshSupport(const AttentionParams& p) {
  return p.method == Method::kLsh || p.sparse != SparseSupport::kLocal;
}
bool UsesLocalSupport(const AttentionParams& p) {
  return p.method == Method::kScatterbrain && p.sparse != SparseSupport::kLsh;
}

// Warp per row: (ev a + lv b) / (e1 a + l1 b) with a, b the exact and
// low-rank parts' scales relative to their larger one; the mean of the
// visible values (and a guard) when that denominator is unusable.
__global__ void WriteUnbiasedKernel(CombineView v) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = v.slices[s];
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t i = WarpItem0(); i < si.nq; i += WarpItemStride()) {
    const int64_t g = si.q_row0 + i;
    const RowInputs in = CombineRow(v, si, s, i);
    const RowParts parts = MakeRowParts(in);
    float* o = si.out + i * v.dv;
    if (parts.empty) {
      for (int c = lane; c < v.dv; c += kWarpSize) o[c] = 0.0f;
      continue;
    }
    const UnbiasedRow u = MakeUnbiased(parts, in);
    if (lane == 0) {
      const unsigned long long guards = (parts.guard ? 1 : 0) + (u.ok ? 0 : 1);
      if (guards > 0) atomicAdd(&v.counters[si.request].guards, guards);
    }
    const float* vbar = MeanRow(v, s, g);
    for (int c = lane; c < v.dv; c += kWarpSize) {
      o[c] = u.ok ? UnbiasedValue(u, parts.has_l, v.ev[g * v.dv + c],
                                  LowRankOff(v, g, c))
                  : vbar[c];
    }
  }
}

}  // namespace

absl::Status LaunchWriteUnbiased(const DeviceBatch& batch,
                                 const LaunchContext& ctx, const Slices& slices,
                                 const CombineInputs& in) {
  WriteUnbiasedKernel<<<QueryRowGrid(batch), kThreads, 0, ctx.stream>>>(
      MakeCombineView(batch, slices, in));
  SB_SPARSE_LAUNCHED("WriteUnbiasedKernel");
  return absl::OkStatus();
}

absl::Status RunScatterbrainProbed(const DeviceBatch& batch,
                                   const LaunchContext& ctx,
                                   SparseProbe* probe) {
  if (batch.total_slices == 0 || batch.total_q_rows == 0)
    return absl::OkStatus();
  const AttentionParams& p = batch.settings;
  const BatchSizes n = SizesOf(batch);
  ScratchPlan plan(ctx.arena);
  Slices slices;
  SB_RETURN_IF_ERROR(BuildSlices(plan, batch, ctx, &slices));

  DeviceFeatures features;
  SB_RETURN_IF_ERROR(ComputeFeatures(batch, ctx, &features));
  if (features.m <= 0 || features.q == nullptr || features.k == nullptr)
    return absl::InternalError("cuda scatterbrain: ComputeFeatures gave none");
  DeviceLowRank lowrank;
  SB_RETURN_IF_ERROR(ComputeLowRank(batch, ctx, features, &lowrank));

  SupportAcc acc;
  SB_RETURN_IF_ERROR(TakeSupportAcc(plan, n, static_cast<int>(p.dim_v),
                                    /*features=*/true, &acc));
  SB_RETURN_IF_ERROR(LaunchInitSupportAcc(batch, ctx, acc));
  SupportSpec spec;
  spec.lsh = UsesLshSupport(p);
  spec.local = UsesLocalSupport(p);
  spec.features = &features;
  SB_RETURN_IF_ERROR(AccumulateSupport(batch, ctx, slices, spec, &acc, probe));

  MeanWork mean;
  SB_RETURN_IF_ERROR(TakeMeanWork(plan, p, n, &mean));
  SB_RETURN_IF_ERROR(LaunchMeanValues(batch, ctx, slices, mean));
  CombineInputs in;
  in.features = &features;
  in.lowrank = &lowrank;
  in.acc = &acc;
  in.vbar = mean.vbar;
  if (p.estimator == Estimator::kUnbiased)
    return LaunchWriteUnbiased(batch, ctx, slices, in);
  CalibrationWork cal;
  SB_RETURN_IF_ERROR(TakeCalibrationWork(plan, p, n, &cal));
  return LaunchWriteCalibrated(batch, ctx, slices, in, cal, probe);
}

}  // namespace sparse

absl::Status RunScatterbrain(const DeviceBatch& batch,
                             const LaunchContext& ctx) {
  return sparse::RunScatterbrainProbed(batch, ctx, nullptr);
}

int64_t SparseScratchBytes(const AttentionParams& settings,
                           int64_t total_slices, int64_t total_q_rows,
                           int64_t total_k_rows) {
  namespace sp = sparse;
  const bool sb = settings.method == Method::kScatterbrain;
  if (settings.method != Method::kLsh && !sb) return 0;
  const sp::BatchSizes n{total_slices, total_q_rows, total_k_rows};
  sp::ScratchPlan plan(nullptr);
  sp::Slices slices;
  sp::SupportAcc acc;
  sp::MeanWork mean;
  sp::CalibrationWork cal;
  sp::SupportSpec spec;
  spec.lsh = sp::UsesLshSupport(settings);
  if (!sp::TakeSlices(plan, n, &slices).ok() ||
      !sp::TakeSupportAcc(plan, n, static_cast<int>(settings.dim_v), sb, &acc)
           .ok())
    return 0;
  if (sb) {
    if (!sp::TakeMeanWork(plan, settings, n, &mean).ok()) return 0;
    if (settings.estimator == Estimator::kCalibrated &&
        !sp::TakeCalibrationWork(plan, settings, n, &cal).ok())
      return 0;
  }
  return plan.bytes() + sp::SupportScratchBytes(settings, n, spec);
}

}  // namespace cuda
}  // namespace scatterbrain
