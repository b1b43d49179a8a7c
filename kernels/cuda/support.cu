// scatterbrain/kernels/cuda/support.cu — one pass of the sparse support:
// exact scores of query rows against the keys of their cluster (LSH) or
// window (local), accumulated online-softmax style, and, for Scatterbrain,
// the low-rank estimate phi(q) . phi(k) on the same pairs in the same loop
// (what the exact part replaces; combine.cc subtracts it from the low-rank
// total). A batched dense problem: one block per (slice, 16 query rows,
// 128 value columns); keys sorted by hash make each cluster contiguous.
//
// Pairs are masked as sparse.cc masks them: causal by original positions,
// earlier rounds' pairs (same chunk in round r < this one) and, with both
// supports, the window's pairs are left out, so every pair counts once.
#include <cuda_runtime.h>

#include "kernels/cuda/sparse_device.cuh"

namespace scatterbrain {
namespace cuda {
namespace sparse {
namespace {

constexpr int kRowsPerWarp = 4;
constexpr int kRows = kWarps * kRowsPerWarp;  // query rows per block
constexpr int kKeys = kWarpSize;              // keys per tile: one per lane
constexpr int kChunk = 32;                    // reduction dims per step

struct PassArgs {
  const SliceInfo* slices;
  const RowStats* stats_in;
  RowStats* stats_out;
  float* ev;
  float* lv;        // null without features
  const float* fq;  // [total_q_rows][m] or null
  const float* fk;  // [total_k_rows][m]
  int m, d, dv;
  float tau;
  bool causal;
  bool lsh, exclude_window;
  int64_t half, bucket;
  int round;
  int64_t total_q_rows, total_k_rows;
  const int32_t* qorder;
  const int32_t* korder;
  const int32_t* qchunk;
  const int32_t* kchunk;
};

// Adds sum_c a_row[c] * b_key[c] over `n` columns for the warp's rows and
// this lane's key, staging 32 columns of the block's rows and keys at a time
// in shared memory. Contains __syncthreads.
__device__ __forceinline__ void TileDots(
    const float* a_base, int64_t a_ld, const int32_t* rows, const float* b_base,
    int64_t b_ld, const int32_t* keys, int n, float (&qs)[kRows][kChunk],
    float (&ks)[kKeys][kChunk + 1], float (&acc)[kRowsPerWarp]) {
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  for (int c0 = 0; c0 < n; c0 += kChunk) {
    __syncthreads();  // the previous step's reads are done
    for (int e = threadIdx.x; e < kKeys * kChunk; e += kThreads) {
      const int kk = e / kChunk, cc = e % kChunk;
      const int32_t j = keys[kk];
      ks[kk][cc] = (j >= 0 && c0 + cc < n) ? b_base[j * b_ld + c0 + cc] : 0.0f;
    }
    for (int e = threadIdx.x; e < kRows * kChunk; e += kThreads) {
      const int r = e / kChunk, cc = e % kChunk;
      const int32_t i = rows[r];
      qs[r][cc] = (i >= 0 && c0 + cc < n) ? a_base[i * a_ld + c0 + cc] : 0.0f;
    }
    __syncthreads();
    const float* q = qs[warp * kRowsPerWarp];
#pragma unroll 4
    for (int cc = 0; cc < kChunk; ++cc) {
      const float kv = ks[lane][cc];
#pragma unroll
      for (int k = 0; k < kRowsPerWarp; ++k) acc[k] += q[k * kChunk + cc] * kv;
    }
  }
}

template <int kVecs>  // value columns per lane: 32 * kVecs per block
__global__ void __launch_bounds__(kThreads, 2) SupportPassKernel(PassArgs a) {
  __shared__ float qs[kRows][kChunk];
  __shared__ float ks[kKeys][kChunk + 1];
  __shared__ int32_t row_i[kRows];      // local query index, -1: none
  __shared__ int32_t row_chunk[kRows];  // its chunk this round (LSH)
  __shared__ int32_t key_j[kKeys];      // local key index, -1: none

  const int64_t s = blockIdx.x;
  const SliceInfo si = a.slices[s];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int vcol0 = blockIdx.z * kWarpSize * kVecs;
  const bool features = a.fq != nullptr;
  const int64_t nk = si.nk;
  const int64_t nchunks = a.lsh ? NumChunks(nk, a.bucket) : 0;

  for (int64_t tile = blockIdx.y; tile * kRows < si.nq; tile += gridDim.y) {
    const int64_t p0 = tile * kRows;
    const int nrows = static_cast<int>(MinI(kRows, si.nq - p0));
    __syncthreads();  // the previous tile is done with the row tables
    if (threadIdx.x < kRows) {
      const int r = threadIdx.x;
      int32_t i = -1, t = -1;
      if (r < nrows) {
        i = a.lsh ? a.qorder[si.q_row0 + p0 + r] : static_cast<int32_t>(p0 + r);
        if (a.lsh) {
          t = a.qchunk[a.round * a.total_q_rows + si.q_row0 + i];
          if (t < 0 || t >= nchunks) t = -1;  // no chunk: writes only
        }
      }
      row_i[r] = i;
      row_chunk[r] = t;
    }
    __syncthreads();

    // This warp's rows: their state in registers for the whole tile.
    int32_t my_i[kRowsPerWarp];
    RowStats st[kRowsPerWarp];
    float ev[kRowsPerWarp][kVecs], lv[kRowsPerWarp][kVecs];
    for (int k = 0; k < kRowsPerWarp; ++k) {
      my_i[k] = row_i[warp * kRowsPerWarp + k];
      st[k] = RowStats{NegInfinity(), 0.0f, 0.0f, 0};
      for (int u = 0; u < kVecs; ++u) ev[k][u] = lv[k][u] = 0.0f;
      if (my_i[k] < 0) continue;
      const int64_t g = si.q_row0 + my_i[k];
      st[k] = a.stats_in[g];
      for (int u = 0; u < kVecs; ++u) {
        const int c = vcol0 + lane + kWarpSize * u;
        if (c >= a.dv) continue;
        ev[k][u] = a.ev[g * a.dv + c];
        if (features) lv[k][u] = a.lv[g * a.dv + c];
      }
    }

    // Segments of keys: LSH, each chunk the block's rows meet (ascending,
    // as the rows are sorted by chunk); local, the rows' window.
    int64_t chunk = -1, b0 = 0, b1 = 0;
    if (a.lsh) {
      for (int r = 0; r < nrows; ++r)
        if (row_chunk[r] >= 0) {
          chunk = row_chunk[r];
          break;
        }
    } else {
      LocalKeyRange(p0, p0 + nrows, nk, si.offset, a.half, a.causal, &b0, &b1);
    }
    while (a.lsh ? chunk >= 0 : b0 < b1) {
      if (a.lsh) {
        b0 = ChunkStart(chunk, nk, nchunks);
        b1 = ChunkStart(chunk + 1, nk, nchunks);
      }
      bool active[kRowsPerWarp];
      for (int k = 0; k < kRowsPerWarp; ++k)
        active[k] = my_i[k] >= 0 &&
                    (!a.lsh || row_chunk[warp * kRowsPerWarp + k] == chunk);
      for (int64_t kt = b0; kt < b1; kt += kKeys) {
        const int nkeys = static_cast<int>(MinI(kKeys, b1 - kt));
        __syncthreads();  // the previous tile's key table is done
        if (threadIdx.x < kKeys) {
          int32_t j = -1;
          if (threadIdx.x < nkeys)
            j = a.lsh ? a.korder[si.k_row0 + kt + threadIdx.x]
                      : static_cast<int32_t>(kt + threadIdx.x);
          key_j[threadIdx.x] = j;
        }
        __syncthreads();
        const int32_t j = key_j[lane];
        float sc[kRowsPerWarp] = {}, fv[kRowsPerWarp] = {};
        TileDots(si.q, a.d, row_i, si.k, a.d, key_j, a.d, qs, ks, sc);
        if (features)
          TileDots(a.fq + si.q_row0 * a.m, a.m, row_i, a.fk + si.k_row0 * a.m,
                   a.m, key_j, a.m, qs, ks, fv);

        float p[kRowsPerWarp], fo[kRowsPerWarp];
        bool any = false;
#pragma unroll
        for (int k = 0; k < kRowsPerWarp; ++k) {
          bool ok = active[k] && j >= 0;
          if (ok) {
            const int64_t i = my_i[k];
            ok = CausalOk(i, j, si.offset, a.causal);
            if (!a.lsh) {
              ok = ok && InWindow(i, j, si.offset, a.half);
            } else {
              if (a.exclude_window && InWindow(i, j, si.offset, a.half))
                ok = false;
              for (int r = 0; ok && r < a.round; ++r)
                if (a.qchunk[r * a.total_q_rows + si.q_row0 + i] ==
                    a.kchunk[r * a.total_k_rows + si.k_row0 + j])
                  ok = false;
            }
          }
          const float logit = a.tau * sc[k];
          const float mx = WarpMax(ok ? logit : NegInfinity());
          const int n_ok = __popc(__ballot_sync(kFullMask, ok));
          p[k] = fo[k] = 0.0f;
          if (n_ok == 0) continue;  // warp-uniform
          any = true;
          RowStats& t = st[k];
          t.count += n_ok;
          if (mx > t.emax) {
            if (t.emax > NegInfinity()) {
              const float scale = expf(t.emax - mx);
              t.e1 *= scale;
              for (int u = 0; u < kVecs; ++u) ev[k][u] *= scale;
            }
            t.emax = mx;
          }
          p[k] = ok ? expf(logit - t.emax) : 0.0f;
          t.e1 += WarpSum(p[k]);
          if (features) {
            fo[k] = ok ? fv[k] : 0.0f;
            t.f1 += WarpSum(fo[k]);
          }
        }
        if (!any) continue;  // warp-uniform
        for (int jj = 0; jj < nkeys; ++jj) {
          const float* vrow = si.v + int64_t{key_j[jj]} * a.dv;
          float vv[kVecs];
          for (int u = 0; u < kVecs; ++u) {
            const int c = vcol0 + lane + kWarpSize * u;
            vv[u] = c < a.dv ? vrow[c] : 0.0f;
          }
#pragma unroll
          for (int k = 0; k < kRowsPerWarp; ++k) {
            const float pk = __shfl_sync(kFullMask, p[k], jj);
            const float fk = __shfl_sync(kFullMask, fo[k], jj);
            for (int u = 0; u < kVecs; ++u) {
              ev[k][u] += pk * vv[u];
              lv[k][u] += fk * vv[u];
            }
          }
        }
      }
      if (a.lsh) {
        int64_t next = -1;
        for (int r = 0; r < nrows; ++r)
          if (row_chunk[r] > chunk) {
            next = row_chunk[r];
            break;
          }
        chunk = next;
      } else {
        b0 = b1;  // one segment
      }
    }

    for (int k = 0; k < kRowsPerWarp; ++k) {
      if (my_i[k] < 0) continue;
      const int64_t g = si.q_row0 + my_i[k];
      if (blockIdx.z == 0 && lane == 0) a.stats_out[g] = st[k];
      for (int u = 0; u < kVecs; ++u) {
        const int c = vcol0 + lane + kWarpSize * u;
        if (c >= a.dv) continue;
        a.ev[g * a.dv + c] = ev[k][u];
        if (features) a.lv[g * a.dv + c] = lv[k][u];
      }
    }
  }
}

__global__ void InitAccKernel(RowStats* stats, int64_t rows) {
  const int64_t g = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (g < rows) stats[g] = RowStats{NegInfinity(), 0.0f, 0.0f, 0};
}

}  // namespace

absl::Status TakeSupportAcc(ScratchPlan& plan, const BatchSizes& n, int dim_v,
                            bool features, SupportAcc* out) {
  SB_RETURN_IF_ERROR(plan.Take(n.q_rows, &out->stats));
  SB_RETURN_IF_ERROR(plan.Take(n.q_rows, &out->spare));
  SB_RETURN_IF_ERROR(plan.Take(n.q_rows * dim_v, &out->ev));
  if (features) SB_RETURN_IF_ERROR(plan.Take(n.q_rows * dim_v, &out->lv));
  return absl::OkStatus();
}

absl::Status LaunchInitSupportAcc(const DeviceBatch& batch,
                                  const LaunchContext& ctx,
                                  const SupportAcc& acc) {
  const int64_t rows = batch.total_q_rows;
  const size_t bytes = static_cast<size_t>(rows * batch.settings.dim_v) * 4;
  SB_SPARSE_CUDA(cudaMemsetAsync(acc.ev, 0, bytes, ctx.stream), "zero ev");
  if (acc.lv != nullptr)
    SB_SPARSE_CUDA(cudaMemsetAsync(acc.lv, 0, bytes, ctx.stream), "zero lv");
  InitAccKernel<<<static_cast<unsigned>((rows + 255) / 256), 256, 0,
                  ctx.stream>>>(acc.stats, rows);
  SB_SPARSE_LAUNCHED("InitAccKernel");
  return absl::OkStatus();
}

absl::Status LaunchSupportPass(const DeviceBatch& batch,
                               const LaunchContext& ctx, const Slices& slices,
                               const DeviceFeatures* features,
                               const PassSpec& pass, SupportAcc* acc) {
  const AttentionParams& p = batch.settings;
  PassArgs a;
  a.slices = slices.info;
  a.stats_in = acc->stats;
  a.stats_out = acc->spare;
  a.ev = acc->ev;
  a.lv = features != nullptr ? acc->lv : nullptr;
  a.fq = features != nullptr ? features->q : nullptr;
  a.fk = features != nullptr ? features->k : nullptr;
  a.m = features != nullptr ? features->m : 0;
  a.d = static_cast<int>(p.dim);
  a.dv = static_cast<int>(p.dim_v);
  a.tau = EffectiveScale(p);
  a.causal = p.causal;
  a.lsh = pass.lsh;
  a.exclude_window = pass.exclude_window;
  a.half = p.window / 2;
  a.bucket = p.bucket_size;
  a.round = pass.round;
  a.total_q_rows = batch.total_q_rows;
  a.total_k_rows = batch.total_k_rows;
  a.qorder = pass.qorder;
  a.korder = pass.korder;
  a.qchunk = pass.qchunk;
  a.kchunk = pass.kchunk;
  const int vecs = a.dv <= 32 ? 1 : (a.dv <= 64 ? 2 : 4);
  const int cols = kWarpSize * vecs;
  const dim3 grid(static_cast<unsigned>(batch.total_slices),
                  GridY((int64_t{batch.max_seq_q} + kRows - 1) / kRows),
                  static_cast<unsigned>((a.dv + cols - 1) / cols));
  if (vecs == 1) {
    SupportPassKernel<1><<<grid, kThreads, 0, ctx.stream>>>(a);
  } else if (vecs == 2) {
    SupportPassKernel<2><<<grid, kThreads, 0, ctx.stream>>>(a);
  } else {
    SupportPassKernel<4><<<grid, kThreads, 0, ctx.stream>>>(a);
  }
  SB_SPARSE_LAUNCHED("SupportPassKernel");
  RowStats* t = acc->stats;
  acc->stats = acc->spare;
  acc->spare = t;
  return absl::OkStatus();
}

}  // namespace sparse
}  // namespace cuda
}  // namespace scatterbrain
