// scatterbrain/kernels/cuda/calibrate.cu — the calibrated Scatterbrain
// combination (combine.cc): per slice, `calibration_rows` query rows drawn
// as SampleRows draws them are computed exactly on the device; each of the
// candidate estimators is scored on them (leave-one-out, jackknife-shrunk
// alpha: sparse_math.h's SelectCandidate), the best one writes every row,
// and the sampled rows get their exact values.
#include <cuda_runtime.h>

#include "kernels/cuda/sparse_device.cuh"
#include "kernels/random_draws.h"
#include "kernels/validate.h"

namespace scatterbrain {
namespace cuda {
namespace sparse {
namespace {

constexpr int kKeyTile = kThreads;  // keys per step of an exact row
constexpr int kColsPerThread = (kMaxDim + kThreads - 1) / kThreads;

struct CalArgs {
  CombineView v;
  int d, rows;  // rows: calibration_rows (C)
  float tau;
  uint64_t seed, purpose;
  CalibrationWork w;
  SparseProbe probe;
};

// Block per slice: its sampled rows, sorted.
__global__ void SampleKernel(CalArgs a) {
  const int64_t s = blockIdx.x;
  const SliceInfo si = a.v.slices[s];
  if (threadIdx.x == 0)
    a.w.nrows[s] = static_cast<int32_t>(MinI(a.rows, si.nq));
  BlockSampleRows<kThreads>(a.seed, a.purpose, si.b, si.h, si.nq, a.rows,
                            SliceWords(a.w.bits, si.q_row0, s),
                            a.w.rows + s * a.rows);
}

// Block per (slice, sampled row): the exact row (online softmax over the
// keys it sees, in double), then <candidate, exact> and <candidate,
// candidate> for every candidate, and <exact, exact>.
__global__ void __launch_bounds__(kThreads, 2) ExactRowKernel(CalArgs a) {
  __shared__ float qrow[kMaxDim];
  __shared__ float logit[kKeyTile];
  __shared__ double weight[kKeyTile];
  const int64_t s = blockIdx.x;
  const int64_t r = blockIdx.y;
  const SliceInfo si = a.v.slices[s];
  const CombineView& v = a.v;
  if (r >= a.w.nrows[s]) return;
  const int64_t slot = s * a.rows + r;
  const int64_t i = a.w.rows[slot];
  const int64_t g = si.q_row0 + i;
  const RowInputs in = CombineRow(v, si, s, i);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  if (in.lim <= 0) {  // sees no key: not used (zeros, as the CPU's vectors)
    for (int k = threadIdx.x; k < kNumCandidates; k += kThreads)
      a.w.co[slot * kNumCandidates + k] = a.w.cc[slot * kNumCandidates + k] = 0;
    if (threadIdx.x == 0) {
      a.w.oo[slot] = 0;
      a.w.used[slot] = 0;
    }
    return;
  }
  for (int c = threadIdx.x; c < a.d; c += kThreads) qrow[c] = si.q[i * a.d + c];
  double run_max = -HUGE_VAL, run_sum = 0;
  double acc[kColsPerThread];
#pragma unroll
  for (int u = 0; u < kColsPerThread; ++u) acc[u] = 0;
  __syncthreads();
  for (int64_t j0 = 0; j0 < in.lim; j0 += kKeyTile) {
    const int n = static_cast<int>(MinI(kKeyTile, in.lim - j0));
    for (int t = warp; t < n; t += kWarps) {
      const float* k = si.k + (j0 + t) * a.d;
      float dot = 0.0f;
      for (int c = lane; c < a.d; c += kWarpSize) dot += qrow[c] * k[c];
      dot = WarpSum(dot);
      if (lane == 0) logit[t] = a.tau * dot;
    }
    __syncthreads();
    double tile_max = -HUGE_VAL;
    for (int t = 0; t < n; ++t) tile_max = fmax(tile_max, double(logit[t]));
    const double new_max = fmax(run_max, tile_max);
    const double scale = run_max > -HUGE_VAL ? exp(run_max - new_max) : 0.0;
    run_sum *= scale;
#pragma unroll
    for (int u = 0; u < kColsPerThread; ++u) acc[u] *= scale;
    if (threadIdx.x < n)
      weight[threadIdx.x] = exp(double(logit[threadIdx.x]) - new_max);
    __syncthreads();
    for (int t = 0; t < n; ++t) run_sum += weight[t];
#pragma unroll
    for (int u = 0; u < kColsPerThread; ++u) {
      const int c = threadIdx.x + kThreads * u;
      if (c < v.dv) {
        const float* val = si.v + j0 * v.dv + c;
        for (int t = 0; t < n; ++t)
          acc[u] += weight[t] * val[int64_t{t} * v.dv];
      }
    }
    run_max = new_max;
    __syncthreads();  // logit / weight are rewritten next step
  }
#pragma unroll
  for (int u = 0; u < kColsPerThread; ++u) acc[u] /= run_sum;  // the exact row

  const RowParts parts = MakeRowParts(in);
  const float* vbar = MeanRow(v, s, g);
  double oo = 0;
#pragma unroll
  for (int u = 0; u < kColsPerThread; ++u) {
    const int c = threadIdx.x + kThreads * u;
    if (c < v.dv) oo += acc[u] * acc[u];
  }
  oo = BlockSumD<kThreads>(oo);
  for (int k = 0; k < kNumCandidates; ++k) {
    const Candidate cand = MakeCandidate(parts, k);
    double co = 0, cc = 0;
#pragma unroll
    for (int u = 0; u < kColsPerThread; ++u) {
      const int c = threadIdx.x + kThreads * u;
      if (c < v.dv) {
        const double cv = CandidateValue(cand, vbar[c], v.ev[g * v.dv + c],
                                         LowRankOff(v, g, c));
        co += cv * acc[u];
        cc += cv * cv;
      }
    }
    co = BlockSumD<kThreads>(co);
    cc = BlockSumD<kThreads>(cc);
    if (threadIdx.x == 0) {
      a.w.co[slot * kNumCandidates + k] = co;
      a.w.cc[slot * kNumCandidates + k] = cc;
    }
  }
  if (threadIdx.x == 0) {
    a.w.oo[slot] = oo;
    a.w.used[slot] = 1;
  }
#pragma unroll
  for (int u = 0; u < kColsPerThread; ++u) {
    const int c = threadIdx.x + kThreads * u;
    if (c < v.dv) a.w.exact[slot * v.dv + c] = static_cast<float>(acc[u]);
  }
}

// Thread per slice: the candidate and its shrink factor.
__global__ void SelectKernel(CalArgs a, int64_t total_slices) {
  const int64_t s = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (s >= total_slices) return;
  CalibrationChoice ch;
  if (a.rows > 0) {
    const int64_t base = s * a.rows;
    ch = SelectCandidate(a.w.co + base * kNumCandidates,
                         a.w.cc + base * kNumCandidates, a.w.oo + base,
                         a.w.used + base, a.w.nrows[s]);
  }
  if (a.probe.forced_candidate != nullptr) {
    ch.candidate = a.probe.forced_candidate[s];
    if (a.probe.forced_alpha != nullptr) ch.alpha = a.probe.forced_alpha[s];
    ch.fallback = ch.candidate == kMeanCandidate || ch.alpha < 0.5;
  }
  if (ch.candidate < 0 || ch.candidate >= kNumCandidates)
    ch.candidate = kMeanCandidate;
  if (a.rows > 0 && ch.fallback)
    atomicAdd(&a.v.counters[a.v.slices[s].request].fallbacks, 1ull);
  a.w.candidate[s] = ch.candidate;
  a.w.alpha[s] = ch.alpha;
  if (a.probe.candidate != nullptr) a.probe.candidate[s] = ch.candidate;
  if (a.probe.alpha != nullptr) a.probe.alpha[s] = ch.alpha;
}

// Warp per row: alpha times the chosen candidate (zeros for rows that see
// no key; a guard where the low-rank mass was clamped or both parts are
// empty).
__global__ void WriteKernel(CalArgs a) {
  const CombineView& v = a.v;
  const int64_t s = blockIdx.x;
  const SliceInfo si = v.slices[s];
  const int lane = threadIdx.x % kWarpSize;
  const int k = a.w.candidate[s];
  const double alpha = a.w.alpha[s];
  for (int64_t i = WarpItem0(); i < si.nq; i += WarpItemStride()) {
    const int64_t g = si.q_row0 + i;
    const RowParts parts = MakeRowParts(CombineRow(v, si, s, i));
    float* o = si.out + i * v.dv;
    if (parts.empty) {
      for (int c = lane; c < v.dv; c += kWarpSize) o[c] = 0.0f;
      continue;
    }
    if (lane == 0 && CalibratedGuard(parts))
      atomicAdd(&v.counters[si.request].guards, 1ull);
    const Candidate cand = MakeCandidate(parts, k);
    const float* vbar = MeanRow(v, s, g);
    for (int c = lane; c < v.dv; c += kWarpSize) {
      o[c] = static_cast<float>(alpha * CandidateValue(cand, vbar[c],
                                                       v.ev[g * v.dv + c],
                                                       LowRankOff(v, g, c)));
    }
  }
}

// Block per (slice, sampled row): the exact row replaces the estimate.
__global__ void OverwriteKernel(CalArgs a) {
  const int64_t s = blockIdx.x, r = blockIdx.y;
  if (r >= a.w.nrows[s]) return;
  const int64_t slot = s * a.rows + r;
  if (!a.w.used[slot]) return;
  const int dv = a.v.dv;
  float* o = a.v.slices[s].out + int64_t{a.w.rows[slot]} * dv;
  for (int c = threadIdx.x; c < dv; c += blockDim.x)
    o[c] = a.w.exact[slot * dv + c];
}

}  // namespace

absl::Status TakeCalibrationWork(ScratchPlan& plan,
                                 const AttentionParams& settings,
                                 const BatchSizes& n, CalibrationWork* w) {
  const int64_t slots = n.slices * settings.calibration_rows;
  SB_RETURN_IF_ERROR(plan.Take(SliceWordsTotal(n.q_rows, n.slices), &w->bits));
  SB_RETURN_IF_ERROR(plan.Take(slots, &w->rows));
  SB_RETURN_IF_ERROR(plan.Take(n.slices, &w->nrows));
  SB_RETURN_IF_ERROR(plan.Take(slots * kNumCandidates, &w->co));
  SB_RETURN_IF_ERROR(plan.Take(slots * kNumCandidates, &w->cc));
  SB_RETURN_IF_ERROR(plan.Take(slots, &w->oo));
  SB_RETURN_IF_ERROR(plan.Take(slots, &w->used));
  SB_RETURN_IF_ERROR(plan.Take(slots * settings.dim_v, &w->exact));
  SB_RETURN_IF_ERROR(plan.Take(n.slices, &w->candidate));
  return plan.Take(n.slices, &w->alpha);
}

absl::Status LaunchWriteCalibrated(
    const DeviceBatch& batch, const LaunchContext& ctx, const Slices& slices,
    const CombineInputs& in, const CalibrationWork& work, SparseProbe* probe) {
  const AttentionParams& p = batch.settings;
  CalArgs a;
  a.v = MakeCombineView(batch, slices, in);
  a.d = static_cast<int>(p.dim);
  a.rows = p.calibration_rows;
  a.tau = EffectiveScale(p);
  a.seed = p.seed;
  a.purpose = static_cast<uint64_t>(DrawPurpose::kCalibration);
  a.w = work;
  if (probe != nullptr) a.probe = *probe;
  const unsigned S = static_cast<unsigned>(batch.total_slices);
  cudaStream_t st = ctx.stream;
  if (a.rows > 0) {
    SampleKernel<<<S, kThreads, 0, st>>>(a);
    SB_SPARSE_LAUNCHED("calibration SampleKernel");
    ExactRowKernel<<<dim3(S, a.rows), kThreads, 0, st>>>(a);
    SB_SPARSE_LAUNCHED("calibration ExactRowKernel");
  }
  SelectKernel<<<(S + kThreads - 1) / kThreads, kThreads, 0, st>>>(
      a, batch.total_slices);
  SB_SPARSE_LAUNCHED("calibration SelectKernel");
  WriteKernel<<<QueryRowGrid(batch), kThreads, 0, st>>>(a);
  SB_SPARSE_LAUNCHED("calibration WriteKernel");
  if (a.rows > 0) {
    OverwriteKernel<<<dim3(S, a.rows), kThreads, 0, st>>>(a);
    SB_SPARSE_LAUNCHED("calibration OverwriteKernel");
  }
  return absl::OkStatus();
}

}  // namespace sparse
}  // namespace cuda
}  // namespace scatterbrain
