// scatterbrain/kernels/cuda/kmeans.cu — the k-means hash of one LSH round
// on the device, step for step as sparse.cc's KMeansHash: spherical k-means
// on a seeded sample of unit key directions (flat up to 256 centroids, else
// a two-level tree), then every query and valid key gets the order key
// (leaf, projection on the round's direction).
//
// Same rules as the CPU: samples from the same draws (SampleRows on the
// device), first-max argmax, cluster sums in member order, empty clusters
// kept. Dot products are left-to-right without FMA (the CPU's child and
// order loops bit for bit; its top level is a BLAS GEMM, so a top choice
// can still flip on rounding: compare through SparseProbe's chunks).
#include <cuda_runtime.h>

#include <climits>

#include "kernels/cuda/sparse_device.cuh"
#include "kernels/random_draws.h"

namespace scatterbrain {
namespace cuda {
namespace sparse {
namespace {

// Columns per lane of a centroid sum pass (d > 32 * kSumCols: more passes).
constexpr int kSumCols = 8;

struct KMeansArgs {
  const SliceInfo* slices;
  KMeansWork w;
  int64_t bucket;
  int d;
  uint64_t seed, purpose;
  int round;
};

// Slice s's centroid rows start here: K1 tops, then K1 * K2 leaves. They
// take at most 3K rows, K <= nk / bucket + 1, so 6 s + 3 (k_row0 / bucket)
// keeps slices apart (CentroidRows is the total).
__device__ __forceinline__ int64_t CentroidBase(int64_t s, int64_t k_row0,
                                                int64_t bucket) {
  return 6 * s + 3 * (k_row0 / bucket);
}
int64_t CentroidRows(const BatchSizes& n, int64_t bucket) {
  return 6 * n.slices + 3 * (n.k_rows / bucket) + 6;
}

// First position in sorted[0, n) whose value is >= v.
__device__ __forceinline__ int64_t LowerBound(const uint32_t* sorted, int64_t n,
                                              uint32_t v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (sorted[mid] < v) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// The candidate among cand[0, kc) (rows of d) with the largest dot product
// with x, first on ties; lanes take candidates, every lane gets the answer.
__device__ __forceinline__ int BestCentroid(const float* x, const float* cand,
                                            int64_t kc, int d) {
  float best = NegInfinity();
  int best_i = INT_MAX;
  for (int64_t u = threadIdx.x % kWarpSize; u < kc; u += kWarpSize) {
    const float v = SequentialDot(x, cand + u * d, d);
    if (BeatsFirstMax(v, u, best, best_i)) {
      best = v;
      best_i = static_cast<int>(u);
    }
  }
  WarpFirstMax(&best, &best_i);
  return best_i;
}

// Block per slice: the training sample (sorted key indices) and the initial
// tops (sorted sample positions), as SampleRows draws them.
__global__ void SampleKernel(KMeansArgs a) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = a.slices[s];
  const KMeansShape sh = MakeKMeansShape(si.nk, a.bucket);
  const int64_t nt = si.nk > 0 ? sh.samples : 0;
  if (threadIdx.x == 0) a.w.member_end[s] = si.k_row0 + nt;
  if (si.nk == 0) return;
  BlockSampleRows<kThreads>(a.seed, a.purpose, a.round + 1000, si.h, si.nk, nt,
                            SliceWords(a.w.bits_train, si.k_row0, s),
                            a.w.train + si.k_row0);
  BlockSampleRows<kThreads>(
      a.seed, a.purpose, a.round + 2000, si.h, nt, MinI(sh.k1, nt),
      SliceWords(a.w.bits_init, si.k_row0, s), a.w.init + si.k_row0);
}

// Warp per sample: its unit direction (zero rows stay zero).
__global__ void UnitKernel(KMeansArgs a) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = a.slices[s];
  const int64_t nt = si.nk > 0 ? MakeKMeansShape(si.nk, a.bucket).samples : 0;
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t t = WarpItem0(); t < nt; t += WarpItemStride()) {
    const float* x = si.k + int64_t{a.w.train[si.k_row0 + t]} * a.d;
    double n2 = 0;
    for (int c = lane; c < a.d; c += kWarpSize) n2 += double(x[c]) * x[c];
    n2 = WarpSumD(n2);
    const float inv = n2 > 0 ? static_cast<float>(1.0 / sqrt(n2)) : 0.0f;
    float* u = a.w.unit + (si.k_row0 + t) * a.d;
    for (int c = lane; c < a.d; c += kWarpSize) u[c] = x[c] * inv;
  }
}

// Warp per top centroid u: sample init[u % ninit].
__global__ void InitTopsKernel(KMeansArgs a) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = a.slices[s];
  if (si.nk == 0) return;
  const KMeansShape sh = MakeKMeansShape(si.nk, a.bucket);
  const int64_t ninit = MinI(sh.k1, sh.samples);
  const int64_t base = CentroidBase(s, si.k_row0, a.bucket);
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t u = WarpItem0(); u < sh.k1; u += WarpItemStride()) {
    const int64_t t = a.w.init[si.k_row0 + u % ninit];
    const float* src = a.w.unit + (si.k_row0 + t) * a.d;
    float* dst = a.w.cent + (base + u) * a.d;
    for (int c = lane; c < a.d; c += kWarpSize) dst[c] = src[c];
  }
}

