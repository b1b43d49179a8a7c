// scatterbrain/kernels/cuda/features.cu — ComputeFeatures: positive random
// features in log space, the projection fused with the exponent so the
// N x m features are written once and never read back here.
//
// A block owns 32 rows of one slice and sweeps the r = m/2 projections in
// chunks of 64 (x and w staged through shared memory in chunks of 32
// columns). The log-scale of a row needs the largest |p| over all r
// projections before any feature can be written, so the projections are
// computed twice (max, then features) rather than stored: at m = 256 that
// is cheaper than writing and re-reading the N x m floats.
//  - queries: one kernel (both sweeps in the same block);
//  - keys: the sweep for the row scales, a per-slice max (kscale), then
//    the sweep that writes exp(+-p + base_j - kscale). Padding keys get 0.
// Conventions: kernels/cpu/lowrank.cc, through devmath (math.h).
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/arena.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_util.cuh"

namespace scatterbrain {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRows = 32;  // rows per block (ty, ty + 16)
constexpr int kProj = 64;  // projections per chunk (tx + 16b)
constexpr int kK = 32;     // columns of x per staging step
constexpr int kKs = kK + 1;

enum class Pass { kQuery, kKeyScale, kKeyWrite };

struct FeatureArgs {
  BatchArgs batch;
  const float* w;  // draws: [heads][r][dim]
  int r;
  int m;
  float* feat;          // [rows][m] (queries or keys)
  float* row_scale;     // queries: qscale; keys: pmax + base (-inf padding)
  const float* kscale;  // keys, write pass: [total_slices]
};

// p = x . w for the thread's 2 rows x 4 projections of chunk p0 (without
// sqrt(tau)); on the first chunk also the rows' partial |x|^2.
__device__ inline void Project(const float* x, int64_t rows_valid, int64_t r0,
                               const float* w, int r, int d, int p0, float* xs,
                               float* ws, float p[2][4], double sq[2],
                               bool want_sq) {
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) p[a][b] = 0.0f;
  for (int k0 = 0; k0 < d; k0 += kK) {
    __syncthreads();  // previous readers of xs / ws are done
    for (int idx = tid; idx < kRows * kK; idx += kThreads) {
      const int rr = idx / kK, k = idx - rr * kK;
      const int64_t row = r0 + rr;
      xs[rr * kKs + k] =
          (row < rows_valid && k0 + k < d) ? x[row * d + k0 + k] : 0.0f;
    }
    for (int idx = tid; idx < kProj * kK; idx += kThreads) {
      const int c = idx / kK, k = idx - c * kK;
      ws[c * kKs + k] = (p0 + c < r && k0 + k < d)
                            ? w[static_cast<int64_t>(p0 + c) * d + k0 + k]
                            : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kK; ++k) {
      const float x0 = xs[ty * kKs + k], x1 = xs[(ty + 16) * kKs + k];
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const float wv = ws[(tx + 16 * b) * kKs + k];
        p[0][b] += x0 * wv;
        p[1][b] += x1 * wv;
      }
    }
    if (want_sq) {
      for (int k = tx; k < kK; k += 16) {
        const double a = xs[ty * kKs + k], b = xs[(ty + 16) * kKs + k];
        sq[0] += a * a;
        sq[1] += b * b;
      }
    }
  }
}

__global__ void __launch_bounds__(kThreads, 2)
    FeatureKernel(FeatureArgs args, Pass pass, int64_t row_tiles) {
  __shared__ float xs[kRows * kKs];
  __shared__ float ws[kProj * kKs];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t s = blockIdx.x;
  const SliceView sv = LoadSlice(args.batch, s);
  const int d = args.batch.dim, r = args.r, m = args.m;
  const float tau = args.batch.tau;
  const float sqrt_tau = sqrtf(tau);
  const bool query = pass == Pass::kQuery;
  const float* x = query ? sv.q : sv.k;
  const int64_t rows = query ? sv.nq : sv.seq_k;
  const int64_t valid = query ? sv.nq : sv.nk;  // keys past nk are padding
  const int64_t g0 = query ? sv.q_row0 : sv.k_row0;
  const float* w = args.w + static_cast<int64_t>(sv.h) * r * d;

  for (int64_t tile = blockIdx.y; tile < row_tiles; tile += gridDim.y) {
    const int64_t r0 = tile * kRows;
    if (r0 >= rows) break;  // the same for every thread of the block
    float p[2][4];
    double sq[2] = {0.0, 0.0};
    float pmax[2] = {0.0f, 0.0f};
    // Sweep 1: the rows' largest |p| and |x|^2 (not for the key write pass,
    // whose shift comes from kscale and |x|^2 alone).
    if (pass != Pass::kKeyWrite) {
      for (int p0 = 0; p0 < r; p0 += kProj) {
        Project(x, valid, r0, w, r, d, p0, xs, ws, p, sq, p0 == 0);
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
          for (int b = 0; b < 4; ++b)
            if (p0 + tx + 16 * b < r)
              pmax[a] = fmaxf(pmax[a], fabsf(p[a][b] * sqrt_tau));
      }
    } else {
      // |x|^2 only: one staging sweep of the rows.
      Project(x, valid, r0, w, r, d, 0, xs, ws, p, sq, true);
    }
    float shift[2] = {0.0f, 0.0f};
#pragma unroll
    for (int a = 0; a < 2; ++a) {
      pmax[a] = HalfWarpMax(pmax[a]);
      const double t = LaneReduce<16>(sq[a], SumOp());
      const int64_t row = r0 + ty + 16 * a;
      const bool ok = row < valid;
      if (pass == Pass::kQuery) {
        shift[a] = -pmax[a];
        if (ok && tx == 0)
          args.row_scale[g0 + row] = devmath::QueryLogScale(pmax[a], t, tau, m);
      } else if (pass == Pass::kKeyScale) {
        if (row < rows && tx == 0)
          args.row_scale[g0 + row] =
              ok ? pmax[a] + devmath::KeyBase(t, tau) : devmath::NegInfinity();
      } else {
        shift[a] = devmath::KeyBase(t, tau) - args.kscale[s];
      }
    }
    if (pass == Pass::kKeyScale) continue;
    // Sweep 2: the features.
    for (int p0 = 0; p0 < r; p0 += kProj) {
      Project(x, valid, r0, w, r, d, p0, xs, ws, p, sq, false);
#pragma unroll
      for (int a = 0; a < 2; ++a) {
        const int64_t row = r0 + ty + 16 * a;
        if (row >= rows) continue;
        float* out = args.feat + (g0 + row) * m;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const int l = p0 + tx + 16 * b;
          if (l >= r) continue;
          const float pv = p[a][b] * sqrt_tau;
          const bool ok = row < valid;
          out[l] = ok ? devmath::FeatureValue(pv, shift[a]) : 0.0f;
          out[r + l] = ok ? devmath::FeatureValue(-pv, shift[a]) : 0.0f;
        }
      }
    }
  }
}

