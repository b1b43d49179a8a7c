// scatterbrain/kernels/cuda/sparse_device.cuh — device helpers the LSH and
// Scatterbrain kernels share: warp and block reductions, the block-wide
// SampleRows (Floyd on one thread into a bit set, then an ordered
// compaction by the block), and row loops. Included by .cu files only.
#ifndef SCATTERBRAIN_KERNELS_CUDA_SPARSE_DEVICE_CUH_
#define SCATTERBRAIN_KERNELS_CUDA_SPARSE_DEVICE_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/sparse_internal.h"
#include "kernels/cuda/sparse_math.h"

namespace scatterbrain {
namespace cuda {
namespace sparse {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpSize = 32;

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ double WarpSumD(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
__device__ __forceinline__ double WarpMaxD(double v) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
// (largest value, first index on ties) over the warp; every lane gets it.
__device__ __forceinline__ void WarpFirstMax(float* v, int* i) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, *v, o);
    const int oi = __shfl_xor_sync(kFullMask, *i, o);
    if (BeatsFirstMax(ov, oi, *v, *i)) {
      *v = ov;
      *i = oi;
    }
  }
}

// Sum of v over a block of kThreads threads (a multiple of 32); every
// thread gets it. Contains __syncthreads: call from all threads.
template <int kThreads>
__device__ double BlockSumD(double v) {
  __shared__ double part[kThreads / kWarpSize];
  v = WarpSumD(v);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  __syncthreads();  // `part` may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  double total = 0;
  for (int w = 0; w < kThreads / kWarpSize; ++w) total += part[w];
  return total;
}

// SampleRows(seed, purpose, a, b, n, count) into out[0, min(count, n)),
// sorted, by a block of kThreads threads. `words` holds ceil(n / 32) words
// of this block's own scratch (cleared here). Contains __syncthreads.
template <int kThreads>
__device__ void BlockSampleRows(uint64_t seed, uint64_t purpose, uint64_t a,
                                uint64_t b, int64_t n, int64_t count,
                                uint32_t* words, int32_t* out) {
  if (count >= n) {
    for (int64_t t = threadIdx.x; t < n; t += kThreads)
      out[t] = static_cast<int32_t>(t);
    __syncthreads();
    return;
  }
  const int64_t nwords = (n + 31) / 32;
  for (int64_t w = threadIdx.x; w < nwords; w += kThreads) words[w] = 0;
  __syncthreads();
  if (threadIdx.x == 0) {
    BitSet set{words};
    FloydSample(seed, purpose, a, b, n, count, set);
  }
  __syncthreads();
  // Ordered compaction: an inclusive scan of the words' bit counts.
  __shared__ int32_t scan[kThreads];
  int64_t running = 0;
  for (int64_t w0 = 0; w0 < nwords; w0 += kThreads) {
    const int64_t w = w0 + threadIdx.x;
    uint32_t word = w < nwords ? words[w] : 0u;
    const int c = __popc(word);
    scan[threadIdx.x] = c;
    __syncthreads();
    for (int off = 1; off < kThreads; off <<= 1) {
      const int add = threadIdx.x >= off ? scan[threadIdx.x - off] : 0;
      __syncthreads();
      scan[threadIdx.x] += add;
      __syncthreads();
    }
    int64_t pos = running + scan[threadIdx.x] - c;
    const int total = scan[kThreads - 1];
    while (word != 0u) {
      const int bit = __ffs(word) - 1;
      out[pos++] = static_cast<int32_t>(w * 32 + bit);
      word &= word - 1u;
    }
    running += total;
    __syncthreads();  // `scan` is rewritten next iteration
  }
}

// The bit-set scratch of slice s over `rows` rows starting at global row
// row0: disjoint between slices (its first word is row0 / 32 + s).
__device__ __forceinline__ uint32_t* SliceWords(uint32_t* bits, int64_t row0,
                                                int64_t s) {
  return bits + (row0 >> 5) + s;
}
// Words such scratch needs for `rows` global rows over `slices` slices.
inline int64_t SliceWordsTotal(int64_t rows, int64_t slices) {
  return rows / 32 + slices + 2;
}

}  // namespace sparse
}  // namespace cuda
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_SPARSE_DEVICE_CUH_
