// scatterbrain/kernels/cuda/exact.cu — exact attention (RunExact) and the
// local window (RunLocal, the banded form of the same loop) for head
// dimensions up to 128: the query tile stays in shared memory and each
// thread's output accumulators stay in registers while key/value tiles
// stream past. Larger heads go to exact_generic.cu.
//
// Matches kernels/cpu/exact.cc (exact) and sparse.cc + WriteSparseOnly
// (local): rows that see no key output zeros; a local row that sees keys
// but none in its band outputs zeros and counts as a guard.
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash.cuh"

namespace scatterbrain {
namespace cuda {
namespace {

using devmath::KeyRange;

// kBM query rows x kBN keys per tile; d <= kD, dv <= kDv.
template <int kBM, int kBN, int kD, int kDv>
struct ResidentTile {
  static constexpr int kQs = kD + 1;  // padded row stride of Qs, Ks
  static constexpr int kPs = kBN + 1;
  static constexpr int kRows = kBM / 16;  // rows per thread
  static constexpr int kCols = kBN / 16;  // score columns per thread
  static constexpr int kOut = kDv / 16;   // output columns per thread
  static constexpr int kSmemFloats =
      kBM * kQs + kBN * kQs + kBN * kDv + kBM * kPs;
  static_assert(kBM % 16 == 0 && kBN % 16 == 0 && kDv % 16 == 0, "tiles");
};

template <int kBM, int kBN, int kD, int kDv>
__global__ void __launch_bounds__(kFlashThreads, 2)
    FlashResidentKernel(FlashArgs args, int64_t q_tiles) {
  using T = ResidentTile<kBM, kBN, kD, kDv>;
  extern __shared__ float smem[];
  float* qs = smem;               // [kBM][kQs]
  float* ks = qs + kBM * T::kQs;  // [kBN][kQs]
  float* vs = ks + kBN * T::kQs;  // [kBN][kDv]
  float* ps = vs + kBN * kDv;     // [kBM][kPs]

  const int tid = threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4;
  const SliceView sv = LoadSlice(args.batch, blockIdx.x);
  const int d = args.batch.dim, dv = args.batch.dim_v;
  const bool causal = args.batch.causal;

  for (int64_t tile = blockIdx.y; tile < q_tiles; tile += gridDim.y) {
    const int64_t i0 = tile * kBM;
    if (i0 >= sv.nq) break;  // the same for every thread of the block
    const int64_t i1 = devmath::MinI(sv.nq, i0 + kBM);
    __syncthreads();  // the previous tile's readers are done with qs
    for (int idx = tid; idx < kBM * d; idx += kFlashThreads) {
      const int r = idx / d, c = idx - r * d;
      const int64_t i = i0 + r;
      qs[r * T::kQs + c] = i < i1 ? sv.q[i * d + c] : 0.0f;
    }

    float acc[T::kRows][T::kOut];
    devmath::SoftmaxState st[T::kRows];
#pragma unroll
    for (int a = 0; a < T::kRows; ++a) {
      st[a] = devmath::SoftmaxStart();
#pragma unroll
      for (int e = 0; e < T::kOut; ++e) acc[a][e] = 0.0f;
    }

    const KeyRange kr =
        devmath::TileKeys(i0, i1, sv.offset, sv.nk, causal, args.half);
    for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += kBN) {
      __syncthreads();  // previous tile's ps / vs readers are done
      for (int idx = tid; idx < kBN * d; idx += kFlashThreads) {
        const int r = idx / d, c = idx - r * d;
        const int64_t j = j0 + r;
        ks[r * T::kQs + c] = j < kr.hi ? sv.k[j * d + c] : 0.0f;
      }
      for (int idx = tid; idx < kBN * dv; idx += kFlashThreads) {
        const int r = idx / dv, c = idx - r * dv;
        const int64_t j = j0 + r;
        vs[r * kDv + c] = j < kr.hi ? sv.v[j * dv + c] : 0.0f;
      }
      __syncthreads();

      float s[T::kRows][T::kCols];
#pragma unroll
      for (int a = 0; a < T::kRows; ++a)
#pragma unroll
        for (int b = 0; b < T::kCols; ++b) s[a][b] = 0.0f;
#pragma unroll 4
      for (int k = 0; k < d; ++k) {
        float qv[T::kRows], kv[T::kCols];
#pragma unroll
        for (int a = 0; a < T::kRows; ++a)
          qv[a] = qs[(ty + 16 * a) * T::kQs + k];
#pragma unroll
        for (int b = 0; b < T::kCols; ++b)
          kv[b] = ks[(tx + 16 * b) * T::kQs + k];
#pragma unroll
        for (int a = 0; a < T::kRows; ++a)
#pragma unroll
          for (int b = 0; b < T::kCols; ++b) s[a][b] += qv[a] * kv[b];
      }

      const bool full = TileFullyVisible(args, sv, kr, i0, j0, kBN);
#pragma unroll
      for (int a = 0; a < T::kRows; ++a) {
        const float alpha =
            SoftmaxTileRow(s[a], args, sv, kr, full, i0 + ty + 16 * a, i1, j0,
                           tx, &st[a], ps + (ty + 16 * a) * T::kPs);
#pragma unroll
        for (int e = 0; e < T::kOut; ++e) acc[a][e] *= alpha;
      }
      __syncthreads();

      const int nj = static_cast<int>(devmath::MinI(kBN, kr.hi - j0));
      for (int j = 0; j < nj; ++j) {
        float vv[T::kOut];
#pragma unroll
        for (int e = 0; e < T::kOut; ++e) vv[e] = vs[j * kDv + tx + 16 * e];
#pragma unroll
        for (int a = 0; a < T::kRows; ++a) {
          const float p = ps[(ty + 16 * a) * T::kPs + j];
#pragma unroll
          for (int e = 0; e < T::kOut; ++e) acc[a][e] += p * vv[e];
        }
      }
    }

#pragma unroll
    for (int a = 0; a < T::kRows; ++a) {
      const int64_t i = i0 + ty + 16 * a;
      if (i >= i1) continue;
      const float inv = devmath::SoftmaxInverse(st[a].sum);
#pragma unroll
      for (int e = 0; e < T::kOut; ++e) {
        const int c = tx + 16 * e;
        if (c < dv) sv.out[i * dv + c] = acc[a][e] * inv;
      }
      CountEmptyRow(args, sv, i, st[a], tx);
    }
  }
}

template <int kBM, int kBN, int kD, int kDv>
absl::Status LaunchResident(const FlashArgs& args, int64_t total_slices,
                            int64_t max_seq_q, cudaStream_t stream) {
  using T = ResidentTile<kBM, kBN, kD, kDv>;
  auto* kernel = FlashResidentKernel<kBM, kBN, kD, kDv>;
  const size_t smem = sizeof(float) * T::kSmemFloats;
  SB_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)));
  const int64_t q_tiles = devmath::CeilDiv(max_seq_q, kBM);
  const dim3 grid(GridX(total_slices), GridY(q_tiles));
  kernel<<<grid, kFlashThreads, smem, stream>>>(args, q_tiles);
  SB_CUDA_RETURN_IF_LAUNCH_FAILED("FlashResidentKernel");
  return absl::OkStatus();
}