// Warp per sample: level 0 its top, level 1 its child under its top. With
// `final_tops` (level 0 after the last update) it writes the tops and the
// member sort's input instead of the Lloyd assignment.
__global__ void AssignKernel(KMeansArgs a, int level, bool final_tops) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = a.slices[s];
  if (si.nk == 0) return;
  const KMeansShape sh = MakeKMeansShape(si.nk, a.bucket);
  const int64_t base = CentroidBase(s, si.k_row0, a.bucket);
  for (int64_t t = WarpItem0(); t < sh.samples; t += WarpItemStride()) {
    const int64_t g = si.k_row0 + t;
    const float* x = a.w.unit + g * a.d;
    const float* cand =
        level == 0
            ? a.w.cent + base * a.d
            : a.w.cent + (base + sh.k1 + int64_t{a.w.tops[g]} * sh.k2) * a.d;
    const int best = BestCentroid(x, cand, level == 0 ? sh.k1 : sh.k2, a.d);
    if (threadIdx.x % kWarpSize == 0) {
      if (final_tops) {
        a.w.tops[g] = static_cast<uint32_t>(best);
        a.w.midx[g] = static_cast<int32_t>(t);
      } else {
        a.w.assign[g] = best;
      }
    }
  }
}

// Warp per centroid: the unit mean direction of its members (sums in member
// order, as the CPU); a centroid without members keeps its place. Level 0:
// top u over every sample; level 1: leaf L = g K2 + u over the samples of
// top g (their positions sorted by top, in sample order).
__global__ void UpdateKernel(KMeansArgs a, int level) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = a.slices[s];
  if (si.nk == 0) return;
  const KMeansShape sh = MakeKMeansShape(si.nk, a.bucket);
  const int64_t base = CentroidBase(s, si.k_row0, a.bucket);
  const int64_t ncent = level == 0 ? sh.k1 : sh.k1 * sh.k2;
  const int lane = threadIdx.x % kWarpSize;
  const uint32_t* sorted_tops = a.w.sorted_tops + si.k_row0;
  for (int64_t L = WarpItem0(); L < ncent; L += WarpItemStride()) {
    int64_t pos0 = 0, pos1 = sh.samples, u = L, row = base + L;
    if (level == 1) {
      const int64_t g = L / sh.k2;
      u = L % sh.k2;
      row = base + sh.k1 + L;
      pos0 = LowerBound(sorted_tops, sh.samples, static_cast<uint32_t>(g));
      pos1 = LowerBound(sorted_tops, sh.samples, static_cast<uint32_t>(g + 1));
    }
    float* sum = a.w.csum + row * a.d;
    for (int c0 = 0; c0 < a.d; c0 += kWarpSize * kSumCols) {
      float acc[kSumCols];
      for (int q = 0; q < kSumCols; ++q) acc[q] = 0.0f;
      for (int64_t pos = pos0; pos < pos1; ++pos) {
        const int64_t t = level == 0 ? pos : a.w.members[si.k_row0 + pos];
        if (a.w.assign[si.k_row0 + t] != u) continue;
        const float* x = a.w.unit + (si.k_row0 + t) * a.d;
        for (int q = 0; q < kSumCols; ++q) {
          const int c = c0 + lane + kWarpSize * q;
          if (c < a.d) acc[q] += x[c];
        }
      }
      for (int q = 0; q < kSumCols; ++q) {
        const int c = c0 + lane + kWarpSize * q;
        if (c < a.d) sum[c] = acc[q];
      }
    }
    __syncwarp();
    double n2 = 0;
    for (int c = lane; c < a.d; c += kWarpSize) n2 += double(sum[c]) * sum[c];
    n2 = WarpSumD(n2);
    if (n2 > 0) {
      const float inv = static_cast<float>(1.0 / sqrt(n2));
      float* cent = a.w.cent + row * a.d;
      for (int c = lane; c < a.d; c += kWarpSize) cent[c] = sum[c] * inv;
    }
    __syncwarp();
  }
}

