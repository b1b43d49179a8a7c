// scatterbrain/kernels/cuda/lsh.cu — RunLsh and the sparse support both
// launchers share: per LSH round, hash (cross-polytope or k-means), one
// stable segmented sort of the keys by hash, chunk ids for keys and queries,
// a sort of the queries by chunk, then the support pass over
// [slices x chunks]. Rounds run in order on the stream and reuse their
// scratch; only the chunk ids of every round are kept (pairs met in an
// earlier round are skipped, so each pair counts once).
#include <cuda_runtime.h>

#include "kernels/cuda/sparse_device.cuh"

namespace scatterbrain {
namespace cuda {
namespace sparse {
namespace {

// Scratch of the LSH rounds.
struct LshWork {
  int32_t* qchunk = nullptr;  // [rounds][total_q_rows]
  int32_t* kchunk = nullptr;  // [rounds][total_k_rows]
  RoundKeys keys;
  uint64_t* sorted_kkey = nullptr;
  int32_t* korder = nullptr;
  uint32_t* qsort_key = nullptr;
  int32_t* qsort_idx = nullptr;
  uint32_t* sorted_qkey = nullptr;
  int32_t* qorder = nullptr;
  SortWork sort;
  SmyrfNorms smyrf;
  KMeansWork kmeans;
};

bool ForcedChunks(const SparseProbe* probe) {
  return probe != nullptr && probe->forced_kchunk != nullptr &&
         probe->forced_qchunk != nullptr;
}

bool UsesSmyrf(const AttentionParams& p) {
  return p.lsh_hash == LshHash::kCrossPolytope &&
         p.lsh_transform == LshTransform::kSmyrf;
}

absl::Status TakeLshWork(ScratchPlan& plan, const AttentionParams& p,
                         const BatchSizes& n, LshWork* w) {
  const int64_t rounds = p.num_hashes;
  SB_RETURN_IF_ERROR(plan.Take(rounds * n.q_rows, &w->qchunk));
  SB_RETURN_IF_ERROR(plan.Take(rounds * n.k_rows, &w->kchunk));
  SB_RETURN_IF_ERROR(plan.Take(n.k_rows, &w->keys.kkey));
  SB_RETURN_IF_ERROR(plan.Take(n.k_rows, &w->keys.kidx));
  SB_RETURN_IF_ERROR(plan.Take(n.q_rows, &w->keys.qkey));
  SB_RETURN_IF_ERROR(plan.Take(n.k_rows, &w->sorted_kkey));
  SB_RETURN_IF_ERROR(plan.Take(n.k_rows, &w->korder));
  SB_RETURN_IF_ERROR(plan.Take(n.q_rows, &w->qsort_key));
  SB_RETURN_IF_ERROR(plan.Take(n.q_rows, &w->qsort_idx));
  SB_RETURN_IF_ERROR(plan.Take(n.q_rows, &w->sorted_qkey));
  SB_RETURN_IF_ERROR(plan.Take(n.q_rows, &w->qorder));
  SB_RETURN_IF_ERROR(TakeSortWork(plan, n, &w->sort));
  if (UsesSmyrf(p)) SB_RETURN_IF_ERROR(TakeSmyrfNorms(plan, n, &w->smyrf));
  if (p.lsh_hash == LshHash::kKMeans)
    SB_RETURN_IF_ERROR(TakeKMeansWork(plan, p, n, &w->kmeans));
  return absl::OkStatus();
}

// One LSH round: the sort inputs, the sorts and the chunk ids; the pass's
// qorder / korder and chunk tables come back in `pass`.
absl::Status HashAndSortRound(const DeviceBatch& batch,
                              const LaunchContext& ctx, const Slices& slices,
                              const LshWork& w, int round,
                              const SparseProbe* probe, PassSpec* pass) {
  const AttentionParams& p = batch.settings;
  RoundKeys keys = w.keys;
  if (ForcedChunks(probe)) {
    SB_RETURN_IF_ERROR(LaunchForcedChunkKeys(
        batch, ctx, slices, probe->forced_kchunk + round * batch.total_k_rows,
        probe->forced_qchunk + round * batch.total_q_rows, &keys, w.qsort_key,
        w.qsort_idx));
    SB_RETURN_IF_ERROR(SortKeys(batch, ctx, slices, w.sort, keys.kkey,
                                keys.kidx, w.sorted_kkey, w.korder));
    pass->qchunk = probe->forced_qchunk;
    pass->kchunk = probe->forced_kchunk;
  } else {
    if (p.lsh_hash == LshHash::kKMeans) {
      SB_RETURN_IF_ERROR(
          LaunchKMeansHash(batch, ctx, slices, w.sort, w.kmeans, round, &keys));
    } else {
      SB_RETURN_IF_ERROR(LaunchCrossPolytope(
          batch, ctx, slices, round, UsesSmyrf(p) ? &w.smyrf : nullptr, &keys));
    }
    SB_RETURN_IF_ERROR(SortKeys(batch, ctx, slices, w.sort, keys.kkey,
                                keys.kidx, w.sorted_kkey, w.korder));
    SB_RETURN_IF_ERROR(LaunchAssignChunks(
        batch, ctx, slices, w.sorted_kkey, w.korder, keys.qkey,
        w.kchunk + round * batch.total_k_rows,
        w.qchunk + round * batch.total_q_rows, w.qsort_key, w.qsort_idx));
    pass->qchunk = w.qchunk;
    pass->kchunk = w.kchunk;
  }
  SB_RETURN_IF_ERROR(SortQueries(batch, ctx, w.sort, w.qsort_key, w.qsort_idx,
                                 w.sorted_qkey, w.qorder));
  pass->lsh = true;
  pass->round = round;
  pass->qorder = w.qorder;
  pass->korder = w.korder;
  return absl::OkStatus();
}

// Warp per row: the support's average, or zeros (a guard when the row sees
// keys but its support holds no weight), as cpu::WriteSparseOnly.
__global__ void WriteSparseOnlyKernel(const SliceInfo* slices,
                                      const RowStats* stats, const float* ev,
                                      int dv, bool causal,
                                      DeviceCounters* counters) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = slices[s];
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t i = WarpItem0(); i < si.nq; i += WarpItemStride()) {
    const int64_t g = si.q_row0 + i;
    const RowStats st = stats[g];
    bool guard = false;
    const bool ok = SparseOnlyRow(KeyLimit(i, si.nk, si.offset, causal),
                                  st.count, st.e1, &guard);
    if (guard && lane == 0) atomicAdd(&counters[si.request].guards, 1ull);
    const float inv = ok ? 1.0f / st.e1 : 0.0f;
    float* o = si.out + i * dv;
    for (int c = lane; c < dv; c += kWarpSize)
      o[c] = ok ? ev[g * dv + c] * inv : 0.0f;
  }
}

}  // namespace

int64_t SupportScratchBytes(const AttentionParams& settings,
                            const BatchSizes& n, const SupportSpec& spec) {
  if (!spec.lsh) return 0;
  ScratchPlan plan(nullptr);
  LshWork w;
  if (!TakeLshWork(plan, settings, n, &w).ok()) return 0;
  return plan.bytes();
}

absl::Status AccumulateSupport(const DeviceBatch& batch,
                               const LaunchContext& ctx, const Slices& slices,
                               const SupportSpec& spec, SupportAcc* acc,
                               SparseProbe* probe) {
  if (spec.local) {
    PassSpec pass;
    SB_RETURN_IF_ERROR(
        LaunchSupportPass(batch, ctx, slices, spec.features, pass, acc));
  }
  if (!spec.lsh) return absl::OkStatus();
  const AttentionParams& p = batch.settings;
  ScratchPlan plan(ctx.arena);
  LshWork w;
  SB_RETURN_IF_ERROR(TakeLshWork(plan, p, SizesOf(batch), &w));
  if (UsesSmyrf(p))
    SB_RETURN_IF_ERROR(LaunchSmyrfNorms(batch, ctx, slices, w.smyrf));
  for (int round = 0; round < p.num_hashes; ++round) {
    PassSpec pass;
    pass.exclude_window = spec.local;
    SB_RETURN_IF_ERROR(
        HashAndSortRound(batch, ctx, slices, w, round, probe, &pass));
    SB_RETURN_IF_ERROR(
        LaunchSupportPass(batch, ctx, slices, spec.features, pass, acc));
  }
  if (probe != nullptr && !ForcedChunks(probe)) {
    const int64_t R = p.num_hashes;
    if (probe->qchunk != nullptr)
      SB_SPARSE_CUDA(cudaMemcpyAsync(probe->qchunk, w.qchunk,
                                     R * batch.total_q_rows * sizeof(int32_t),
                                     cudaMemcpyDeviceToDevice, ctx.stream),
                     "copy query chunks to the probe");
    if (probe->kchunk != nullptr)
      SB_SPARSE_CUDA(cudaMemcpyAsync(probe->kchunk, w.kchunk,
                                     R * batch.total_k_rows * sizeof(int32_t),
                                     cudaMemcpyDeviceToDevice, ctx.stream),
                     "copy key chunks to the probe");
  }
  return absl::OkStatus();
}

absl::Status RunLshProbed(const DeviceBatch& batch, const LaunchContext& ctx,
                          SparseProbe* probe) {
  if (batch.total_slices == 0 || batch.total_q_rows == 0)
    return absl::OkStatus();
  const BatchSizes n = SizesOf(batch);
  ScratchPlan plan(ctx.arena);
  Slices slices;
  SB_RETURN_IF_ERROR(BuildSlices(plan, batch, ctx, &slices));
  SupportAcc acc;
  SB_RETURN_IF_ERROR(TakeSupportAcc(plan, n,
                                    static_cast<int>(batch.settings.dim_v),
                                    /*features=*/false, &acc));
  SB_RETURN_IF_ERROR(LaunchInitSupportAcc(batch, ctx, acc));
  SupportSpec spec;
  spec.lsh = true;
  SB_RETURN_IF_ERROR(AccumulateSupport(batch, ctx, slices, spec, &acc, probe));
  WriteSparseOnlyKernel<<<QueryRowGrid(batch), kThreads, 0, ctx.stream>>>(
      slices.info, acc.stats, acc.ev, static_cast<int>(batch.settings.dim_v),
      batch.settings.causal, batch.counters);
  SB_SPARSE_LAUNCHED("WriteSparseOnlyKernel");
  return absl::OkStatus();
}

}  // namespace sparse

absl::Status RunLsh(const DeviceBatch& batch, const LaunchContext& ctx) {
  return sparse::RunLshProbed(batch, ctx, nullptr);
}

}  // namespace cuda
}  // namespace scatterbrain
