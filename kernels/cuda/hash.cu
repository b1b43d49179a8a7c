// scatterbrain/kernels/cuda/hash.cu — one LSH round's order keys by the
// cross-polytope hash (optionally on SMYRF-transformed rows), and the chunk
// ids every key and query gets once the keys are sorted (sparse.cc: keys
// cut into equal-size chunks; a query joins the last chunk whose first key
// orders at or below it).
#include <cuda_runtime.h>

#include "kernels/cuda/sparse_device.cuh"
#include "kernels/params.h"
#include "kernels/validate.h"

namespace scatterbrain {
namespace cuda {
namespace sparse {
namespace {

constexpr int kRowThreads = 256;

// Squared norms (double) of every query and valid key, warp per row.
__global__ void RowNormsKernel(const SliceInfo* slices, int d, double* qn2,
                               double* kn2) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = slices[s];
  const int lane = threadIdx.x % kWarpSize;
  const int64_t rows = int64_t{si.nq} + si.nk;
  for (int64_t r = WarpItem0(); r < rows; r += WarpItemStride()) {
    const bool is_q = r < si.nq;
    const int64_t i = is_q ? r : r - si.nq;
    const float* x = (is_q ? si.q : si.k) + i * d;
    double a = 0;
    for (int c = lane; c < d; c += kWarpSize) a += double(x[c]) * x[c];
    a = WarpSumD(a);
    if (lane == 0) (is_q ? qn2[si.q_row0 + i] : kn2[si.k_row0 + i]) = a;
  }
}

// M = max |q|^2 + max |k|^2 per slice (each max starting at 0, as the CPU).
__global__ void SmyrfMKernel(const SliceInfo* slices, const double* qn2,
                             const double* kn2, double* m) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = slices[s];
  double qmax = 0, kmax = 0;
  for (int64_t i = threadIdx.x; i < si.nq; i += kThreads)
    qmax = fmax(qmax, qn2[si.q_row0 + i]);
  for (int64_t j = threadIdx.x; j < si.nk; j += kThreads)
    kmax = fmax(kmax, kn2[si.k_row0 + j]);
  qmax = WarpMaxD(qmax);
  kmax = WarpMaxD(kmax);
  __shared__ double part[2][kWarps];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  if (lane == 0) {
    part[0][warp] = qmax;
    part[1][warp] = kmax;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) {
      qmax = fmax(qmax, part[0][w]);
      kmax = fmax(kmax, part[1][w]);
    }
    m[s] = fmax(part[0][0], qmax) + fmax(part[1][0], kmax);
  }
}

struct CrossPolytopeArgs {
  const SliceInfo* slices;
  const float* hash;  // DeviceDraws::hash
  int hash_rows, hash_cols, num_hashes, round, P, d;
  SmyrfNorms smyrf;  // m null: no transform
  RoundKeys keys;
};

// Warp per row (queries, then valid keys): its 2P projections, then the
// two-level bucket and value on lane 0.
__global__ void CrossPolytopeKernel(CrossPolytopeArgs a) {
  __shared__ float proj[kWarps][2 * kMaxHashProjections];
  const int64_t s = blockIdx.x;
  const SliceInfo si = a.slices[s];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int D = a.hash_cols;
  const float* W = a.hash + (int64_t{si.h} * a.num_hashes + a.round) *
                                a.hash_rows * int64_t{D};
  const bool smyrf = a.smyrf.m != nullptr;
  const double M = smyrf ? a.smyrf.m[s] : 0.0;
  const int64_t rows = int64_t{si.nq} + si.nk;
  for (int64_t r = WarpItem0(); r < rows; r += WarpItemStride()) {
    const bool is_q = r < si.nq;
    const int64_t i = is_q ? r : r - si.nq;
    const float* x = (is_q ? si.q : si.k) + i * a.d;
    // Appended coordinates: queries [0, pad], keys [pad, 0].
    float e0 = 0.0f, e1 = 0.0f;
    if (smyrf) {
      if (is_q) {
        e1 = SmyrfPad(a.smyrf.qn2[si.q_row0 + i], M);
      } else {
        e0 = SmyrfPad(a.smyrf.kn2[si.k_row0 + i], M);
      }
    }
    for (int l = 0; l < 2 * a.P; ++l) {
      const float* w = W + int64_t{l} * D;
      float p = 0.0f;
      for (int c = lane; c < a.d; c += kWarpSize) p += x[c] * w[c];
      p = WarpSum(p);
      if (smyrf) p = AddSmyrf(p, w[a.d], w[a.d + 1], e0, e1);
      if (lane == 0) proj[warp][l] = p;
    }
    __syncwarp();
    if (lane == 0) {
      const uint64_t key = HashSortKey(CrossPolytopeCode(proj[warp], a.P));
      if (is_q) {
        a.keys.qkey[si.q_row0 + i] = key;
      } else {
        a.keys.kkey[si.k_row0 + i] = key;
        a.keys.kidx[si.k_row0 + i] = static_cast<int32_t>(i);
      }
    }
    __syncwarp();
  }
}

struct ChunkArgs {
  const SliceInfo* slices;
  int64_t bucket;
  const uint64_t* sorted_kkey;
  const int32_t* korder;
  const uint64_t* qkey;
  int32_t* kchunk;
  int32_t* qchunk;
  uint32_t* qsort_key;
  int32_t* qsort_idx;
};

// Thread per sorted key position, then per query.
__global__ void AssignChunksKernel(ChunkArgs a) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = a.slices[s];
  const int64_t nk = si.nk;
  const int64_t nchunks = NumChunks(nk, a.bucket);
  const int64_t stride = int64_t{gridDim.y} * kRowThreads;
  const int64_t first = int64_t{blockIdx.y} * kRowThreads + threadIdx.x;
  for (int64_t pos = first; pos < nk; pos += stride) {
    const int32_t j = a.korder[si.k_row0 + pos];
    a.kchunk[si.k_row0 + j] =
        static_cast<int32_t>(ChunkOfPosition(pos, nk, nchunks));
  }
  const uint64_t* sorted = a.sorted_kkey + si.k_row0;
  for (int64_t i = first; i < si.nq; i += stride) {
    const int64_t g = si.q_row0 + i;
    const int32_t t =
        nk > 0
            ? static_cast<int32_t>(QueryChunk(a.qkey[g], sorted, nk, nchunks))
            : -1;
    a.qchunk[g] = t;
    a.qsort_key[g] = t < 0 ? 0u : static_cast<uint32_t>(t);
    a.qsort_idx[g] = static_cast<int32_t>(i);
  }
}

