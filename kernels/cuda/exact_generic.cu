// scatterbrain/kernels/cuda/exact_generic.cu — the fused exact / banded
// attention loop for head dimensions above 128 (up to kMaxDim = 1024): 16
// query rows per block, q and k streamed in chunks of 64 columns for the
// scores, v in chunks of 64 for the update, and the output accumulators in
// shared memory (16 x dv floats) instead of registers. Slower per flop than
// exact.cu's resident tiles, but any d / dv fits.
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash.cuh"

namespace scatterbrain {
namespace cuda {
namespace {

using devmath::KeyRange;

constexpr int kBM = 16;       // query rows per block: one per 16 threads
constexpr int kBN = 64;       // keys per tile
constexpr int kCh = 64;       // columns per chunk of d and dv
constexpr int kCs = kCh + 1;  // padded row stride of the chunks
constexpr int kPs = kBN + 1;

// Odd row stride of the output accumulators (no bank conflict between the
// two rows a warp touches).
__host__ __device__ inline int OutStride(int dv) {
  return dv % 2 == 0 ? dv + 1 : dv;
}

inline size_t GenericSmemBytes(int dv) {
  return sizeof(float) * (static_cast<size_t>(kBM) * OutStride(dv) + kBM * kCs +
                          kBN * kCs + kBN * kCh + kBM * kPs);
}

__global__ void __launch_bounds__(kFlashThreads, 1)
    FlashGenericKernel(FlashArgs args, int64_t q_tiles) {
  extern __shared__ float smem[];
  const int d = args.batch.dim, dv = args.batch.dim_v;
  const int osd = OutStride(dv);
  float* os = smem;            // [kBM][osd]
  float* qc = os + kBM * osd;  // [kBM][kCs]
  float* kc = qc + kBM * kCs;  // [kBN][kCs]
  float* vc = kc + kBN * kCs;  // [kBN][kCh]
  float* ps = vc + kBN * kCh;  // [kBM][kPs]

  const int tid = threadIdx.x;
  const int tx = tid & 15, r = tid >> 4;  // this thread's row of the tile
  const SliceView sv = LoadSlice(args.batch, blockIdx.x);
  const bool causal = args.batch.causal;

  for (int64_t tile = blockIdx.y; tile < q_tiles; tile += gridDim.y) {
    const int64_t i0 = tile * kBM;
    if (i0 >= sv.nq) break;  // the same for every thread of the block
    const int64_t i1 = devmath::MinI(sv.nq, i0 + kBM);
    const int64_t i = i0 + r;
    __syncthreads();  // the previous tile's writers of `out` are done with os
    for (int idx = tid; idx < kBM * osd; idx += kFlashThreads) os[idx] = 0.0f;
    __syncthreads();  // zeroed by any thread, updated by each row's own
    devmath::SoftmaxState st = devmath::SoftmaxStart();

    const KeyRange kr =
        devmath::TileKeys(i0, i1, sv.offset, sv.nk, causal, args.half);
    for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += kBN) {
      float s[kBN / 16];
#pragma unroll
      for (int b = 0; b < kBN / 16; ++b) s[b] = 0.0f;
      for (int c0 = 0; c0 < d; c0 += kCh) {
        const int cw = d - c0 < kCh ? d - c0 : kCh;
        __syncthreads();  // previous chunk's readers are done
        for (int idx = tid; idx < kBM * cw; idx += kFlashThreads) {
          const int rr = idx / cw, c = idx - rr * cw;
          const int64_t ii = i0 + rr;
          qc[rr * kCs + c] = ii < i1 ? sv.q[ii * d + c0 + c] : 0.0f;
        }
        for (int idx = tid; idx < kBN * cw; idx += kFlashThreads) {
          const int rr = idx / cw, c = idx - rr * cw;
          const int64_t j = j0 + rr;
          kc[rr * kCs + c] = j < kr.hi ? sv.k[j * d + c0 + c] : 0.0f;
        }
        __syncthreads();
#pragma unroll 4
        for (int k = 0; k < cw; ++k) {
          const float qv = qc[r * kCs + k];
#pragma unroll
          for (int b = 0; b < kBN / 16; ++b)
            s[b] += qv * kc[(tx + 16 * b) * kCs + k];
        }
      }

      const bool full = TileFullyVisible(args, sv, kr, i0, j0, kBN);
      const float alpha = SoftmaxTileRow(s, args, sv, kr, full, i, i1, j0, tx,
                                         &st, ps + r * kPs);

      const int nj = static_cast<int>(devmath::MinI(kBN, kr.hi - j0));
      for (int c0 = 0; c0 < dv; c0 += kCh) {
        const int cw = dv - c0 < kCh ? dv - c0 : kCh;
        __syncthreads();  // ps written; previous chunk's readers of vc done
        for (int idx = tid; idx < kBN * cw; idx += kFlashThreads) {
          const int rr = idx / cw, c = idx - rr * cw;
          const int64_t j = j0 + rr;
          vc[rr * kCh + c] = j < kr.hi ? sv.v[j * dv + c0 + c] : 0.0f;
        }
        __syncthreads();
        // Each accumulator is owned by one thread and visited once per key
        // tile, so the rescale by alpha happens exactly once.
#pragma unroll
        for (int e = 0; e < kCh / 16; ++e) {
          const int c = tx + 16 * e;
          if (c >= cw) continue;
          float a = os[r * osd + c0 + c] * alpha;
          for (int j = 0; j < nj; ++j) a += ps[r * kPs + j] * vc[j * kCh + c];
          os[r * osd + c0 + c] = a;
        }
      }
    }

    // Each row's accumulators were written by the row's own 16 threads,
    // which now read them: no barrier needed between the two.
    if (i < i1) {
      const float inv = devmath::SoftmaxInverse(st.sum);
      for (int c = tx; c < dv; c += 16)
        sv.out[i * dv + c] = os[r * osd + c] * inv;
      CountEmptyRow(args, sv, i, st, tx);
    }
  }
}

}  // namespace

absl::Status LaunchFlashGeneric(const FlashArgs& args, int64_t max_seq_q,
                                cudaStream_t stream) {
  const size_t smem = GenericSmemBytes(args.batch.dim_v);
  SB_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      FlashGenericKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(smem)));
  const int64_t q_tiles = devmath::CeilDiv(max_seq_q, kBM);
  const dim3 grid(GridX(args.batch.total_slices), GridY(q_tiles));
  FlashGenericKernel<<<grid, kFlashThreads, smem, stream>>>(args, q_tiles);
  SB_CUDA_RETURN_IF_LAUNCH_FAILED("FlashGenericKernel");
  return absl::OkStatus();
}

}  // namespace cuda
}  // namespace scatterbrain