absl::Status LaunchFlash(const DeviceBatch& batch, const LaunchContext& ctx,
                         int64_t half, bool count_empty) {
  if (batch.total_slices == 0 || batch.max_seq_q == 0) return absl::OkStatus();
  const FlashArgs args{MakeBatchArgs(batch), half, count_empty};
  const int64_t d = batch.settings.dim, dv = batch.settings.dim_v;
  if (d <= 64 && dv <= 64) {
    return LaunchResident<64, 64, 64, 64>(args, batch.total_slices,
                                          batch.max_seq_q, ctx.stream);
  }
  if (d <= 128 && dv <= 128) {
    return LaunchResident<64, 32, 128, 128>(args, batch.total_slices,
                                            batch.max_seq_q, ctx.stream);
  }
  return LaunchFlashGeneric(args, batch.max_seq_q, ctx.stream);
}

}  // namespace

absl::Status RunExact(const DeviceBatch& batch, const LaunchContext& ctx) {
  return LaunchFlash(batch, ctx, /*half=*/-1, /*count_empty=*/false);
}

absl::Status RunLocal(const DeviceBatch& batch, const LaunchContext& ctx) {
  return LaunchFlash(batch, ctx, /*half=*/batch.settings.window / 2,
                     /*count_empty=*/true);
}

}  // namespace cuda
}  // namespace scatterbrain
