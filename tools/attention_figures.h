// scatterbrain/tools/attention_figures.h — what the real-data accuracy mode
// (tools/accuracy_npy.cc) measures on the exact attention itself, in fp64:
// the yardsticks no seed changes (the oracle top-k answer, the mean of V)
// and how peaked or broad the attention is (the sparsity figures of
// ../shared/data/minilm/README.md), plus the per-slice error metric.
#ifndef SCATTERBRAIN_TOOLS_ATTENTION_FIGURES_H_
#define SCATTERBRAIN_TOOLS_ATTENTION_FIGURES_H_

#include <cstdint>
#include <vector>

#include "kernels/params.h"

namespace scatterbrain {
namespace accuracy {

// Means over every query row of every (batch, head) slice of the exact
// softmax attention. Keys are positions; "local" uses the causal mask's
// bottom-right alignment (query i sits at key position i + seq_k - seq_q).
struct SparsityFigures {
  double entropy_nats = 0;  // -sum p log p per row
  double top32_mass = 0;    // mass of the row's 32 largest weights
  double top64_mass = 0;
  double local16_mass = 0;    // mass on keys within |i - j| <= 16
  double first_key_mass = 0;  // key 0 ([CLS] in BERT windows)
  double last_key_mass = 0;   // key seq_k - 1 ([SEP])
};

struct ExactFigures {
  SparsityFigures sparsity;
  // Per entry of `budgets`: relative Frobenius error of the oracle top-k
  // answer (each row's softmax restricted to its true k = budget best keys,
  // renormalised), whole tensor.
  std::vector<double> oracle_error;
  // Relative error of answering, on every row, the mean of V over the keys.
  double mean_v_error = 0;
};

// Computes the figures for the inputs of `p` (its q, k, v, strides, sizes
// and scale; not causal, no key_lengths: the real-data mode uses neither)
// against `ref`, ExactAttentionDouble(p). Runs over (batch, head) slices on
// `threads` threads (0: the hardware's concurrency); the sums are reduced
// in slice order, so the thread count does not change the result.
ExactFigures ComputeExactFigures(const AttentionParams& p,
                                 const std::vector<double>& ref,
                                 const std::vector<int>& budgets, int threads);

// ||O_hat - O||_F / ||O||_F for each (batch, head) slice, in b * heads + h
// order; `out` is contiguous [batch, heads, seq_q, dim_v] (p's sizes),
// `ref` as above. A slice with ||O|| = 0 gets its absolute error.
std::vector<double> SliceErrors(const AttentionParams& p,
                                const std::vector<float>& out,
                                const std::vector<double>& ref);

}  // namespace accuracy
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TOOLS_ATTENTION_FIGURES_H_
