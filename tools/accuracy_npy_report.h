// scatterbrain/tools/accuracy_npy_report.h — the real-data mode's settings,
// what it measures per layer, and the Markdown report printed from that
// (accuracy_npy.cc measures, accuracy_npy_report.cc prints).
#ifndef SCATTERBRAIN_TOOLS_ACCURACY_NPY_REPORT_H_
#define SCATTERBRAIN_TOOLS_ACCURACY_NPY_REPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/params.h"
#include "tools/attention_figures.h"

namespace scatterbrain {
namespace accuracy {

struct NpyOptions {
  std::string npy_dir;
  std::vector<int> layers;  // empty: every layer{L}_q.npy in npy_dir
  std::vector<int> budgets = {32, 64};
  std::vector<uint64_t> seeds = {1, 2, 3};
  std::vector<double> targets = {0.1, 0.25};
  int threads = 0;  // CPU backend workers; 0 = the hardware's concurrency
  // Keys of the SB-auto+global column; 0: no such column.
  int global_keys = 4;
  // -1: AttentionParams' default.
  int calibration_rows = -1;
  // The support the error-target runs use.
  SparseSupport target_sparse = SparseSupport::kAuto;
  // --study: LSH variants and global keys at study_budget.
  bool study = false;
  int study_budget = 64;
};

// Main table columns (kColSbAutoGlobal only when global_keys > 0).
enum NpyCol {
  kColPerformer,
  kColLsh,
  kColLocal,
  kColSbLsh,
  kColSbLocal,
  kColSbAuto,
  kColSbAutoGlobal,
  kNumNpyCols
};
extern const char* const kNpyColNames[kNumNpyCols];

// Study columns: method lsh at the study budget, then SB-auto with
// kStudyGlobalKeys[v] global keys, then SB-auto with two hash rounds.
enum StudyCol {
  kStudyKMeans3,
  kStudyKMeans8,
  kStudyTwoHashes,  // num_hashes 2, bucket halved (same keys per query)
  kStudyCrossPolytope,
  kStudyFirstGlobal,
  // SB-auto with num_hashes 2 and its LSH bucket halved, no global keys.
  kStudyAutoTwoHashes = kStudyFirstGlobal + 4,
  kNumStudyCols
};
extern const char* const kStudyColNames[kNumStudyCols];
extern const int kStudyGlobalKeys[kNumStudyCols];

// The supports SB-auto chose, counted over (batch, head) slices and seeds.
struct PickCounts {
  int lsh = 0, local = 0, both = 0;
};

// One target's sums over seeds and (window, head) slices.
struct TargetSums {
  int64_t slices = 0, met = 0, exact_slices = 0;
  double achieved_sum = 0;
  // Over the slices not gone exact that report a bound: the achieved error,
  // the reported error_bound, and how many exceeded their bound.
  double approx_achieved_sum = 0, bound_sum = 0;
  int64_t bound_n = 0, bound_missed = 0;
  double cost_sum = 0;  // score_evaluations / exact's, over cost_n calls
  int64_t cost_n = 0;
  double sb_ms = 0, exact_ms = 0;  // timed in the same runs
};

struct StudyCell {
  double err_sum = 0;
  int n = 0;
  double mass_sum = 0;  // SB-auto's support_mass over its head plans
  int mass_n = 0;
};

struct LayerResult {
  int layer = 0;
  AttentionShape shape;
  ExactFigures figures;  // oracle errors at budgets, then study_budget
  double exact_err = 0;  // the backend's exact method (float32)
  // [budget][column][seed] relative errors (NaN for a failed run).
  std::vector<std::vector<std::vector<double>>> err;
  std::vector<PickCounts> picks;    // per budget, SB-auto
  std::vector<TargetSums> targets;  // per --targets entry
  std::vector<StudyCell> study;     // --study only
};

std::string FormatDouble(double x);

void PrintNpyReport(const NpyOptions& o,
                    const std::vector<LayerResult>& results,
                    const std::vector<std::string>& problems, double elapsed_s);

}  // namespace accuracy
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TOOLS_ACCURACY_NPY_REPORT_H_
