// scatterbrain/tools/accuracy_npy_report.cc — prints the real-data mode's
// tables (Markdown, for the README) and the summary against issue 12's
// numbers, from what accuracy_npy.cc measured.
#include "tools/accuracy_npy_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

namespace scatterbrain {
namespace accuracy {

const char* const kNpyColNames[kNumNpyCols] = {
    "performer", "lsh",     "local",         "SB-lsh",
    "SB-local",  "SB-auto", "SB-auto+global"};
const char* const kStudyColNames[kNumStudyCols] = {
    "lsh kmeans 3 it",   "lsh kmeans 8 it", "lsh 2 hashes (bucket/2)",
    "lsh crosspolytope", "SB-auto G=0",     "SB-auto G=2",
    "SB-auto G=4",       "SB-auto G=8",     "SB-auto 2 hashes (bucket/2)"};
const int kStudyGlobalKeys[kNumStudyCols] = {0, 0, 0, 0, 0, 2, 4, 8, 0};

std::string FormatDouble(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", x);
  return buf;
}

namespace {

std::string F4(double x) {
  if (!std::isfinite(x)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4f", x);
  return buf;
}

// Rounding-level errors (the exact yardstick) in scientific notation.
std::string E1(double x) {
  if (!std::isfinite(x)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1e", x);
  return buf;
}

std::string F3(double x) {
  if (!std::isfinite(x)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f", x);
  return buf;
}

double Mean(const std::vector<double>& xs) {
  if (xs.empty()) return std::nan("");
  double s = 0;
  for (double x : xs) s += x;  // NaN (a failed run) propagates
  return s / static_cast<double>(xs.size());
}

// Per seed: column `c`'s error over the best of performer, lsh and local.
std::vector<double> RatiosToBest(const std::vector<std::vector<double>>& err,
                                 int c) {
  std::vector<double> r;
  for (size_t s = 0; s < err[c].size(); ++s) {
    const double best =
        std::min({err[kColPerformer][s], err[kColLsh][s], err[kColLocal][s]});
    r.push_back(best > 0 ? err[c][s] / best : std::nan(""));
  }
  return r;
}

double Max(const std::vector<double>& xs) {
  double m = -INFINITY;
  for (double x : xs) m = std::isnan(x) || std::isnan(m) ? NAN : std::max(m, x);
  return xs.empty() ? std::nan("") : m;
}

std::string Verdict(bool pass) { return pass ? "PASS" : "FAIL"; }

void PrintMainTable(const NpyOptions& o,
                    const std::vector<LayerResult>& results) {
  const bool g = o.global_keys > 0;
  std::printf(
      "| layer | budget | exact (fp32) | performer | lsh | local | SB-lsh | "
      "SB-local | SB-auto |%s oracle top-k | mean(V) | SB-auto / best | "
      "max over seeds |%s SB-auto picks lsh/local/both |\n",
      g ? " SB-auto+global |" : "", g ? " SB-auto+global / best |" : "");
  std::printf("|---|---|---|---|---|---|---|---|---|%s---|---|---|---|%s---|\n",
              g ? "---|" : "", g ? "---|" : "");
  for (size_t bi = 0; bi < o.budgets.size(); ++bi) {
    std::vector<double> col_sum(kNumNpyCols, 0.0);
    double oracle_sum = 0, mean_v_sum = 0, exact_sum = 0, ratio_sum = 0,
           ratio_g_sum = 0, ratio_max = -INFINITY;
    for (const LayerResult& lr : results) {
      const auto& err = lr.err[bi];
      std::printf("| %d | %d | %s |", lr.layer, o.budgets[bi],
                  E1(lr.exact_err).c_str());
      exact_sum += lr.exact_err;
      for (int c = 0; c < kNumNpyCols; ++c) {
        if (c == kColSbAutoGlobal && !g) continue;
        const double m = Mean(err[c]);
        col_sum[c] += m;
        std::printf(" %s |", F4(m).c_str());
      }
      const std::vector<double> ratios = RatiosToBest(err, kColSbAuto);
      ratio_sum += Mean(ratios);
      ratio_max = std::max(ratio_max, Max(ratios));
      oracle_sum += lr.figures.oracle_error[bi];
      mean_v_sum += lr.figures.mean_v_error;
      std::printf(" %s | %s | %s | %s |",
                  F4(lr.figures.oracle_error[bi]).c_str(),
                  F4(lr.figures.mean_v_error).c_str(), F3(Mean(ratios)).c_str(),
                  F3(Max(ratios)).c_str());
      if (g) {
        const double rg = Mean(RatiosToBest(err, kColSbAutoGlobal));
        ratio_g_sum += rg;
        std::printf(" %s |", F3(rg).c_str());
      }
      const PickCounts& pk = lr.picks[bi];
      if (pk.lsh + pk.local + pk.both == 0)
        std::printf(" - |\n");
      else
        std::printf(" %d/%d/%d |\n", pk.lsh, pk.local, pk.both);
    }
    const double n = static_cast<double>(results.size());
    std::printf("| **mean** | %d | %s |", o.budgets[bi],
                E1(exact_sum / n).c_str());
    for (int c = 0; c < kNumNpyCols; ++c) {
      if (c == kColSbAutoGlobal && !g) continue;
      std::printf(" %s |", F4(col_sum[c] / n).c_str());
    }
    std::printf(" %s | %s | %s | %s |", F4(oracle_sum / n).c_str(),
                F4(mean_v_sum / n).c_str(), F3(ratio_sum / n).c_str(),
                F3(ratio_max).c_str());
    if (g) std::printf(" %s |", F3(ratio_g_sum / n).c_str());
    std::printf(" - |\n");
  }
}

void PrintSparsity(const std::vector<LayerResult>& results) {
  std::printf(
      "\n## Sparsity of the exact attention (means over rows, all windows "
      "and heads)\n\n"
      "| layer | row entropy (nats) | mass in top-32 keys | top-64 | "
      "mass within \\|i-j\\| <= 16 | on key 0 ([CLS]) | on the last key "
      "([SEP]) |\n|---|---|---|---|---|---|---|\n");
  for (const LayerResult& lr : results) {
    const SparsityFigures& f = lr.figures.sparsity;
    std::printf("| %d | %.2f | %.3f | %.3f | %.3f | %.3f | %.3f |\n", lr.layer,
                f.entropy_nats, f.top32_mass, f.top64_mass, f.local16_mass,
                f.first_key_mass, f.last_key_mass);
  }
}

void PrintTargetRow(const std::string& label, double t, const TargetSums& s) {
  auto ratio = [](double a, double b) { return b > 0 ? a / b : std::nan(""); };
  std::printf(
      "| %s | %s | %lld | %s | %s | %s | %lld | %s | %s | %lld | %s | %s |\n",
      FormatDouble(t).c_str(), label.c_str(), static_cast<long long>(s.slices),
      F3(ratio(s.met, s.slices)).c_str(),
      F4(ratio(s.achieved_sum, s.slices)).c_str(),
      F3(ratio(s.exact_slices, s.slices)).c_str(),
      static_cast<long long>(s.bound_n),
      F4(ratio(s.approx_achieved_sum, s.bound_n)).c_str(),
      F4(ratio(s.bound_sum, s.bound_n)).c_str(),
      static_cast<long long>(s.bound_missed),
      F3(ratio(s.cost_sum, s.cost_n)).c_str(),
      F3(ratio(s.sb_ms, s.exact_ms)).c_str());
}

// Returns, per target, the share of slices that met it over every layer.
std::vector<TargetSums> PrintTargets(const NpyOptions& o,
                                     const std::vector<LayerResult>& results) {
  std::vector<TargetSums> all(o.targets.size());
  if (o.targets.empty()) return all;
  std::printf(
      "\n## Error target (target_error = t, sparse = %s, num_features = "
      "bucket_size = window = 128 so the ladder may climb; per (window, "
      "head) slice, all seeds)\n\n"
      "met: share of slices whose error measured against fp64 exact is <= t. "
      "exact: share of slices that fell back to exact attention. On the "
      "other slices (approx.): their achieved error, their reported "
      "error_bound, and how many exceeded it. cost: score_evaluations / "
      "exact's. "
      "time: wall time / exact's, timed in the same run.\n\n"
      "| target | layer | slices | met | mean achieved error | exact | "
      "approx. slices | their mean achieved | their mean bound | achieved > "
      "bound | cost | time |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
      "\n",
      SparseName(o.target_sparse));
  for (size_t ti = 0; ti < o.targets.size(); ++ti) {
    for (const LayerResult& lr : results) {
      const TargetSums& s = lr.targets[ti];
      PrintTargetRow(std::to_string(lr.layer), o.targets[ti], s);
      TargetSums& a = all[ti];
      a.slices += s.slices;
      a.met += s.met;
      a.exact_slices += s.exact_slices;
      a.achieved_sum += s.achieved_sum;
      a.approx_achieved_sum += s.approx_achieved_sum;
      a.bound_sum += s.bound_sum;
      a.bound_n += s.bound_n;
      a.bound_missed += s.bound_missed;
      a.cost_sum += s.cost_sum;
      a.cost_n += s.cost_n;
      a.sb_ms += s.sb_ms;
      a.exact_ms += s.exact_ms;
    }
    PrintTargetRow("**all**", o.targets[ti], all[ti]);
  }
  return all;
}

void PrintStudy(const NpyOptions& o, const std::vector<LayerResult>& results) {
  std::printf(
      "\n## Study at budget %d: LSH variants (method lsh, bucket %d) and "
      "global keys (SB-auto, features = bucket = window = %d), SB-auto with "
      "2 hash rounds; mean error "
      "over seeds, SB-auto's mean support mass in brackets\n\n| layer |",
      o.study_budget, o.study_budget, o.study_budget / 2);
  for (const char* name : kStudyColNames) std::printf(" %s |", name);
  std::printf(" oracle top-%d |\n|---|", o.study_budget);
  for (int v = 0; v <= kNumStudyCols; ++v) std::printf("---|");
  std::printf("\n");
  std::vector<double> sums(kNumStudyCols + 1, 0.0);
  for (const LayerResult& lr : results) {
    std::printf("| %d |", lr.layer);
    for (int v = 0; v < kNumStudyCols; ++v) {
      const StudyCell& c = lr.study[v];
      const double e = c.n > 0 ? c.err_sum / c.n : std::nan("");
      sums[v] += e;
      if (c.mass_n > 0)
        std::printf(" %s (%.3f) |", F4(e).c_str(), c.mass_sum / c.mass_n);
      else
        std::printf(" %s |", F4(e).c_str());
    }
    const double oracle = lr.figures.oracle_error.back();
    sums[kNumStudyCols] += oracle;
    std::printf(" %s |\n", F4(oracle).c_str());
  }
  std::printf("| **mean** |");
  for (double s : sums)
    std::printf(" %s |", F4(s / static_cast<double>(results.size())).c_str());
  std::printf("\n");
}

void PrintSummary(const NpyOptions& o, const std::vector<LayerResult>& results,
                  const std::vector<TargetSums>& targets) {
  std::printf("\n## Against issue 12's numbers (reported, not enforced)\n\n");
  for (size_t bi = 0; bi < o.budgets.size(); ++bi) {
    double worst = -INFINITY, mean = 0;
    int worst_layer = -1;
    for (const LayerResult& lr : results) {
      const std::vector<double> r = RatiosToBest(lr.err[bi], kColSbAuto);
      const double m = Max(r);
      if (std::isnan(m) || m > worst) {
        worst = m;
        worst_layer = lr.layer;
      }
      mean += Mean(r) / static_cast<double>(results.size());
    }
    std::printf(
        "- budget %d: SB-auto <= 0.85x best(performer, lsh, local) on every "
        "layer and seed: %s (worst %s, layer %d); <= 0.75x on average over "
        "layers: %s (%s)\n",
        o.budgets[bi], Verdict(worst <= 0.85).c_str(), F3(worst).c_str(),
        worst_layer, Verdict(mean <= 0.75).c_str(), F3(mean).c_str());
  }
  const auto at64 = std::find(o.budgets.begin(), o.budgets.end(), 64);
  if (at64 != o.budgets.end()) {
    const size_t bi = at64 - o.budgets.begin();
    double mean = 0;
    for (const LayerResult& lr : results)
      mean +=
          Mean(lr.err[bi][kColSbAuto]) / static_cast<double>(results.size());
    std::printf("- mean SB-auto error at budget 64 <= 0.40: %s (%s)\n",
                Verdict(mean <= 0.40).c_str(), F4(mean).c_str());
  } else {
    std::printf("- mean SB-auto error at budget 64: budget 64 not run\n");
  }
  for (size_t ti = 0; ti < o.targets.size(); ++ti) {
    const TargetSums& s = targets[ti];
    const double share =
        s.slices > 0 ? static_cast<double>(s.met) / s.slices : std::nan("");
    std::printf(
        "- target_error %s met on >= 95%% of (window, head) slices: %s "
        "(%.1f%% of %lld)\n",
        FormatDouble(o.targets[ti]).c_str(), Verdict(share >= 0.95).c_str(),
        100 * share, static_cast<long long>(s.slices));
  }
}

}  // namespace

void PrintNpyReport(const NpyOptions& o,
                    const std::vector<LayerResult>& results,
                    const std::vector<std::string>& problems,
                    double elapsed_s) {
  const AttentionShape& s = results.front().shape;
  const AttentionParams defaults;
  std::string seeds, layers;
  for (uint64_t x : o.seeds)
    seeds += (seeds.empty() ? "" : ",") + std::to_string(x);
  for (const LayerResult& lr : results)
    layers += (layers.empty() ? "" : ",") + std::to_string(lr.layer);
  const std::string global =
      o.global_keys > 0
          ? "; SB-auto+global: global_keys=" + std::to_string(o.global_keys)
          : "";
  std::printf(
      "## Real attention: relative error ||O_hat - O||_F / ||O||_F vs fp64 "
      "exact\n\n"
      "Data: %s, layers %s, [B, H, N, d] = [%lld, %lld, %lld, %lld] (layer "
      "%d), scale 1/sqrt(d), not causal; CPU backend. Errors are means over "
      "seeds %s. LSH: lsh_hash=%s, kmeans_iterations=%d, num_hashes=1; "
      "calibration_rows=%d%s. oracle top-k: "
      "each row's softmax restricted to its true k = budget best keys "
      "(fp64); mean(V): every row answers the mean of V. SB-auto / best: "
      "SB-auto over the best of performer, lsh and local, per seed (mean, "
      "and max over seeds).\n\n",
      o.npy_dir.c_str(), layers.c_str(), static_cast<long long>(s.batch),
      static_cast<long long>(s.heads), static_cast<long long>(s.seq_k),
      static_cast<long long>(s.dim), results.front().layer, seeds.c_str(),
      LshHashName(defaults.lsh_hash), defaults.kmeans_iterations,
      o.calibration_rows >= 0 ? o.calibration_rows : defaults.calibration_rows,
      global.c_str());
  PrintMainTable(o, results);
  PrintSparsity(results);
  const std::vector<TargetSums> targets = PrintTargets(o, results);
  if (o.study) PrintStudy(o, results);
  PrintSummary(o, results, targets);
  if (problems.empty()) {
    std::printf("\nNo run errors or non-finite outputs.\n");
  } else {
    std::printf("\nProblems:\n");
    for (const std::string& p : problems) std::printf("- %s\n", p.c_str());
  }
  std::printf("Elapsed: %.1f s\n", elapsed_s);
}

}  // namespace accuracy
}  // namespace scatterbrain
