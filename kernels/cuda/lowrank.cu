// scatterbrain/kernels/cuda/lowrank.cu — ComputeLowRank: the low-rank sums
// phi(q_i) . sum_j phi(k_j) [v_j, 1] in units of exp(qscale_i + kscale)
// (kernels/cpu/lowrank.cc).
//
// Non-causal: per request, strided-batched cuBLAS over its batch x heads
// slices: Z = phi(K)^T V and z = phi(K)^T 1, then num = phi(Q) Z, den =
// phi(Q) z. Padding keys' features are 0, so whole seq_k ranges are summed.
//
// Causal (chunked scan, devmath::ChunkLayout): the keys of a slice are cut
// into chunks of 64 aligned with the query blocks of 64 rows; (1) every
// chunk's sums E_k = phi(K_k)^T [V_k, 1] in parallel, (2) an inclusive scan
// over the chunks in place (P_k = E_0 + ... + E_k), (3) per query block t:
// phi(Q_t) P_{PrefixChunk(t)} plus, row by row, the masked products with
// the fewer than 64 keys of the next chunk the row sees.
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/arena.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/gemm.h"

namespace scatterbrain {
namespace cuda {
namespace {

using devmath::ChunkLayout;
using devmath::KeyRange;

constexpr int kThreads = 256;
constexpr int kW = static_cast<int>(devmath::kLowRankChunk);  // = block rows
constexpr int kT = 64;  // feature (l) and value-column tiles
constexpr int kL = 32;  // features per staging step of the apply kernel

struct ScanArgs {
  BatchArgs batch;
  const float* fq;  // [total_q_rows][m]
  const float* fk;  // [total_k_rows][m]
  float* state;     // [slots][m * (dv + 1)]: Sv [m][dv], then S1 [m]
  float* num;       // [total_q_rows][dv]
  float* den;       // [total_q_rows]
  int m;
};

__device__ inline int64_t StateStride(int m, int dv) {
  return static_cast<int64_t>(m) * (dv + 1);
}

// (1) E_k[l0 .. l0+64)[c0 .. c0+64) for every chunk, and E1 with c0 = 0.
__global__ void __launch_bounds__(kThreads)
    ChunkSumKernel(ScanArgs a, int64_t ytiles, int ltiles, int ctiles) {
  __shared__ float fk[kW * kT];  // [key][l]
  __shared__ float vs[kW * kT];  // [key][c]
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t s = blockIdx.x;
  const SliceView sv = LoadSlice(a.batch, s);
  const int m = a.m, dv = a.batch.dim_v;
  const ChunkLayout lay = devmath::MakeChunkLayout(sv.nq, sv.seq_k, kW);
  for (int64_t y = blockIdx.y; y < ytiles; y += gridDim.y) {
    const int64_t k = y / (ltiles * ctiles);
    if (k >= lay.count) break;  // y grows with k: the rest is past it too
    const int rem = static_cast<int>(y - k * ltiles * ctiles);
    const int l0 = (rem / ctiles) * kT, c0 = (rem % ctiles) * kT;
    const KeyRange kr = devmath::ChunkKeys(lay, k, sv.seq_k);
    const int nj = static_cast<int>(kr.hi - kr.lo);
    __syncthreads();  // previous tile's readers are done
    for (int idx = tid; idx < kW * kT; idx += kThreads) {
      const int jj = idx / kT, cc = idx - jj * kT;
      const int64_t j = kr.lo + jj;
      const bool row_ok = jj < nj;
      fk[idx] =
          row_ok && l0 + cc < m ? a.fk[(sv.k_row0 + j) * m + l0 + cc] : 0.0f;
      vs[idx] = row_ok && c0 + cc < dv ? sv.v[j * dv + c0 + cc] : 0.0f;
    }
    __syncthreads();
    float acc[4][4] = {};
    float e1 = 0.0f;
    const bool do_e1 = c0 == 0 && tx < 4;  // row ty + 16 tx of E1
    for (int jj = 0; jj < nj; ++jj) {
      float f[4], v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        f[i] = fk[jj * kT + ty + 16 * i];
        v[i] = vs[jj * kT + tx + 16 * i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[i][b] += f[i] * v[b];
      if (do_e1) e1 += fk[jj * kT + ty + 16 * tx];
    }
    float* st =
        a.state + devmath::ChunkSlot(s, sv.k_row0, k, kW) * StateStride(m, dv);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int l = l0 + ty + 16 * i;
      if (l >= m) continue;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int c = c0 + tx + 16 * b;
        if (c < dv) st[static_cast<int64_t>(l) * dv + c] = acc[i][b];
      }
    }
    const int l1 = l0 + ty + 16 * tx;
    if (do_e1 && l1 < m) st[static_cast<int64_t>(m) * dv + l1] = e1;
  }
}

// (2) In place: chunk k becomes the sum of chunks 0..k.
__global__ void __launch_bounds__(kThreads)
    ChunkScanKernel(ScanArgs a, int64_t etiles) {
  const int64_t s = blockIdx.x;
  const SliceView sv = LoadSlice(a.batch, s);
  const ChunkLayout lay = devmath::MakeChunkLayout(sv.nq, sv.seq_k, kW);
  const int64_t stride = StateStride(a.m, a.batch.dim_v);
  for (int64_t y = blockIdx.y; y < etiles; y += gridDim.y) {
    const int64_t e = y * kThreads + threadIdx.x;
    if (e >= stride) continue;
    float run = 0.0f;
    for (int64_t k = 0; k < lay.count; ++k) {
      float* p = a.state + devmath::ChunkSlot(s, sv.k_row0, k, kW) * stride + e;
      run += *p;
      *p = run;
    }
  }
}

// (3) num / den of query block t, value columns [c0, c0 + 64).
__global__ void __launch_bounds__(kThreads)
    ChunkApplyKernel(ScanArgs a, int64_t ytiles, int ctiles) {
  __shared__ float fq[kW * (kL + 1)];   // [row][l]
  __shared__ float buf[kW * (kW + 1)];  // Sv + S1 | fk | vs, by phase
  __shared__ float ps[kW * (kW + 1)];   // [row][key]
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t s = blockIdx.x;
  const SliceView sv = LoadSlice(a.batch, s);
  const int m = a.m, dv = a.batch.dim_v;
  const ChunkLayout lay = devmath::MakeChunkLayout(sv.nq, sv.seq_k, kW);
  const int64_t stride = StateStride(m, dv);
  for (int64_t y = blockIdx.y; y < ytiles; y += gridDim.y) {
    const int64_t t = y / ctiles;
    const int c0 = static_cast<int>(y - t * ctiles) * kT;
    const int64_t i0 = t * kW;
    if (i0 >= sv.nq) break;  // y grows with t
    const int64_t i1 = devmath::MinI(sv.nq, i0 + kW);
    const bool do_den = c0 == 0 && tx < 4;  // row ty + 16 tx of den
    float acc[4][4] = {};
    float den = 0.0f;

    // Whole chunks [0, k]: phi(Q_t) P_k.
    const int64_t k = devmath::PrefixChunk(lay, t);
    if (k >= 0) {
      const float* st =
          a.state + devmath::ChunkSlot(s, sv.k_row0, k, kW) * stride;
      float* svs = buf;            // [kL][kT]
      float* s1s = buf + kL * kT;  // [kL]
      for (int l0 = 0; l0 < m; l0 += kL) {
        __syncthreads();
        for (int idx = tid; idx < kW * kL; idx += kThreads) {
          const int rr = idx / kL, ll = idx - rr * kL;
          const int64_t i = i0 + rr;
          fq[rr * (kL + 1) + ll] = i < i1 && l0 + ll < m
                                       ? a.fq[(sv.q_row0 + i) * m + l0 + ll]
                                       : 0.0f;
        }
        for (int idx = tid; idx < kL * kT; idx += kThreads) {
          const int ll = idx / kT, cc = idx - ll * kT;
          svs[idx] = l0 + ll < m && c0 + cc < dv
                         ? st[static_cast<int64_t>(l0 + ll) * dv + c0 + cc]
                         : 0.0f;
        }
        if (tid < kL)
          s1s[tid] =
              l0 + tid < m ? st[static_cast<int64_t>(m) * dv + l0 + tid] : 0.0f;
        __syncthreads();
        for (int ll = 0; ll < kL; ++ll) {
          float f[4], v[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            f[i] = fq[(ty + 16 * i) * (kL + 1) + ll];
            v[i] = svs[ll * kT + tx + 16 * i];
          }
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int b = 0; b < 4; ++b) acc[i][b] += f[i] * v[b];
          if (do_den) den += fq[(ty + 16 * tx) * (kL + 1) + ll] * s1s[ll];
        }
      }
    }

    // The rest of each row's keys: [KeyLimit(i0), KeyLimit(i)), < 64 keys.
    const int64_t lo = devmath::KeyLimit(i0, sv.offset, sv.seq_k, true);
    const int64_t hi = devmath::KeyLimit(i1 - 1, sv.offset, sv.seq_k, true);
    if (hi > lo) {
      float p[4][4] = {};
      float* fk = buf;  // [key][kL + 1]
      for (int l0 = 0; l0 < m; l0 += kL) {
        __syncthreads();
        for (int idx = tid; idx < kW * kL; idx += kThreads) {
          const int rr = idx / kL, ll = idx - rr * kL;
          const int64_t i = i0 + rr, j = lo + rr;
          const bool lok = l0 + ll < m;
          fq[rr * (kL + 1) + ll] =
              i < i1 && lok ? a.fq[(sv.q_row0 + i) * m + l0 + ll] : 0.0f;
          fk[rr * (kL + 1) + ll] =
              j < hi && lok ? a.fk[(sv.k_row0 + j) * m + l0 + ll] : 0.0f;
        }
        __syncthreads();
        for (int ll = 0; ll < kL; ++ll) {
          float f[4], g[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            f[i] = fq[(ty + 16 * i) * (kL + 1) + ll];
            g[i] = fk[(tx + 16 * i) * (kL + 1) + ll];
          }
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int b = 0; b < 4; ++b) p[i][b] += f[i] * g[b];
        }
      }
      __syncthreads();  // fk (buf) is read no more: it becomes vs
      float* vs = buf;  // [key][kT]
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t row = i0 + ty + 16 * i;
        const int64_t lim = devmath::KeyLimit(row, sv.offset, sv.seq_k, true);
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const int64_t j = lo + tx + 16 * b;
          ps[(ty + 16 * i) * (kW + 1) + tx + 16 * b] =
              row < i1 && j < lim ? p[i][b] : 0.0f;
        }
      }
      for (int idx = tid; idx < kW * kT; idx += kThreads) {
        const int jj = idx / kT, cc = idx - jj * kT;
        const int64_t j = lo + jj;
        vs[idx] = j < hi && c0 + cc < dv ? sv.v[j * dv + c0 + cc] : 0.0f;
      }
      __syncthreads();
      const int nj = static_cast<int>(hi - lo);
      for (int jj = 0; jj < nj; ++jj) {
        float v[4];
#pragma unroll
        for (int b = 0; b < 4; ++b) v[b] = vs[jj * kT + tx + 16 * b];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float w = ps[(ty + 16 * i) * (kW + 1) + jj];
#pragma unroll
          for (int b = 0; b < 4; ++b) acc[i][b] += w * v[b];
        }
        if (do_den) den += ps[(ty + 16 * tx) * (kW + 1) + jj];
      }
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = i0 + ty + 16 * i;
      if (row >= i1) continue;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int c = c0 + tx + 16 * b;
        if (c < dv) a.num[(sv.q_row0 + row) * dv + c] = acc[i][b];
      }
    }
    const int64_t drow = i0 + ty + 16 * tx;
    if (do_den && drow < i1) a.den[sv.q_row0 + drow] = den;
  }
}

