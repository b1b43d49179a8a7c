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
// Every kernel here runs blocks of 4 warps.
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;

// Warp-per-item loops over a grid of slices (x) by item tiles (y):
//   for (int64_t i = WarpItem0(); i < n; i += WarpItemStride()) ...
__device__ __forceinline__ int64_t WarpItem0() {
  return int64_t{blockIdx.y} * kWarps + threadIdx.x / kWarpSize;
}
__device__ __forceinline__ int64_t WarpItemStride() {
  return int64_t{gridDim.y} * kWarps;
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ double WarpSumD(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
__device__ __forceinline__ double WarpMaxD(double v) {
  for (int o = 16; o > 0; o >>= 1)
    v = fmax(v, __shfl_xor_sync(kFullMask, v, o));
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

// A grid of warp-per-query-row kernels: slices by row tiles.
inline dim3 QueryRowGrid(const DeviceBatch& b) {
  return dim3(static_cast<unsigned>(b.total_slices),
              GridY((int64_t{b.max_seq_q} + kWarps - 1) / kWarps));
}

// What the combination kernels read (scatterbrain.cu, calibrate.cu).
struct CombineView {
  const SliceInfo* slices;
  const RowStats* stats;
  const float* ev;   // exact numerators
  const float* lv;   // low-rank numerators on S_i
  const float* num;  // low-rank numerators, every visible key
  const float* den;
  const float* qscale;  // [total_q_rows]
  const float* kscale;  // [total_slices]
  const float* vbar;    // MeanWork::vbar
  int dv;
  bool causal;
  DeviceCounters* counters;
};
inline CombineView MakeCombineView(const DeviceBatch& batch,
                                   const Slices& slices,
                                   const CombineInputs& in) {
  CombineView v;
  v.slices = slices.info;
  v.stats = in.acc->stats;
  v.ev = in.acc->ev;
  v.lv = in.acc->lv;
  v.num = in.lowrank->num;
  v.den = in.lowrank->den;
  v.qscale = in.features->qscale;
  v.kscale = in.features->kscale;
  v.vbar = in.vbar;
  v.dv = static_cast<int>(batch.settings.dim_v);
  v.causal = batch.settings.causal;
  v.counters = batch.counters;
  return v;
}
// Row i of slice s, as the combination math takes it.
__device__ __forceinline__ RowInputs CombineRow(const CombineView& v,
                                                const SliceInfo& si, int64_t s,
                                                int64_t i) {
  const int64_t g = si.q_row0 + i;
  const RowStats st = v.stats[g];
  RowInputs in;
  in.lim = KeyLimit(i, si.nk, si.offset, v.causal);
  in.count = st.count;
  in.emax = st.emax;
  in.e1 = st.e1;
  in.f1 = st.f1;
  in.den = v.den[g];
  in.qscale = v.qscale[g];
  in.kscale = v.kscale[s];
  return in;
}
// Its mean visible value, its exact numerator and its low-rank numerator
// off S_i at column c (global row g).
__device__ __forceinline__ const float* MeanRow(const CombineView& v, int64_t s,
                                                int64_t g) {
  return v.vbar + (v.causal ? g : s) * v.dv;
}
__device__ __forceinline__ float LowRankOff(const CombineView& v, int64_t g,
                                            int c) {
  const int64_t x = g * v.dv + c;
  return v.num[x] - v.lv[x];
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
