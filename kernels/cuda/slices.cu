// scatterbrain/kernels/cuda/slices.cu — the batch's slices resolved once
// per launcher (request, batch entry, head, pointers, valid keys), CUDA
// errors as Status, and the mean of the visible values per row that the
// Scatterbrain combination falls back on (combine.cc's MeanValues).
#include <cuda_runtime.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/sparse_device.cuh"

namespace scatterbrain {
namespace cuda {
namespace sparse {
namespace {

constexpr int kSliceThreads = 128;
// Keys per block of the value sums behind the means.
constexpr int kMeanBlock = 256;
constexpr int kMeanThreads = 128;

__global__ void BuildSlicesKernel(const DeviceRequest* requests,
                                  const int64_t* slice_offsets, int n,
                                  const int64_t* q_row_offsets,
                                  const int64_t* k_row_offsets,
                                  int64_t total_slices, int64_t dim,
                                  int64_t dim_v, SliceInfo* info,
                                  int64_t* k_valid_end) {
  const int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (s >= total_slices) return;
  // The request: the last one whose first slice is at or before s.
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (slice_offsets[mid] <= s) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const DeviceRequest r = requests[lo];
  const int64_t local = s - slice_offsets[lo];
  SliceInfo si;
  si.request = lo;
  si.b = static_cast<int32_t>(local / r.heads);
  si.h = static_cast<int32_t>(local % r.heads);
  si.q = r.q + local * r.seq_q * dim;
  si.k = r.k + local * r.seq_k * dim;
  si.v = r.v + local * r.seq_k * dim_v;
  si.out = r.out + local * r.seq_q * dim_v;
  si.q_row0 = q_row_offsets[s];
  si.k_row0 = k_row_offsets[s];
  si.nq = r.seq_q;
  si.seq_k = r.seq_k;
  int32_t nk = r.key_lengths != nullptr ? r.key_lengths[si.b] : r.seq_k;
  si.nk = nk < 0 ? 0 : (nk > r.seq_k ? r.seq_k : nk);
  si.offset = r.seq_k - r.seq_q;
  info[s] = si;
  k_valid_end[s] = si.k_row0 + si.nk;
}

// The first block-sum slot of slice s (disjoint between slices, as
// SliceWords).
__device__ __forceinline__ int64_t MeanSlot(int64_t k_row0, int64_t s) {
  return k_row0 / kMeanBlock + s;
}

// Per slice and block of kMeanBlock valid keys: the column sums of v.
__global__ void ValueBlockSumsKernel(const SliceInfo* slices, int dv,
                                     double* block_sums) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = slices[s];
  for (int64_t kb = blockIdx.y; kb * kMeanBlock < si.nk; kb += gridDim.y) {
    const int64_t j0 = kb * kMeanBlock;
    const int64_t j1 = MinI(si.nk, j0 + kMeanBlock);
    double* out = block_sums + (MeanSlot(si.k_row0, s) + kb) * dv;
    for (int c = threadIdx.x; c < dv; c += blockDim.x) {
      double acc = 0;
      for (int64_t j = j0; j < j1; ++j) acc += si.v[j * dv + c];
      out[c] = acc;
    }
  }
}

// Not causal: one mean per slice.
__global__ void SliceMeanKernel(const SliceInfo* slices, int dv,
                                const double* block_sums, float* vbar) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = slices[s];
  const int64_t nkb = (si.nk + kMeanBlock - 1) / kMeanBlock;
  const double* in = block_sums + MeanSlot(si.k_row0, s) * dv;
  for (int c = threadIdx.x; c < dv; c += blockDim.x) {
    double acc = 0;
    for (int64_t kb = 0; kb < nkb; ++kb) acc += in[kb * dv + c];
    vbar[s * dv + c] = si.nk > 0 ? static_cast<float>(acc / si.nk) : 0.0f;
  }
}

// Causal: row i sees keys [0, lim), lim = KeyLimit(i). Walking key j of a
// block with the prefix sum over [0, j] in hand, the row whose limit is
// j + 1 gets its mean; at the last valid key, every row whose limit is
// clipped to nk does. Rows that see no key are never read.
__global__ void PrefixMeanKernel(const SliceInfo* slices, int dv,
                                 const double* block_sums, float* vbar) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = slices[s];
  const double* sums = block_sums + MeanSlot(si.k_row0, s) * dv;
  for (int64_t kb = blockIdx.y; kb * kMeanBlock < si.nk; kb += gridDim.y) {
    const int64_t j0 = kb * kMeanBlock;
    const int64_t j1 = MinI(si.nk, j0 + kMeanBlock);
    for (int c = threadIdx.x; c < dv; c += blockDim.x) {
      double acc = 0;
      for (int64_t b = 0; b < kb; ++b) acc += sums[b * dv + c];
      for (int64_t j = j0; j < j1; ++j) {
        acc += si.v[j * dv + c];
        const int64_t i = j - si.offset;  // KeyLimit(i) = j + 1
        const float mean = static_cast<float>(acc / (j + 1));
        if (j + 1 < si.nk) {
          if (i >= 0 && i < si.nq) vbar[(si.q_row0 + i) * dv + c] = mean;
        } else {
          for (int64_t r = MaxI(i, 0); r < si.nq; ++r)
            vbar[(si.q_row0 + r) * dv + c] = mean;
        }
      }
    }
  }
}

}  // namespace

