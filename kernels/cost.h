// scatterbrain/kernels/cost.h — what a call costs to compute, estimated from
// its method, shapes and settings alone (no data), so a server can refuse a
// request it cannot afford before it receives a byte of its tensors.
//
// The unit is a floating-point operation: a multiply-add is 2, and each
// attention score's softmax work (the exp and the passes over the score row
// around it) counts as kScoreFlops — what it costs next to a GEMM's
// multiply-adds on a CPU, measured (cost.cc). Without that term a request
// of tiny head dimension looks free while its N x N scores take the machine
// for minutes. The estimate follows the CPU backend's algorithms (which the
// CUDA backend mirrors) term by term; tests/cost_test.cc checks that time
// per estimated flop agrees across methods and shapes within a small
// factor.
#ifndef SCATTERBRAIN_KERNELS_COST_H_
#define SCATTERBRAIN_KERNELS_COST_H_

#include <cstdint>

#include "kernels/params.h"

namespace scatterbrain {

// Flop-equivalents of one attention score's softmax work (see cost.cc).
inline constexpr int64_t kScoreFlops = 96;

// Estimated floating-point operations of one call of `p` (its shape and
// settings; tensor pointers and key_lengths are ignored: all seq_k keys
// count). Saturates at INT64_MAX instead of overflowing; 0 for an empty
// call. Meant for valid params (ValidateShapeAndSettings), sane otherwise.
int64_t EstimateFlops(const AttentionParams& p);

// Pairs (i, j) of one (batch, head) slice that query i may attend: seq_q *
// seq_k, or under the causal mask (bottom-right aligned) those with
// j <= i + seq_k - seq_q.
int64_t VisiblePairs(int64_t seq_q, int64_t seq_k, bool causal);

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_COST_H_