__global__ void ForcedChunkKeysKernel(const SliceInfo* slices,
                                      const int32_t* kchunk,
                                      const int32_t* qchunk, RoundKeys keys,
                                      uint32_t* qsort_key, int32_t* qsort_idx) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = slices[s];
  const int64_t stride = int64_t{gridDim.y} * kRowThreads;
  const int64_t first = int64_t{blockIdx.y} * kRowThreads + threadIdx.x;
  for (int64_t j = first; j < si.nk; j += stride) {
    const int64_t g = si.k_row0 + j;
    keys.kkey[g] = static_cast<uint32_t>(kchunk[g] < 0 ? 0 : kchunk[g]);
    keys.kidx[g] = static_cast<int32_t>(j);
  }
  for (int64_t i = first; i < si.nq; i += stride) {
    const int64_t g = si.q_row0 + i;
    qsort_key[g] = static_cast<uint32_t>(qchunk[g] < 0 ? 0 : qchunk[g]);
    qsort_idx[g] = static_cast<int32_t>(i);
  }
}

dim3 RowGrid(const DeviceBatch& batch, int64_t rows_per_block) {
  const int64_t rows = int64_t{batch.max_seq_q} + batch.max_seq_k;
  return dim3(static_cast<unsigned>(batch.total_slices),
              GridY((rows + rows_per_block - 1) / rows_per_block));
}

}  // namespace

absl::Status TakeSmyrfNorms(ScratchPlan& plan, const BatchSizes& n,
                            SmyrfNorms* out) {
  SB_RETURN_IF_ERROR(plan.Take(n.slices, &out->m));
  SB_RETURN_IF_ERROR(plan.Take(n.q_rows, &out->qn2));
  return plan.Take(n.k_rows, &out->kn2);
}

