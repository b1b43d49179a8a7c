// scatterbrain/kernels/validate.cc — every check on AttentionParams lives
// here, so backends can assume a consistent, in-range request.
#include "kernels/validate.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace scatterbrain {
namespace {

constexpr int64_t kMaxElements = int64_t{1} << 40;

absl::Status Bad(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

bool UsesFeatures(const AttentionParams& p) {
  return p.method == Method::kPerformer || p.method == Method::kScatterbrain;
}
bool UsesLsh(const AttentionParams& p) {
  return p.method == Method::kLsh || (p.method == Method::kScatterbrain &&
                                      p.sparse != SparseSupport::kLocal);
}
bool UsesWindow(const AttentionParams& p) {
  return p.method == Method::kLocal ||
         (p.method == Method::kScatterbrain && p.sparse != SparseSupport::kLsh);
}

// Input views only need non-negative strides: they are read-only, so
// overlapping views are fine (a head stride of 0 shares K/V across heads, as
// multi-query attention does). The output must not alias itself: sorted by
// stride, every stride must step over everything the smaller ones span.
absl::Status CheckStrides(absl::string_view name, const Strides& s,
                          int64_t batch, int64_t heads, int64_t rows,
                          int64_t cols, bool output) {
  if (s.batch < 0 || s.head < 0 || s.row < 0) {
    return Bad(absl::StrCat(name, "_strides"), "negative stride");
  }
  if (!output) return absl::OkStatus();
  struct Dim {
    int64_t stride, extent;
    const char* field;
  };
  Dim dims[3] = {
      {s.row, rows, "row"}, {s.head, heads, "head"}, {s.batch, batch, "batch"}};
  std::sort(std::begin(dims), std::end(dims),
            [](const Dim& a, const Dim& b) { return a.stride < b.stride; });
  int64_t span = cols;  // elements covered by the smaller dimensions
  for (const Dim& d : dims) {
    if (d.extent <= 1) continue;
    if (d.stride < span) {
      return Bad(
          absl::StrCat(name, "_strides.", d.field),
          absl::StrCat(d.stride,
                       " makes output elements overlap (needs >= ", span, ")"));
    }
    span = d.stride * (d.extent - 1) + span;
  }
  return absl::OkStatus();
}

absl::Status CheckFinite(absl::string_view name, const float* x,
                         const Strides& s, int64_t batch, int64_t heads,
                         int64_t rows, int64_t cols) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < rows; ++i) {
        const float* r = x + b * s.batch + h * s.head + i * s.row;
        // Branch-free scan of the exponent bits (all ones: inf or NaN) that
        // vectorises; the position is only searched on failure.
        uint32_t bad = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const uint32_t bits = __builtin_bit_cast(uint32_t, r[c]);
          bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
        }
        if (bad == 0) continue;
        for (int64_t c = 0; c < cols; ++c) {
          if (!std::isfinite(r[c])) {
            return Bad(name, absl::StrCat("non-finite value at [", b, ", ", h,
                                          ", ", i, ", ", c, "]"));
          }
        }
      }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateParams(const AttentionParams& p, bool check_values) {
  if (p.batch < 1) return Bad("batch", "must be >= 1");
  if (p.heads < 1) return Bad("heads", "must be >= 1");
  if (p.seq_q < 1) return Bad("seq_q", "must be >= 1");
  if (p.seq_k < 1) return Bad("seq_k", "must be >= 1");
  if (p.dim < 1 || p.dim > kMaxDim)
    return Bad("dim",
               absl::StrCat("must be in [1, ", kMaxDim, "], got ", p.dim));
  if (p.dim_v < 1 || p.dim_v > kMaxDim)
    return Bad("dim_v",
               absl::StrCat("must be in [1, ", kMaxDim, "], got ", p.dim_v));
  // Overflow-safe element counts.
  const double bh = static_cast<double>(p.batch) * p.heads;
  if (bh * p.seq_q * p.dim > kMaxElements) return Bad("q", "tensor too large");
  if (bh * p.seq_k * std::max(p.dim, p.dim_v) > kMaxElements)
    return Bad("k", "tensor too large");
  if (bh * p.seq_q * p.dim_v > kMaxElements)
    return Bad("out", "tensor too large");
  if (p.q == nullptr) return Bad("q", "is null");
  if (p.k == nullptr) return Bad("k", "is null");
  if (p.v == nullptr) return Bad("v", "is null");
  if (p.out == nullptr) return Bad("out", "is null");
  SB_RETURN_IF_ERROR(
      CheckStrides("q", p.q_strides, p.batch, p.heads, p.seq_q, p.dim, false));
  SB_RETURN_IF_ERROR(
      CheckStrides("k", p.k_strides, p.batch, p.heads, p.seq_k, p.dim, false));
  SB_RETURN_IF_ERROR(CheckStrides("v", p.v_strides, p.batch, p.heads, p.seq_k,
                                  p.dim_v, false));
  SB_RETURN_IF_ERROR(CheckStrides("out", p.out_strides, p.batch, p.heads,
                                  p.seq_q, p.dim_v, true));
  if (!std::isfinite(p.scale) || p.scale < 0.0f)
    return Bad("scale", "must be finite and > 0 (0 selects 1/sqrt(dim))");
  if (p.key_lengths != nullptr) {
    for (int64_t b = 0; b < p.batch; ++b) {
      if (p.key_lengths[b] < 0 || p.key_lengths[b] > p.seq_k) {
        return Bad(absl::StrCat("key_lengths[", b, "]"),
                   absl::StrCat(p.key_lengths[b],
                                " is outside [0, seq_k=", p.seq_k, "]"));
      }
    }
  }
  if (UsesFeatures(p)) {
    if (p.num_features < 2 || p.num_features > kMaxFeatures ||
        p.num_features % 2 != 0) {
      return Bad("num_features",
                 absl::StrCat("must be even and in [2, ", kMaxFeatures,
                              "] for method ", MethodName(p.method), ", got ",
                              p.num_features));
    }
  }
  if (UsesLsh(p)) {
    if (p.bucket_size < 1)
      return Bad("bucket_size",
                 absl::StrCat("must be >= 1, got ", p.bucket_size));
    if (p.num_hashes < 1 || p.num_hashes > kMaxHashes)
      return Bad("num_hashes", absl::StrCat("must be in [1, ", kMaxHashes,
                                            "], got ", p.num_hashes));
    if (p.kmeans_iterations < 0 || p.kmeans_iterations > 32)
      return Bad("kmeans_iterations",
                 absl::StrCat("must be in [0, 32], got ", p.kmeans_iterations));
    if (p.hash_projections < 1 || p.hash_projections > kMaxHashProjections)
      return Bad("hash_projections",
                 absl::StrCat("must be in [1, ", kMaxHashProjections, "], got ",
                              p.hash_projections));
  }
  if (UsesWindow(p) && p.window < 1)
    return Bad("window", absl::StrCat("must be >= 1, got ", p.window));
  if (p.method == Method::kScatterbrain &&
      (p.calibration_rows < 0 || p.calibration_rows > kMaxCalibrationRows))
    return Bad("calibration_rows",
               absl::StrCat("must be in [0, ", kMaxCalibrationRows, "], got ",
                            p.calibration_rows));
  if (p.method == Method::kScatterbrain &&
      (p.global_keys < 0 || p.global_keys > kMaxGlobalKeys))
    return Bad("global_keys", absl::StrCat("must be in [0, ", kMaxGlobalKeys,
                                           "], got ", p.global_keys));
  if (!std::isfinite(p.target_error) || p.target_error < 0.0 ||
      p.target_error >= 1.0)
    return Bad("target_error", absl::StrCat("must be in [0, 1) (0: off), got ",
                                            p.target_error));
  if (p.target_error > 0.0 && p.method != Method::kScatterbrain)
    return Bad("target_error", absl::StrCat("is for method scatterbrain, not ",
                                            MethodName(p.method)));
  if (check_values) {
    SB_RETURN_IF_ERROR(
        CheckFinite("q", p.q, p.q_strides, p.batch, p.heads, p.seq_q, p.dim));
    SB_RETURN_IF_ERROR(
        CheckFinite("k", p.k, p.k_strides, p.batch, p.heads, p.seq_k, p.dim));
    SB_RETURN_IF_ERROR(
        CheckFinite("v", p.v, p.v_strides, p.batch, p.heads, p.seq_k, p.dim_v));
  }
  return absl::OkStatus();
}

absl::Status CheckOutputFinite(const AttentionParams& p) {
  const absl::Status st = CheckFinite("out", p.out, p.out_strides, p.batch,
                                      p.heads, p.seq_q, p.dim_v);
  if (st.ok()) return st;
  return absl::InvalidArgumentError(absl::StrCat(
      st.message(),
      " from finite inputs: their magnitudes overflow float32 (scores "
      "|q.k| * scale past 3.4e38, or sums over v); scale q, k or v down"));
}

absl::Status ValidateShapeAndSettings(const AttentionParams& params) {
  AttentionParams p = params;
  static const float kStandIn = 0.0f;
  p.q = p.k = p.v = &kStandIn;
  p.out = const_cast<float*>(&kStandIn);
  SetContiguousStrides(p);
  return ValidateParams(p, /*check_values=*/false);
}

}  // namespace scatterbrain