absl::Status CudaCheck(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg =
      absl::StrCat("cuda sparse: ", what, ": ", cudaGetErrorName(err), ": ",
                   cudaGetErrorString(err));
  if (err == cudaErrorMemoryAllocation)
    return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

absl::Status TakeSlices(ScratchPlan& plan, const BatchSizes& n, Slices* out) {
  SB_RETURN_IF_ERROR(plan.Take(n.slices, &out->info));
  return plan.Take(n.slices, &out->k_valid_end);
}

absl::Status BuildSlices(ScratchPlan& plan, const DeviceBatch& batch,
                         const LaunchContext& ctx, Slices* out) {
  SB_RETURN_IF_ERROR(TakeSlices(plan, SizesOf(batch), out));
  const Slices& s = *out;
  const int64_t blocks =
      (batch.total_slices + kSliceThreads - 1) / kSliceThreads;
  BuildSlicesKernel<<<static_cast<unsigned>(blocks), kSliceThreads, 0,
                      ctx.stream>>>(
      batch.requests, batch.slice_offsets, batch.n, batch.q_row_offsets,
      batch.k_row_offsets, batch.total_slices, batch.settings.dim,
      batch.settings.dim_v, s.info, s.k_valid_end);
  SB_SPARSE_LAUNCHED("BuildSlicesKernel");
  return absl::OkStatus();
}

absl::Status TakeMeanWork(ScratchPlan& plan, const AttentionParams& settings,
                          const BatchSizes& n, MeanWork* out) {
  const int64_t dv = settings.dim_v;
  SB_RETURN_IF_ERROR(
      plan.Take((settings.causal ? n.q_rows : n.slices) * dv, &out->vbar));
  return plan.Take((n.k_rows / kMeanBlock + n.slices + 2) * dv,
                   &out->block_sums);
}

absl::Status LaunchMeanValues(const DeviceBatch& batch,
                              const LaunchContext& ctx, const Slices& slices,
                              const MeanWork& work) {
  const int dv = static_cast<int>(batch.settings.dim_v);
  const dim3 grid(static_cast<unsigned>(batch.total_slices),
                  GridY((batch.max_seq_k + kMeanBlock - 1) / kMeanBlock));
  ValueBlockSumsKernel<<<grid, kMeanThreads, 0, ctx.stream>>>(slices.info, dv,
                                                              work.block_sums);
  SB_SPARSE_LAUNCHED("ValueBlockSumsKernel");
  if (batch.settings.causal) {
    PrefixMeanKernel<<<grid, kMeanThreads, 0, ctx.stream>>>(
        slices.info, dv, work.block_sums, work.vbar);
    SB_SPARSE_LAUNCHED("PrefixMeanKernel");
  } else {
    SliceMeanKernel<<<static_cast<unsigned>(batch.total_slices), kMeanThreads,
                      0, ctx.stream>>>(slices.info, dv, work.block_sums,
                                       work.vbar);
    SB_SPARSE_LAUNCHED("SliceMeanKernel");
  }
  return absl::OkStatus();
}

}  // namespace sparse
}  // namespace cuda
}  // namespace scatterbrain
