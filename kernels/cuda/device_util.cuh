// scatterbrain/kernels/cuda/device_util.cuh — what every kernel of the
// backend shares: the batch as a kernel argument (BatchArgs, a plain copy of
// DeviceBatch's device pointers and settings), a slice's view of its request
// (pointers, lengths, global rows), warp reductions, and the launch-size
// helpers. Included by .cu files only.
#ifndef SCATTERBRAIN_KERNELS_CUDA_DEVICE_UTIL_CUH_
#define SCATTERBRAIN_KERNELS_CUDA_DEVICE_UTIL_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/math.h"

namespace scatterbrain {
namespace cuda {

// DeviceBatch's device side, passed by value to kernels.
struct BatchArgs {
  const DeviceRequest* requests;
  const int64_t* slice_offsets;  // [n + 1]
  const int64_t* q_row_offsets;  // [total_slices + 1]
  const int64_t* k_row_offsets;  // [total_slices + 1]
  DeviceCounters* counters;      // [n]
  int n;
  int64_t total_slices;
  int dim, dim_v;
  float tau;
  bool causal;
};

inline BatchArgs MakeBatchArgs(const DeviceBatch& b) {
  BatchArgs a;
  a.requests = b.requests;
  a.slice_offsets = b.slice_offsets;
  a.q_row_offsets = b.q_row_offsets;
  a.k_row_offsets = b.k_row_offsets;
  a.counters = b.counters;
  a.n = b.n;
  a.total_slices = b.total_slices;
  a.dim = static_cast<int>(b.settings.dim);
  a.dim_v = static_cast<int>(b.settings.dim_v);
  a.tau = EffectiveScale(b.settings);
  a.causal = b.settings.causal;
  return a;
}

// One (request, batch entry, head) slice as a kernel sees it.
struct SliceView {
  int req;
  int b, h;
  int64_t nq;              // query rows
  int64_t seq_k;           // key rows (with padding)
  int64_t nk;              // valid keys (key_lengths[b] or seq_k)
  int64_t offset;          // seq_k - seq_q: causal and window alignment
  const float* q;          // [nq][dim]
  const float* k;          // [seq_k][dim]
  const float* v;          // [seq_k][dim_v]
  float* out;              // [nq][dim_v]
  int64_t q_row0, k_row0;  // first global query / key row
};

__device__ inline SliceView LoadSlice(const BatchArgs& a, int64_t s) {
  SliceView v;
  v.req = devmath::FindRequest(a.slice_offsets, a.n, s);
  const DeviceRequest& r = a.requests[v.req];
  const int64_t local = s - a.slice_offsets[v.req];
  v.b = static_cast<int>(local / r.heads);
  v.h = static_cast<int>(local % r.heads);
  v.nq = r.seq_q;
  v.seq_k = r.seq_k;
  v.nk = r.key_lengths != nullptr ? r.key_lengths[v.b] : r.seq_k;
  if (v.nk < 0) v.nk = 0;
  if (v.nk > v.seq_k) v.nk = v.seq_k;
  v.offset = static_cast<int64_t>(r.seq_k) - r.seq_q;
  v.q = r.q + local * r.seq_q * a.dim;
  v.k = r.k + local * r.seq_k * a.dim;
  v.v = r.v + local * r.seq_k * a.dim_v;
  v.out = r.out + local * r.seq_q * a.dim_v;
  v.q_row0 = a.q_row_offsets[s];
  v.k_row0 = a.k_row_offsets[s];
  return v;
}

// Butterfly reduction over groups of kLanes consecutive lanes (16: a half
// warp, 32: the warp); every lane of the warp must take part.
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
template <int kLanes, typename T, typename Op>
__device__ __forceinline__ T LaneReduce(T x, Op op) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1)
    x = op(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float HalfWarpMax(float x) {
  return LaneReduce<16>(x, MaxOp());
}
__device__ __forceinline__ float HalfWarpSum(float x) {
  return LaneReduce<16>(x, SumOp());
}

// Grid y is at most 65535: kernels loop `for (t = blockIdx.y; t < tiles;
// t += gridDim.y)` over their tiles along y.
constexpr unsigned kMaxGridY = 65535;
inline unsigned GridY(int64_t tiles) {
  return static_cast<unsigned>(
      tiles < 1 ? 1 : (tiles > kMaxGridY ? kMaxGridY : tiles));
}
// Grid x is at most 2^31 - 1 blocks; slices are checked against it by the
// backend.
inline unsigned GridX(int64_t blocks) {
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

}  // namespace cuda
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_DEVICE_UTIL_CUH_