// Warp per leaf L = g K2 + u: the initial child is member (u n) / K2 of top
// g (n members), or the top itself when it has none.
__global__ void InitLeavesKernel(KMeansArgs a) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = a.slices[s];
  if (si.nk == 0) return;
  const KMeansShape sh = MakeKMeansShape(si.nk, a.bucket);
  const int64_t base = CentroidBase(s, si.k_row0, a.bucket);
  const uint32_t* sorted_tops = a.w.sorted_tops + si.k_row0;
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t L = WarpItem0(); L < sh.k1 * sh.k2; L += WarpItemStride()) {
    const int64_t g = L / sh.k2, u = L % sh.k2;
    const int64_t pos0 =
        LowerBound(sorted_tops, sh.samples, static_cast<uint32_t>(g));
    const int64_t n =
        LowerBound(sorted_tops, sh.samples, static_cast<uint32_t>(g + 1)) -
        pos0;
    const float* src =
        n > 0 ? a.w.unit + (si.k_row0 +
                            a.w.members[si.k_row0 + pos0 + (u * n) / sh.k2]) *
                               a.d
              : a.w.cent + (base + g) * a.d;
    float* dst = a.w.cent + (base + sh.k1 + L) * a.d;
    for (int c = lane; c < a.d; c += kWarpSize) dst[c] = src[c];
  }
}

// Warp per row (queries, then valid keys): its leaf in the tree and its
// projection on the round's direction, as the order key.
__global__ void OrderKeysKernel(KMeansArgs a, const float* dir_all,
                                int hash_rows, int hash_cols, int num_hashes,
                                RoundKeys keys) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = a.slices[s];
  if (si.nk == 0) return;
  const KMeansShape sh = MakeKMeansShape(si.nk, a.bucket);
  const float* cent = a.w.cent + CentroidBase(s, si.k_row0, a.bucket) * a.d;
  const float* dir = dir_all + (int64_t{si.h} * num_hashes + a.round) *
                                   hash_rows * int64_t{hash_cols};
  const int64_t rows = int64_t{si.nq} + si.nk;
  for (int64_t r = WarpItem0(); r < rows; r += WarpItemStride()) {
    const bool is_q = r < si.nq;
    const int64_t i = is_q ? r : r - si.nq;
    const float* x = (is_q ? si.q : si.k) + i * a.d;
    const int64_t top = BestCentroid(x, cent, sh.k1, a.d);
    const float* children = cent + (sh.k1 + top * sh.k2) * a.d;
    const int64_t leaf = top * sh.k2 + BestCentroid(x, children, sh.k2, a.d);
    if (threadIdx.x % kWarpSize == 0) {
      const uint64_t key = HashSortKey(
          HashCode{static_cast<uint32_t>(leaf), SequentialDot(dir, x, a.d)});
      if (is_q) {
        keys.qkey[si.q_row0 + i] = key;
      } else {
        keys.kkey[si.k_row0 + i] = key;
        keys.kidx[si.k_row0 + i] = static_cast<int32_t>(i);
      }
    }
  }
}

}  // namespace

absl::Status TakeKMeansWork(ScratchPlan& plan, const AttentionParams& settings,
                            const BatchSizes& n, KMeansWork* w) {
  const int64_t words = SliceWordsTotal(n.k_rows, n.slices);
  const int64_t d = settings.dim;
  const int64_t cent = CentroidRows(n, settings.bucket_size) * d;
  SB_RETURN_IF_ERROR(plan.Take(words, &w->bits_train));
  SB_RETURN_IF_ERROR(plan.Take(words, &w->bits_init));
  SB_RETURN_IF_ERROR(plan.Take(n.k_rows, &w->train));
  SB_RETURN_IF_ERROR(plan.Take(n.k_rows, &w->init));
  SB_RETURN_IF_ERROR(plan.Take(n.k_rows * d, &w->unit));
  SB_RETURN_IF_ERROR(plan.Take(n.k_rows, &w->assign));
  SB_RETURN_IF_ERROR(plan.Take(n.k_rows, &w->tops));
  SB_RETURN_IF_ERROR(plan.Take(n.k_rows, &w->midx));
  SB_RETURN_IF_ERROR(plan.Take(n.k_rows, &w->sorted_tops));
  SB_RETURN_IF_ERROR(plan.Take(n.k_rows, &w->members));
  SB_RETURN_IF_ERROR(plan.Take(n.slices, &w->member_end));
  SB_RETURN_IF_ERROR(plan.Take(cent, &w->cent));
  return plan.Take(cent, &w->csum);
}

