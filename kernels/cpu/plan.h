// scatterbrain/kernels/cpu/plan.h — Scatterbrain on one (batch, head) slice
// with its choices made per slice: the sparse support (sparse = auto), the
// global keys, and under an error target the cheapest budget that meets it
// (else exact attention). Every choice is made on query rows computed
// exactly, so it follows the data: a peaked, local head gets the window, a
// head with content-based attention the LSH clusters, an easy head a small
// budget.
#ifndef SCATTERBRAIN_KERNELS_CPU_PLAN_H_
#define SCATTERBRAIN_KERNELS_CPU_PLAN_H_

#include <cstdint>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/params.h"

namespace scatterbrain {
namespace cpu {

// Held-out rows an error target is estimated on (per slice, besides the
// calibration rows): enough for a usable bound at ~6% of exact's cost at
// N = 512.
inline constexpr int kValidationRows = 32;
// The bound is the ratio estimate plus this many standard errors (delta
// method over the held-out rows). Per-row errors are heavy-tailed and the
// ladder keeps the first step that passes, so the bound covers far less
// than a normal 3-sigma would: on MiniLM (2 seeds, targets 0.25 to 0.5) the
// measured error exceeded it on 6-13% of the slices left approximate, and
// the target itself was met on >= 99.7% of slices; with 2 sigmas 17-33%
// and 99.3% (README, Accuracy: how the estimate is made and when it can be
// wrong).
inline constexpr double kBoundSigmas = 3.0;

// The error-target ladder stops (and the slice is computed exactly) before
// a pass whose estimated time (kernels/cost.h) exceeds this share of
// exact's.
// Measured on this backend at N = 512 (MiniLM, one thread): Scatterbrain
// at budgets 32 to 128 takes about as long as exact attention although the
// model says a quarter to a third (small gathered GEMMs), hence a share
// well under 1.
inline constexpr double kMaxPassShare = 0.35;
// sparse = auto takes "both" (each support at half) over the better single
// support only when it holds this much more of the calibration rows' mass.
inline constexpr double kBothMassMargin = 0.01;

// Under an error target, slices with fewer keys are computed exactly with
// no search: measured on this backend (2-core CPU, d = 32 and 64),
// Scatterbrain at N = 512 takes as long as exact attention at every budget
// from 32 to 128, and the search on top made a target call 3.5-4x exact's
// time on MiniLM; from N = 1024 a pass at budget 256 takes ~0.7x exact's.
inline constexpr int64_t kMinLadderKeys = 1024;
// The ladder's first budget: at 16 (clusters of 8 keys) the pass is slower
// than at 32 and rarely meets a useful target.
inline constexpr int64_t kFirstLadderBudget = 32;
// The slowest rate the ladder assumes the error falls at (error ~
// budget^-rate, fitted between its steps): measured between budgets 16 and
// 256, 0.02 (iid Gaussian) to 0.15 (clustered) to 0.5 (peaked MiniLM
// heads); a slow fitted rate gives up early rather than paying for passes
// that cannot meet the target.
inline constexpr double kMinLadderRate = 0.05;

// `p`'s support settings (hash, sizes, seed), with neither support on.
SupportOptions BaseSupport(const AttentionParams& p);

// True when `p` makes choices per slice (and so reports HeadPlans).
bool PlansPerSlice(const AttentionParams& p);

// What one slice's run reports besides its output.
struct SlicePlan {
  HeadPlan plan;
  // Estimated ||O||_F^2 of the slice (from the held-out rows), the weight of
  // its error bound in the request's; 0 when not estimated.
  double out_norm2 = 0.0;
};

// Scatterbrain on slice `s` with `p`'s settings; writes s.out. `proj` is the
// feature projection draw for p.num_features (DrawCache). A stopped call
// returns early (output unspecified).
void RunScatterbrain(const Slice& s, const AttentionParams& p,
                     const std::vector<float>& proj, WorkspaceMeter* meter,
                     SliceStats* st, SlicePlan* out);

// The upper bound on a relative error from held-out rows: errors e_i =
// ||o_hat_i - o_i||^2 and norms y_i = ||o_i||^2 of n rows sampled from
// `population` rows; returns the bound on sqrt(sum e / sum y) over the
// population, and the point estimate in *estimate. Fewer than 2 usable rows:
// +inf. Exposed for tests.
double RelativeErrorBound(const std::vector<double>& e,
                          const std::vector<double>& y, int64_t population,
                          double sigmas, double* estimate);

}  // namespace cpu
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CPU_PLAN_H_