// kscale[s] = max of the slice's key row scales (0 when it has no valid key).
__global__ void __launch_bounds__(kThreads)
    KeyScaleKernel(BatchArgs batch, const float* row_scale, float* kscale) {
  __shared__ float part[kThreads / 32];
  const int64_t s = blockIdx.x;
  const int64_t lo = batch.k_row_offsets[s], hi = batch.k_row_offsets[s + 1];
  float mx = devmath::NegInfinity();
  for (int64_t g = lo + threadIdx.x; g < hi; g += kThreads)
    mx = fmaxf(mx, row_scale[g]);
  mx = LaneReduce<32>(mx, MaxOp());
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = mx;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 1; i < kThreads / 32; ++i) mx = fmaxf(mx, part[i]);
    kscale[s] = mx == devmath::NegInfinity() ? 0.0f : mx;
  }
}

}  // namespace

absl::Status ComputeFeatures(const DeviceBatch& batch, const LaunchContext& ctx,
                             DeviceFeatures* out) {
  const int m = batch.settings.num_features;
  if (m < 2 || m % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda features: num_features must be even and >= 2, got ", m));
  }
  if (batch.draws.features == nullptr || batch.draws.heads < 1) {
    return absl::InternalError(
        "cuda features: the feature draws are not uploaded");
  }
  out->m = m;
  SB_RETURN_IF_ERROR(
      AllocateIfNull(ctx.arena, batch.total_q_rows * m, &out->q));
  SB_RETURN_IF_ERROR(
      AllocateIfNull(ctx.arena, batch.total_q_rows, &out->qscale));
  SB_RETURN_IF_ERROR(
      AllocateIfNull(ctx.arena, batch.total_k_rows * m, &out->k));
  SB_RETURN_IF_ERROR(
      AllocateIfNull(ctx.arena, batch.total_slices, &out->kscale));
  if (batch.total_slices == 0) return absl::OkStatus();
  float* key_row_scale = nullptr;
  SB_RETURN_IF_ERROR(
      AllocateIfNull(ctx.arena, batch.total_k_rows, &key_row_scale));

  FeatureArgs a;
  a.batch = MakeBatchArgs(batch);
  a.w = batch.draws.features;
  a.r = m / 2;
  a.m = m;
  a.kscale = out->kscale;
  const dim3 block(kThreads);

  a.feat = out->q;
  a.row_scale = out->qscale;
  const int64_t q_tiles = devmath::CeilDiv(batch.max_seq_q, kRows);
  FeatureKernel<<<dim3(GridX(batch.total_slices), GridY(q_tiles)), block, 0,
                  ctx.stream>>>(a, Pass::kQuery, q_tiles);
  SB_CUDA_RETURN_IF_LAUNCH_FAILED("FeatureKernel(query)");

  a.feat = out->k;
  a.row_scale = key_row_scale;
  const int64_t k_tiles = devmath::CeilDiv(batch.max_seq_k, kRows);
  const dim3 kgrid(GridX(batch.total_slices), GridY(k_tiles));
  FeatureKernel<<<kgrid, block, 0, ctx.stream>>>(a, Pass::kKeyScale, k_tiles);
  SB_CUDA_RETURN_IF_LAUNCH_FAILED("FeatureKernel(key scale)");
  KeyScaleKernel<<<GridX(batch.total_slices), block, 0, ctx.stream>>>(
      a.batch, key_row_scale, out->kscale);
  SB_CUDA_RETURN_IF_LAUNCH_FAILED("KeyScaleKernel");
  FeatureKernel<<<kgrid, block, 0, ctx.stream>>>(a, Pass::kKeyWrite, k_tiles);
  SB_CUDA_RETURN_IF_LAUNCH_FAILED("FeatureKernel(key write)");
  return absl::OkStatus();
}

}  // namespace cuda
}  // namespace scatterbrain
