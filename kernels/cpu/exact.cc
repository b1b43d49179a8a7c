// scatterbrain/kernels/cpu/exact.cc — exact softmax attention, blocked over
// query rows so the score block stays in cache; GEMMs through BLAS.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/profile.h"
#include "kernels/cpu/vmath.h"

namespace scatterbrain {
namespace cpu {
namespace {
constexpr int64_t kRowBlock = 64;
}  // namespace

void ExactRows(const Slice& s, int64_t row_begin, int64_t row_end,
               WorkspaceMeter* meter) {
  PhaseScope scope(Phase::kExact);
  const int64_t max_keys = s.nk;
  Scratch<float> scores(
      meter, static_cast<size_t>(kRowBlock) * std::max<int64_t>(max_keys, 1));
  // A block of 64 rows is the unit of cancellation: at seq_k = 65536 about
  // 20 ms of one core.
  for (int64_t i0 = row_begin; i0 < row_end && !s.stopped(); i0 += kRowBlock) {
    const int64_t i1 = std::min(row_end, i0 + kRowBlock);
    const int64_t rows = i1 - i0;
    // Keys any row of the block may see.
    const int64_t kmax = s.causal ? s.KeyLimit(i1 - 1) : s.nk;
    if (kmax <= 0) {
      for (int64_t i = i0; i < i1; ++i)
        std::fill(s.orow(i), s.orow(i) + s.dv, 0.0f);
      continue;
    }
    float* sc = scores.data();
    Gemm(false, true, rows, kmax, s.d, s.tau, s.qrow(i0), s.q_row, s.k, s.k_row,
         0.0f, sc, kmax);
    for (int64_t r = 0; r < rows; ++r) {
      float* row = sc + r * kmax;
      const int64_t lim = s.KeyLimit(i0 + r);
      const float mx = Max(row, std::max<int64_t>(lim, 0));
      if (lim > 0) ExpInPlace(row, lim, -mx);
      const double sum = Sum(row, std::max<int64_t>(lim, 0));
      const float inv = lim > 0 ? static_cast<float>(1.0 / sum) : 0.0f;
      for (int64_t j = 0; j < lim; ++j) row[j] *= inv;
      for (int64_t j = std::max<int64_t>(lim, 0); j < kmax; ++j) row[j] = 0.0f;
    }
    Gemm(false, false, rows, s.dv, kmax, 1.0f, sc, kmax, s.v, s.v_row, 0.0f,
         s.orow(i0), s.out_row);
  }
}

bool ExactRow(const Slice& s, int64_t i, double* out, float* weights) {
  const int64_t lim = s.KeyLimit(i);
  std::fill(out, out + s.dv, 0.0);
  if (weights) std::fill(weights, weights + s.nk, 0.0f);
  if (lim <= 0) return false;
  // Float GEMVs and the float exp: relative error ~1e-6, far below any
  // error this row is compared with, and the row costs two BLAS calls.
  std::vector<float> logit(lim);
  cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(lim),
              static_cast<int>(s.d), s.tau, s.k, static_cast<int>(s.k_row),
              s.qrow(i), 1, 0.0f, logit.data(), 1);
  const float mx = Max(logit.data(), lim);
  ExpInPlace(logit.data(), lim, -mx);
  const double sum = Sum(logit.data(), lim);
  std::vector<float> acc(s.dv);
  cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<int>(lim),
              static_cast<int>(s.dv), 1.0f, s.v, static_cast<int>(s.v_row),
              logit.data(), 1, 0.0f, acc.data(), 1);
  for (int64_t c = 0; c < s.dv; ++c) out[c] = acc[c] / sum;
  if (weights) {
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t j = 0; j < lim; ++j) weights[j] = logit[j] * inv;
  }
  return true;
}

void ComputeExactSample(const Slice& s, std::vector<int64_t> rows,
                        bool keep_weights, ExactSample* out) {
  PhaseScope scope(Phase::kCalibration);
  const size_t n = rows.size();
  out->rows = std::move(rows);
  out->used.assign(n, 0);
  out->out.assign(n * s.dv, 0.0);
  out->weights.assign(keep_weights ? n * s.nk : 0, 0.0f);
  out->evaluations = 0;
  // Blocks of rows, each two GEMMs (logits, weighted values): K and V are
  // read once per block instead of once per row by two GEMVs each, which
  // made these 16 rows ~8% of a Scatterbrain call at N = 4096.
  constexpr size_t kBlock = 16;
  const int64_t d = s.d, dv = s.dv;
  std::vector<float> q(kBlock * d), acc(kBlock * dv);
  std::vector<float> w(kBlock *
                       static_cast<size_t>(std::max<int64_t>(s.nk, 1)));
  for (size_t r0 = 0; r0 < n; r0 += kBlock) {
    const size_t nb = std::min(kBlock, n - r0);
    int64_t width = 0;  // keys any row of the block sees
    for (size_t r = 0; r < nb; ++r) {
      width = std::max(width, s.KeyLimit(out->rows[r0 + r]));
      std::copy(s.qrow(out->rows[r0 + r]), s.qrow(out->rows[r0 + r]) + d,
                q.data() + r * d);
    }
    if (width <= 0) continue;  // no row sees a key: all unused
    Gemm(false, true, static_cast<int64_t>(nb), width, d, s.tau, q.data(), d,
         s.k, s.k_row, 0.0f, w.data(), width);
    std::vector<double> sum(nb, 0.0);
    for (size_t r = 0; r < nb; ++r) {
      const int64_t lim = std::max<int64_t>(s.KeyLimit(out->rows[r0 + r]), 0);
      float* row = w.data() + r * width;
      if (lim > 0) {
        ExpInPlace(row, lim, -Max(row, lim));
        sum[r] = Sum(row, lim);
      }
      std::fill(row + lim, row + width, 0.0f);  // keys past the row's limit
    }
    Gemm(false, false, static_cast<int64_t>(nb), dv, width, 1.0f, w.data(),
         width, s.v, s.v_row, 0.0f, acc.data(), dv);
    for (size_t r = 0; r < nb; ++r) {
      const size_t at = r0 + r;
      const int64_t lim = s.KeyLimit(out->rows[at]);
      out->evaluations += std::max<int64_t>(lim, 0);
      if (lim <= 0) continue;
      out->used[at] = 1;
      for (int64_t c = 0; c < dv; ++c)
        out->out[at * dv + c] = acc[r * dv + c] / sum[r];
      if (keep_weights) {
        const float inv = static_cast<float>(1.0 / sum[r]);
        const float* row = w.data() + r * width;
        float* dst = out->weights.data() + at * s.nk;
        for (int64_t j = 0; j < lim; ++j) dst[j] = row[j] * inv;
      }
    }
  }
}

void MeanValue(const Slice& s, int64_t i, double* out) {
  const int64_t lim = s.KeyLimit(i);
  std::fill(out, out + s.dv, 0.0);
  for (int64_t j = 0; j < lim; ++j) {
    const float* v = s.vrow(j);
    for (int64_t c = 0; c < s.dv; ++c) out[c] += v[c];
  }
  if (lim > 0)
    for (int64_t c = 0; c < s.dv; ++c) out[c] /= static_cast<double>(lim);
}

}  // namespace cpu
}  // namespace scatterbrain