absl::Status LaunchSmyrfNorms(const DeviceBatch& batch,
                              const LaunchContext& ctx, const Slices& slices,
                              const SmyrfNorms& norms) {
  const int d = static_cast<int>(batch.settings.dim);
  RowNormsKernel<<<RowGrid(batch, kWarps), kThreads, 0, ctx.stream>>>(
      slices.info, d, norms.qn2, norms.kn2);
  SB_SPARSE_LAUNCHED("RowNormsKernel");
  SmyrfMKernel<<<static_cast<unsigned>(batch.total_slices), kThreads, 0,
                 ctx.stream>>>(slices.info, norms.qn2, norms.kn2, norms.m);
  SB_SPARSE_LAUNCHED("SmyrfMKernel");
  return absl::OkStatus();
}

absl::Status LaunchCrossPolytope(const DeviceBatch& batch,
                                 const LaunchContext& ctx, const Slices& slices,
                                 int round, const SmyrfNorms* smyrf,
                                 RoundKeys* keys) {
  const AttentionParams& p = batch.settings;
  const DeviceDraws& dr = batch.draws;
  const int P = p.hash_projections;
  const int64_t cols = p.dim + (smyrf != nullptr ? 2 : 0);
  const int64_t max_heads = MaxHeads(batch);
  if (dr.hash == nullptr || dr.hash_rows < 2 * P || dr.hash_cols != cols ||
      dr.heads < max_heads || P < 1 || P > kMaxHashProjections) {
    return absl::FailedPreconditionError(
        "cuda lsh: the uploaded hash projections do not match the settings "
        "(cross-polytope needs 2 * hash_projections rows of dim (+2 with "
        "SMYRF) per head and round)");
  }
  CrossPolytopeArgs a;
  a.slices = slices.info;
  a.hash = dr.hash;
  a.hash_rows = dr.hash_rows;
  a.hash_cols = dr.hash_cols;
  a.num_hashes = p.num_hashes;
  a.round = round;
  a.P = P;
  a.d = static_cast<int>(p.dim);
  if (smyrf != nullptr) a.smyrf = *smyrf;
  a.keys = *keys;
  CrossPolytopeKernel<<<RowGrid(batch, kWarps), kThreads, 0, ctx.stream>>>(a);
  SB_SPARSE_LAUNCHED("CrossPolytopeKernel");
  return absl::OkStatus();
}

absl::Status LaunchAssignChunks(const DeviceBatch& batch,
                                const LaunchContext& ctx, const Slices& slices,
                                const uint64_t* sorted_kkey,
                                const int32_t* korder, const uint64_t* qkey,
                                int32_t* kchunk, int32_t* qchunk,
                                uint32_t* qsort_key, int32_t* qsort_idx) {
  ChunkArgs a{slices.info, batch.settings.bucket_size,
              sorted_kkey, korder,
              qkey,        kchunk,
              qchunk,      qsort_key,
              qsort_idx};
  AssignChunksKernel<<<RowGrid(batch, kRowThreads), kRowThreads, 0,
                       ctx.stream>>>(a);
  SB_SPARSE_LAUNCHED("AssignChunksKernel");
  return absl::OkStatus();
}

absl::Status LaunchForcedChunkKeys(const DeviceBatch& batch,
                                   const LaunchContext& ctx,
                                   const Slices& slices, const int32_t* kchunk,
                                   const int32_t* qchunk, RoundKeys* keys,
                                   uint32_t* qsort_key, int32_t* qsort_idx) {
  ForcedChunkKeysKernel<<<RowGrid(batch, kRowThreads), kRowThreads, 0,
                          ctx.stream>>>(slices.info, kchunk, qchunk, *keys,
                                        qsort_key, qsort_idx);
  SB_SPARSE_LAUNCHED("ForcedChunkKeysKernel");
  return absl::OkStatus();
}

}  // namespace sparse
}  // namespace cuda
}  // namespace scatterbrain