__global__ void FillKernel(float* x, int64_t n, float value) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = value;
}

absl::Status NonCausal(const DeviceBatch& batch, const LaunchContext& ctx,
                       const DeviceFeatures& f, DeviceLowRank* out) {
  const int64_t m = f.m, dv = batch.settings.dim_v;
  const int64_t stride = m * (dv + 1);
  float* z = nullptr;
  float* ones = nullptr;
  SB_RETURN_IF_ERROR(
      AllocateIfNull(ctx.arena, batch.total_slices * stride, &z));
  SB_RETURN_IF_ERROR(AllocateIfNull(ctx.arena, batch.max_seq_k, &ones));
  FillKernel<<<GridX(devmath::CeilDiv(batch.max_seq_k, kThreads)), kThreads, 0,
               ctx.stream>>>(ones, batch.max_seq_k, 1.0f);
  SB_CUDA_RETURN_IF_LAUNCH_FAILED("FillKernel");
  for (int i = 0; i < batch.n; ++i) {
    const DeviceRequest& r = batch.host_requests[i];
    const int64_t s0 = batch.host_slice_offsets[i];
    const int64_t slices = batch.host_slice_offsets[i + 1] - s0;
    const int64_t nq = r.seq_q, nk = r.seq_k;
    const float* fk = f.k + batch.host_k_row_offsets[s0] * m;
    const float* fq = f.q + batch.host_q_row_offsets[s0] * m;
    float* zv = z + s0 * stride;
    float* z1 = zv + m * dv;
    float* num = out->num + batch.host_q_row_offsets[s0] * dv;
    float* den = out->den + batch.host_q_row_offsets[s0];
    // Z = phi(K)^T V, z = phi(K)^T 1 (m x dv, m x 1 per slice).
    SB_RETURN_IF_ERROR(GemmStridedBatched(ctx.cublas, true, false, m, dv, nk,
                                          1.0f, fk, m, nk * m, r.v, dv, nk * dv,
                                          0.0f, zv, dv, stride, slices));
    SB_RETURN_IF_ERROR(GemmStridedBatched(ctx.cublas, true, false, m, 1, nk,
                                          1.0f, fk, m, nk * m, ones, 1, 0, 0.0f,
                                          z1, 1, stride, slices));
    // num = phi(Q) Z, den = phi(Q) z.
    SB_RETURN_IF_ERROR(GemmStridedBatched(ctx.cublas, false, false, nq, dv, m,
                                          1.0f, fq, m, nq * m, zv, dv, stride,
                                          0.0f, num, dv, nq * dv, slices));
    SB_RETURN_IF_ERROR(GemmStridedBatched(ctx.cublas, false, false, nq, 1, m,
                                          1.0f, fq, m, nq * m, z1, 1, stride,
                                          0.0f, den, 1, nq, slices));
  }
  return absl::OkStatus();
}

