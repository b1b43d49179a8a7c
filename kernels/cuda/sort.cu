// scatterbrain/kernels/cuda/sort.cu — the LSH launchers' sorts: CUB's
// stable segmented sort, one segment per slice, so ties keep row order (the
// CPU's std::sort breaks ties by index). Temp storage is sized once per
// launcher, for the largest of its sorts.
#include <cuda_runtime.h>

#include <algorithm>
#include <cub/device/device_segmented_sort.cuh>

#include "kernels/cuda/sparse_internal.h"

namespace scatterbrain {
namespace cuda {
namespace sparse {
namespace {

// CUB's temp bytes for a sort of these types and sizes (null pointers: a
// size query only), or an estimate when the query fails (no device: only
// SparseScratchBytes asks then).
template <typename K>
size_t TempBytes(int64_t items, int64_t segments) {
  size_t bytes = 0;
  const cudaError_t err = cub::DeviceSegmentedSort::StableSortPairs(
      nullptr, bytes, static_cast<const K*>(nullptr), static_cast<K*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      items, segments, static_cast<const int64_t*>(nullptr),
      static_cast<const int64_t*>(nullptr), nullptr);
  if (err == cudaSuccess) return bytes;
  cudaGetLastError();
  // Double buffers of keys and values, per-segment bookkeeping, slack.
  return static_cast<size_t>(2 * items * (sizeof(K) + 4) + 64 * segments +
                             (1 << 20));
}

template <typename K>
absl::Status Sort(const LaunchContext& ctx, const SortWork& work, int64_t items,
                  int64_t segments, const int64_t* begin, const int64_t* end,
                  const K* keys_in, const int32_t* idx_in, K* keys_out,
                  int32_t* idx_out, const char* what) {
  if (items == 0 || segments == 0) return absl::OkStatus();
  size_t bytes = work.bytes;
  SB_SPARSE_CUDA(cub::DeviceSegmentedSort::StableSortPairs(
                     work.temp, bytes, keys_in, keys_out, idx_in, idx_out,
                     items, segments, begin, end, ctx.stream),
                 what);
  return absl::OkStatus();
}

}  // namespace

absl::Status TakeSortWork(ScratchPlan& plan, const BatchSizes& n,
                          SortWork* out) {
  const size_t bytes = std::max({TempBytes<uint64_t>(n.k_rows, n.slices),
                                 TempBytes<uint32_t>(n.q_rows, n.slices),
                                 TempBytes<uint32_t>(n.k_rows, n.slices)});
  uint8_t* p = nullptr;
  SB_RETURN_IF_ERROR(plan.Take(static_cast<int64_t>(bytes), &p));
  out->temp = p;
  out->bytes = bytes;
  return absl::OkStatus();
}

absl::Status SortKeys(const DeviceBatch& batch, const LaunchContext& ctx,
                      const Slices& slices, const SortWork& work,
                      const uint64_t* keys_in, const int32_t* idx_in,
                      uint64_t* keys_out, int32_t* idx_out) {
  return Sort(ctx, work, batch.total_k_rows, batch.total_slices,
              batch.k_row_offsets, slices.k_valid_end, keys_in, idx_in,
              keys_out, idx_out, "sort keys by hash");
}

absl::Status SortQueries(const DeviceBatch& batch, const LaunchContext& ctx,
                         const SortWork& work, const uint32_t* keys_in,
                         const int32_t* idx_in, uint32_t* keys_out,
                         int32_t* idx_out) {
  return Sort(ctx, work, batch.total_q_rows, batch.total_slices,
              batch.q_row_offsets, batch.q_row_offsets + 1, keys_in, idx_in,
              keys_out, idx_out, "sort queries by chunk");
}

absl::Status SortSegments32(const DeviceBatch& batch, const LaunchContext& ctx,
                            const SortWork& work, const int64_t* end,
                            const uint32_t* keys_in, const int32_t* idx_in,
                            uint32_t* keys_out, int32_t* idx_out) {
  return Sort(ctx, work, batch.total_k_rows, batch.total_slices,
              batch.k_row_offsets, end, keys_in, idx_in, keys_out, idx_out,
              "sort k-means samples by top centroid");
}

}  // namespace sparse
}  // namespace cuda
}  // namespace scatterbrain
