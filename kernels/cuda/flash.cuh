// scatterbrain/kernels/cuda/flash.cuh — the fused exact-attention forward
// (FlashAttention-2 style: a tile of query rows per block, key/value tiles
// streamed through shared memory, the online softmax in registers, never a
// score matrix in device memory), shared by exact.cu (exact attention and
// its banded form, the local window) and exact_generic.cu (head dimensions
// above 128).
#ifndef SCATTERBRAIN_KERNELS_CUDA_FLASH_CUH_
#define SCATTERBRAIN_KERNELS_CUDA_FLASH_CUH_

#include "absl/status/status.h"
#include "kernels/cuda/device_util.cuh"

namespace scatterbrain {
namespace cuda {

struct FlashArgs {
  BatchArgs batch;
  // Local window: query i sees keys j with |i + offset - j| <= half; -1 for
  // exact attention.
  int64_t half;
  // Count rows that see keys but none in their band (WriteSparseOnly's
  // guards) into the request's counters.
  bool count_empty;
};

// Both kernels use 256 threads as a 16 x 16 grid: thread (ty, tx) owns
// query rows ty + 16a and, of a tile, score columns tx + 16b and output
// columns tx + 16e; a row's 16 threads are one half warp, so row max and
// sum are half-warp shuffles.
constexpr int kFlashThreads = 256;

// Whether every key of [j0, j0 + bn) is visible to every row from i0 on
// (no window, all keys below the first row's limit): then only rows past
// the end of the tile are masked.
__device__ inline bool TileFullyVisible(const FlashArgs& a, const SliceView& sv,
                                        const devmath::KeyRange& kr, int64_t i0,
                                        int64_t j0, int bn) {
  return a.half < 0 && j0 + bn <= kr.hi &&
         (!a.batch.causal ||
          j0 + bn <= devmath::KeyLimit(i0, sv.offset, sv.nk, true));
}

// Row i's raw scores q_i . k_j against the key tile at j0, this thread's
// columns j0 + tx + 16b: scales and masks them, takes the row max over the
// row's half warp, advances the row's online softmax, stores the weights
// at ps_row[tx + 16b] and returns the factor for the row's accumulators.
// Every lane of the warp must call it (half-warp shuffles).
template <int kCols>
__device__ inline float SoftmaxTileRow(float (&s)[kCols], const FlashArgs& a,
                                       const SliceView& sv,
                                       const devmath::KeyRange& kr, bool full,
                                       int64_t i, int64_t i1, int64_t j0,
                                       int tx, devmath::SoftmaxState* st,
                                       float* ps_row) {
  float tmax = devmath::NegInfinity();
#pragma unroll
  for (int b = 0; b < kCols; ++b) {
    const int64_t j = j0 + tx + 16 * b;
    const bool ok =
        i < i1 &&
        (full || (j < kr.hi && devmath::KeyVisible(i, j, sv.offset, sv.nk,
                                                   a.batch.causal, a.half)));
    s[b] = ok ? s[b] * a.batch.tau : devmath::NegInfinity();
    tmax = fmaxf(tmax, s[b]);
  }
  const float alpha = devmath::SoftmaxBeginTile(st, HalfWarpMax(tmax));
  float psum = 0.0f;
#pragma unroll
  for (int b = 0; b < kCols; ++b) {
    const float p = devmath::SoftmaxWeight(s[b], st->max);
    psum += p;
    ps_row[tx + 16 * b] = p;
  }
  devmath::SoftmaxAddTile(st, HalfWarpSum(psum));
  return alpha;
}

// After the key tiles, with the local window: a row that sees keys but
// found none in its band (its output is zeros) counts one guard, as
// WriteSparseOnly counts it. Called by every thread of the row; tx 0 adds.
__device__ inline void CountEmptyRow(const FlashArgs& a, const SliceView& sv,
                                     int64_t i, const devmath::SoftmaxState& st,
                                     int tx) {
  if (a.count_empty && tx == 0 && !(st.sum > 0.0f) &&
      devmath::KeyLimit(i, sv.offset, sv.nk, a.batch.causal) > 0) {
    atomicAdd(&a.batch.counters[sv.req].guards, 1ull);
  }
}

// d, dv <= 1024, any size: 16 query rows per block, d and dv streamed in
// chunks of 64, the output accumulators in shared memory.
absl::Status LaunchFlashGeneric(const FlashArgs& args, int64_t max_seq_q,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_FLASH_CUH_