absl::Status Causal(const DeviceBatch& batch, const LaunchContext& ctx,
                    const DeviceFeatures& f, DeviceLowRank* out) {
  const int m = f.m, dv = static_cast<int>(batch.settings.dim_v);
  const int64_t stride = static_cast<int64_t>(m) * (dv + 1);
  ScanArgs a;
  a.batch = MakeBatchArgs(batch);
  a.fq = f.q;
  a.fk = f.k;
  a.num = out->num;
  a.den = out->den;
  a.m = m;
  a.state = nullptr;
  const int64_t slots =
      devmath::ChunkSlots(batch.total_slices, batch.total_k_rows, kW);
  SB_RETURN_IF_ERROR(AllocateIfNull(ctx.arena, slots * stride, &a.state));
  int64_t max_chunks = 1;
  for (const DeviceRequest& r : batch.host_requests) {
    max_chunks = devmath::MaxI(
        max_chunks, devmath::MakeChunkLayout(r.seq_q, r.seq_k, kW).count);
  }
  const int ltiles = static_cast<int>(devmath::CeilDiv(m, kT));
  const int ctiles = static_cast<int>(devmath::CeilDiv(dv, kT));
  const unsigned gx = GridX(batch.total_slices);

  const int64_t sum_tiles = max_chunks * ltiles * ctiles;
  ChunkSumKernel<<<dim3(gx, GridY(sum_tiles)), kThreads, 0, ctx.stream>>>(
      a, sum_tiles, ltiles, ctiles);
  SB_CUDA_RETURN_IF_LAUNCH_FAILED("ChunkSumKernel");
  const int64_t etiles = devmath::CeilDiv(stride, kThreads);
  ChunkScanKernel<<<dim3(gx, GridY(etiles)), kThreads, 0, ctx.stream>>>(a,
                                                                        etiles);
  SB_CUDA_RETURN_IF_LAUNCH_FAILED("ChunkScanKernel");
  const int64_t apply_tiles = devmath::CeilDiv(batch.max_seq_q, kW) * ctiles;
  ChunkApplyKernel<<<dim3(gx, GridY(apply_tiles)), kThreads, 0, ctx.stream>>>(
      a, apply_tiles, ctiles);
  SB_CUDA_RETURN_IF_LAUNCH_FAILED("ChunkApplyKernel");
  return absl::OkStatus();
}

}  // namespace

absl::Status ComputeLowRank(const DeviceBatch& batch, const LaunchContext& ctx,
                            const DeviceFeatures& features,
                            DeviceLowRank* out) {
  if (features.m < 2 || features.q == nullptr || features.k == nullptr) {
    return absl::InternalError("cuda low-rank: features are not computed");
  }
  SB_RETURN_IF_ERROR(AllocateIfNull(
      ctx.arena, batch.total_q_rows * batch.settings.dim_v, &out->num));
  SB_RETURN_IF_ERROR(AllocateIfNull(ctx.arena, batch.total_q_rows, &out->den));
  if (batch.total_slices == 0) return absl::OkStatus();
  return batch.settings.causal ? Causal(batch, ctx, features, out)
                               : NonCausal(batch, ctx, features, out);
}

}  // namespace cuda
}  // namespace scatterbrain