absl::Status LaunchKMeansHash(const DeviceBatch& batch,
                              const LaunchContext& ctx, const Slices& slices,
                              const SortWork& sort, const KMeansWork& work,
                              int round, RoundKeys* keys) {
  const AttentionParams& p = batch.settings;
  const DeviceDraws& dr = batch.draws;
  if (dr.hash == nullptr || dr.hash_rows < 1 || dr.hash_cols < p.dim ||
      dr.heads < MaxHeads(batch)) {
    return absl::FailedPreconditionError(
        "cuda lsh: the uploaded hash projections do not match the settings "
        "(k-means needs one direction of dim per head and round)");
  }
  KMeansArgs a;
  a.slices = slices.info;
  a.w = work;
  a.bucket = p.bucket_size;
  a.d = static_cast<int>(p.dim);
  a.seed = p.seed;
  a.purpose = static_cast<uint64_t>(DrawPurpose::kHash);
  a.round = round;
  const unsigned S = static_cast<unsigned>(batch.total_slices);
  const KMeansShape big = MakeKMeansShape(batch.max_seq_k, p.bucket_size);
  const dim3 rows(
      S, GridY((int64_t{batch.max_seq_q} + batch.max_seq_k + kWarps - 1) /
               kWarps));
  const dim3 samples(S, GridY((big.samples + kWarps - 1) / kWarps));
  const dim3 cents(S, GridY((3 * big.k + 3 + kWarps - 1) / kWarps));
  cudaStream_t st = ctx.stream;

  SampleKernel<<<S, kThreads, 0, st>>>(a);
  SB_SPARSE_LAUNCHED("kmeans SampleKernel");
  UnitKernel<<<samples, kThreads, 0, st>>>(a);
  SB_SPARSE_LAUNCHED("kmeans UnitKernel");
  InitTopsKernel<<<cents, kThreads, 0, st>>>(a);
  SB_SPARSE_LAUNCHED("kmeans InitTopsKernel");
  for (int it = 0; it < p.kmeans_iterations; ++it) {
    AssignKernel<<<samples, kThreads, 0, st>>>(a, 0, false);
    SB_SPARSE_LAUNCHED("kmeans AssignKernel");
    UpdateKernel<<<cents, kThreads, 0, st>>>(a, 0);
    SB_SPARSE_LAUNCHED("kmeans UpdateKernel");
  }
  AssignKernel<<<samples, kThreads, 0, st>>>(a, 0, true);
  SB_SPARSE_LAUNCHED("kmeans AssignKernel (tops)");
  SB_RETURN_IF_ERROR(SortSegments32(batch, ctx, sort, work.member_end,
                                    work.tops, work.midx, work.sorted_tops,
                                    work.members));
  InitLeavesKernel<<<cents, kThreads, 0, st>>>(a);
  SB_SPARSE_LAUNCHED("kmeans InitLeavesKernel");
  for (int it = 0; it < p.kmeans_iterations; ++it) {
    AssignKernel<<<samples, kThreads, 0, st>>>(a, 1, false);
    SB_SPARSE_LAUNCHED("kmeans AssignKernel (leaves)");
    UpdateKernel<<<cents, kThreads, 0, st>>>(a, 1);
    SB_SPARSE_LAUNCHED("kmeans UpdateKernel (leaves)");
  }
  OrderKeysKernel<<<rows, kThreads, 0, st>>>(a, dr.hash, dr.hash_rows,
                                             dr.hash_cols, p.num_hashes, *keys);
  SB_SPARSE_LAUNCHED("kmeans OrderKeysKernel");
  return absl::OkStatus();
}

}  // namespace sparse
}  // namespace cuda
}  // namespace scatterbrain
