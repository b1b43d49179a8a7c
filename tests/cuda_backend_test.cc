// tests/cuda_backend_test.cc — the CUDA backend's numbers: every method and
// option against the fp64 reference and against the CPU backend with the
// same seed, on odd sizes (N = 1, 97, 1025, 4097; d = 32, 48, 64, 128;
// dv != d), causal, key lengths, cross-attention and every layout, with
// sentinels past every output, extreme inputs, masks and stats.
//
// The rules (tests/testutil/gpu.h): exact, performer and local agree with
// the CPU to 1e-4 relative in float32; where a discrete choice can flip on
// rounding (LSH, k-means, calibration) the GPU's end-to-end error against
// fp64 may exceed the CPU's by 5 % + 1e-4. Skipped without a GPU or while
// the cuda backend is not implemented. CudaSmokeTest is the small subset
// scripts/gpu/run runs under compute-sanitizer.
#include <algorithm>
#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/testutil/gpu.h"
#include "tests/testutil/reference.h"

namespace scatterbrain {
namespace {

using testing::Family;
using testing::Layout;
using testing::TestTensors;
using testutil::AllowedGpuError;
using testutil::kCpuAgreement;
using testutil::RelDiff;

// One method with its options.
struct Setting {
  const char* name;
  Method method;
  int num_features = 64;
  int bucket_size = 32;
  int num_hashes = 1;
  int hash_projections = 4;
  LshHash hash = LshHash::kKMeans;
  LshTransform transform = LshTransform::kNone;
  SparseSupport sparse = SparseSupport::kLsh;
  Estimator estimator = Estimator::kCalibrated;
  int window = 33;
  int calibration_rows = 16;
};

const std::vector<Setting>& AllSettings() {
  static const auto* s = new std::vector<Setting>{
      {"exact", Method::kExact},
      {"performer", Method::kPerformer},
      {"local", Method::kLocal},
      {"lsh_kmeans", Method::kLsh, 64, 32, 2},
      {"lsh_xpoly_smyrf", Method::kLsh, 64, 16, 1, 2, LshHash::kCrossPolytope,
       LshTransform::kSmyrf},
      {"sb_lsh", Method::kScatterbrain},
      {"sb_xpoly_unbiased", Method::kScatterbrain, 32, 16, 2, 4,
       LshHash::kCrossPolytope, LshTransform::kNone, SparseSupport::kLsh,
       Estimator::kUnbiased},
      {"sb_local", Method::kScatterbrain, 32, 32, 1, 4, LshHash::kKMeans,
       LshTransform::kNone, SparseSupport::kLocal},
      {"sb_both", Method::kScatterbrain, 64, 32, 2, 4, LshHash::kKMeans,
       LshTransform::kNone, SparseSupport::kBoth, Estimator::kCalibrated, 17},
      {"sb_uncalibrated", Method::kScatterbrain, 64, 32, 1, 4, LshHash::kKMeans,
       LshTransform::kNone, SparseSupport::kLsh, Estimator::kCalibrated, 33, 0},
  };
  return *s;
}

void Apply(const Setting& s, AttentionParams* p) {
  p->method = s.method;
  p->num_features = s.num_features;
  p->bucket_size = s.bucket_size;
  p->num_hashes = s.num_hashes;
  p->hash_projections = s.hash_projections;
  p->lsh_hash = s.hash;
  p->lsh_transform = s.transform;
  p->sparse = s.sparse;
  p->estimator = s.estimator;
  p->window = s.window;
  p->calibration_rows = s.calibration_rows;
  p->seed = 1234;
}

// Methods whose output is a fixed function of the inputs and the draws.
bool Deterministic(Method m) {
  return m == Method::kExact || m == Method::kPerformer || m == Method::kLocal;
}

struct Outcome {
  bool ok = false;
  std::vector<float> out;
  AttentionStats stats;
};

// One Forward with every check on the buffers: status, sentinels past and
// between outputs, every output written and finite.
Outcome RunChecked(Backend& be, TestTensors& t, const std::string& what) {
  t.ResetOut();
  absl::StatusOr<AttentionStats> st = be.Forward(t.params);
  EXPECT_TRUE(st.ok()) << what << ": " << st.status();
  EXPECT_TRUE(t.SentinelsIntact()) << what << ": " << t.SentinelReport();
  EXPECT_EQ(t.UnwrittenOutputs(), 0) << what;
  EXPECT_TRUE(t.OutputFinite()) << what;
  Outcome o;
  o.ok = st.ok();
  o.out = t.OutContiguous();
  if (st.ok()) o.stats = *st;
  return o;
}

double ErrorOf(const std::vector<float>& out, const AttentionParams& p,
               const std::vector<double>& ref) {
  return testing::RelativeError(
      out.data(), ContiguousStrides(p.heads, p.seq_q, p.dim_v), p, ref);
}

class CudaBackendTest : public testutil::CudaTest {
 protected:
  // The CPU and then the GPU on `t` as it is set; compared by the rules
  // above. Returns the GPU's outcome.
  Outcome ExpectMatchesCpu(TestTensors& t, const std::vector<double>& ref,
                           const std::string& what) {
    const Outcome c = RunChecked(cpu(), t, "cpu " + what);
    const Outcome g = RunChecked(cuda(), t, "cuda " + what);
    if (!c.ok || !g.ok) return g;
    EXPECT_EQ(g.stats.dense_score_bytes, c.stats.dense_score_bytes) << what;
    const double cpu_err = ErrorOf(c.out, t.params, ref);
    const double gpu_err = ErrorOf(g.out, t.params, ref);
    if (Deterministic(t.params.method)) {
      const double diff = RelDiff(g.out, c.out);
      NoteCpuDiff(diff);
      EXPECT_LE(diff, kCpuAgreement)
          << what << ": GPU vs CPU (errors vs fp64: gpu " << gpu_err << ", cpu "
          << cpu_err << ")";
    } else {
      EXPECT_LE(gpu_err, AllowedGpuError(cpu_err))
          << what << ": GPU error vs fp64 above the CPU's";
    }
    return g;
  }
};

// ---------------------------------------------------------------------------
// Odd shapes: every method and option, against the CPU and fp64.
// ---------------------------------------------------------------------------

struct Case {
  const char* name;
  int64_t b, h, nq, nk, d, dv;
  bool causal;
  bool key_lengths;
  Layout layout;
};

constexpr Case kCases[] = {
    {"n1", 1, 2, 1, 1, 32, 24, false, false, testing::kContiguous},
    {"n97_lengths", 2, 3, 97, 97, 48, 40, false, true, testing::kPadded},
    {"n97_causal", 2, 3, 97, 97, 48, 40, true, true, testing::kBNHD},
    {"n1025_causal", 1, 4, 1025, 1025, 64, 48, true, false,
     testing::kContiguous},
    {"n1025_d32", 2, 2, 1025, 1025, 32, 64, false, true, testing::kPadded},
    {"n4097_d128", 1, 2, 4097, 4097, 128, 96, false, true,
     testing::kContiguous},
    {"cross_97x1025", 2, 2, 97, 1025, 64, 32, false, true, testing::kPadded},
    {"cross_1025x97_causal", 1, 2, 1025, 97, 32, 64, true, false,
     testing::kBNHD},
};

// gtest prints a case (test names, ctest's list) by its name.
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class CudaShapeTest : public CudaBackendTest,
                      public ::testing::WithParamInterface<Case> {};

TEST_P(CudaShapeTest, EveryMethodMatchesCpuAndFp64) {
  const Case& c = GetParam();
  TestTensors t = testing::Make(c.b, c.h, c.nq, c.nk, c.d, c.dv,
                                testing::kGaussian, 17, c.layout, 1.0);
  if (c.key_lengths) {
    std::vector<int32_t> len(static_cast<size_t>(c.b));
    for (int64_t b = 0; b < c.b; ++b) {
      len[b] = static_cast<int32_t>(std::max<int64_t>(1, c.nk - 7 * b - 3));
    }
    t.SetKeyLengths(len);
  }
  t.params.causal = c.causal;
  const std::vector<double> ref = t.Reference();
  for (const Setting& s : AllSettings()) {
    Apply(s, &t.params);
    const std::string what = absl::StrCat(c.name, " ", s.name);
    const Outcome g = ExpectMatchesCpu(t, ref, what);
    if (!g.ok) continue;
    if (s.method == Method::kExact) {
      EXPECT_LT(ErrorOf(g.out, t.params, ref), 2e-5) << what;
    }
    if (s.method == Method::kLocal) {
      EXPECT_LT(
          ErrorOf(g.out, t.params, testing::LocalAttentionDouble(t.params)),
          2e-5)
          << what;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(OddShapes, CudaShapeTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return std::string(info.param.name);
                         });

// ---------------------------------------------------------------------------
// Supports that cover every pair are exact; a custom scale is honoured.
// ---------------------------------------------------------------------------

TEST_F(CudaBackendTest, SupportCoveringEveryPairIsExact) {
  for (const Case& c : {kCases[1], kCases[2], kCases[6]}) {
    TestTensors t = testing::Make(c.b, c.h, c.nq, c.nk, c.d, c.dv,
                                  testing::kGaussian, 9, c.layout, 1.5);
    t.params.causal = c.causal;
    const std::vector<double> ref = t.Reference();
    for (const Setting& s : AllSettings()) {
      if (s.method != Method::kLsh && s.method != Method::kScatterbrain) {
        continue;
      }
      Apply(s, &t.params);
      t.params.bucket_size = static_cast<int>(c.nk);
      t.params.window = static_cast<int>(2 * (c.nq + c.nk) + 1);
      t.params.num_features = 16;
      const std::string what = absl::StrCat(c.name, " ", s.name, " full");
      const Outcome g = RunChecked(cuda(), t, what);
      if (g.ok) {
        EXPECT_LT(ErrorOf(g.out, t.params, ref), 2e-5) << what;
      }
    }
  }
}

TEST_F(CudaBackendTest, ACustomScaleIsHonoured) {
  TestTensors t = testing::Make(2, 2, 97, 130, 48, 40, testing::kGaussian, 12);
  for (float scale : {0.05f, 0.4f}) {
    t.params.scale = scale;
    const std::vector<double> ref = t.Reference();
    for (const Setting& s : AllSettings()) {
      Apply(s, &t.params);
      t.params.bucket_size = 130;
      t.params.window = 400;
      const std::string what = absl::StrCat(s.name, " scale ", scale);
      const Outcome g = ExpectMatchesCpu(t, ref, what);
      if (g.ok && s.method != Method::kPerformer) {
        EXPECT_LT(ErrorOf(g.out, t.params, ref), 2e-5) << what;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Input families where the sparse and low-rank parts matter.
// ---------------------------------------------------------------------------

TEST_F(CudaBackendTest, EveryFamilyMatchesTheCpusError) {
  struct FamilyCase {
    Family family;
    double logit_std;
  };
  for (FamilyCase f :
       {FamilyCase{testing::kClustered, 1.0}, FamilyCase{testing::kSmooth, 1.0},
        FamilyCase{testing::kRandomV, 1.0}, FamilyCase{testing::kGaussian, 4.0},
        FamilyCase{testing::kGaussian, 0.25}}) {
    TestTensors t = testing::Make(1, 2, 1025, 1025, 64, 64, f.family, 5,
                                  testing::kContiguous, f.logit_std);
    const std::vector<double> ref = t.Reference();
    for (const Setting& s : AllSettings()) {
      Apply(s, &t.params);
      ExpectMatchesCpu(t, ref,
                       absl::StrCat(testing::FamilyName(f.family), " std ",
                                    f.logit_std, " ", s.name));
    }
  }
}

// ---------------------------------------------------------------------------
// Extreme inputs: huge norms (logits ~1e5), zeros, one token.
// ---------------------------------------------------------------------------

TEST_F(CudaBackendTest, ExtremeInputsNeverGiveNanOrInf) {
  for (Family fam : {testing::kHugeNorm, testing::kZeros}) {
    for (int64_t n : {1, 2, 97}) {
      TestTensors t = testing::Make(1, 2, n, n, 48, 40, fam, 3);
      for (bool causal : {false, true}) {
        t.params.causal = causal;
        const std::vector<double> ref = t.Reference();
        for (const Setting& s : AllSettings()) {
          Apply(s, &t.params);
          t.params.num_features = 16;
          t.params.bucket_size = 8;
          t.params.window = 8;
          const std::string what =
              absl::StrCat(testing::FamilyName(fam), " n=", n, " causal ",
                           causal, " ", s.name);
          // Zeros are well conditioned: the CPU rules hold. Huge norms are
          // not (a logit's float32 rounding moves its weight by percents),
          // so there, as for the CPU, finite and in budget is the rule.
          const Outcome g = fam == testing::kZeros
                                ? ExpectMatchesCpu(t, ref, what)
                                : RunChecked(cuda(), t, "cuda " + what);
          if (!g.ok) continue;
          const bool uniform =
              fam == testing::kZeros && s.method != Method::kLsh &&
              s.method != Method::kLocal && s.sparse == SparseSupport::kLsh &&
              s.calibration_rows > 0 && !causal;
          // One key, or uniform attention: exact (as the CPU test states).
          if (n == 1 || uniform) {
            EXPECT_LT(ErrorOf(g.out, t.params, ref), 1e-4) << what;
          }
        }
      }
    }
  }
}

TEST_F(CudaBackendTest, HugeNormScatterbrainCountsItsGuards) {
  TestTensors t = testing::Make(1, 2, 200, 200, 32, 32, testing::kHugeNorm, 3);
  const std::vector<double> ref = t.Reference();
  t.params.method = Method::kScatterbrain;
  t.params.num_features = 16;
  t.params.bucket_size = 16;
  const Outcome g = RunChecked(cuda(), t, "huge norm scatterbrain");
  EXPECT_GT(g.stats.denominator_guards + g.stats.fallbacks, 0);
  EXPECT_LE(ErrorOf(g.out, t.params, ref), 1.0 + 1e-6);
}

// ---------------------------------------------------------------------------
// Masks: a row's output never depends on keys it must not see.
// ---------------------------------------------------------------------------

TEST_F(CudaBackendTest, HiddenKeysNeverReachAnOutput) {
  for (bool causal : {false, true}) {
    for (const Setting& s : AllSettings()) {
      TestTensors t = testing::Make(2, 2, 97, 97, 48, 40, testing::kGaussian, 8,
                                    testing::kPadded);
      Apply(s, &t.params);
      t.params.causal = causal;
      t.params.calibration_rows = 0;  // calibration reads whole rows
      if (!causal) t.SetKeyLengths({60, 97});
      const std::string what = absl::StrCat(s.name, " causal ", causal);
      const Outcome before = RunChecked(cuda(), t, what);
      // Values of keys 60.. of batch 0: past its length, or (causal) in
      // the future of rows < 60.
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t j = 60; j < 97; ++j)
          for (int64_t c = 0; c < 40; ++c) t.V(0, h, j, c) += 100.0f;
      const Outcome after = RunChecked(cuda(), t, what + " perturbed");
      if (!before.ok || !after.ok) continue;
      const int64_t rows = causal ? 60 : 97;
      double worst = 0;
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t c = 0; c < 40; ++c) {
            const size_t idx = static_cast<size_t>((h * 97 + i) * 40 + c);
            worst =
                std::max(worst, std::fabs(before.out[idx] - after.out[idx]) /
                                    (1.0 + std::fabs(before.out[idx])));
          }
      EXPECT_LE(worst, 1e-6) << what;
    }
  }
}

// ---------------------------------------------------------------------------
// Stats and the seed.
// ---------------------------------------------------------------------------

TEST_F(CudaBackendTest, StatsReportDenseBytesAndASmallerWorkspace) {
  TestTensors t =
      testing::Make(1, 2, 2048, 2048, 64, 64, testing::kGaussian, 1);
  t.params.method = Method::kScatterbrain;
  t.params.num_features = 64;
  t.params.bucket_size = 64;
  const Outcome g = RunChecked(cuda(), t, "stats");
  EXPECT_EQ(g.stats.dense_score_bytes, 2 * 2048 * 2048 * 4);
  EXPECT_GT(g.stats.workspace_bytes, 0);
  EXPECT_LT(g.stats.workspace_bytes, g.stats.dense_score_bytes / 4);
  EXPECT_LE(g.stats.workspace_bytes, cuda().WorkspaceBytes(t.params));
}

TEST_F(CudaBackendTest, TheSeedSelectsTheDraws) {
  TestTensors t = testing::Make(1, 2, 300, 300, 32, 32, testing::kClustered, 1);
  const std::vector<double> ref = t.Reference();
  for (Method m : {Method::kPerformer, Method::kScatterbrain}) {
    t.params.method = m;
    t.params.seed = 77;
    const Outcome a = RunChecked(cuda(), t, "seed 77");
    const Outcome b = RunChecked(cuda(), t, "seed 77 again");
    t.params.seed = 78;
    const Outcome c = RunChecked(cuda(), t, "seed 78");
    if (!a.ok || !b.ok || !c.ok) continue;
    if (m == Method::kPerformer) {
      EXPECT_LE(RelDiff(b.out, a.out), 1e-5) << MethodName(m);
    } else {
      EXPECT_LE(ErrorOf(b.out, t.params, ref),
                AllowedGpuError(ErrorOf(a.out, t.params, ref)));
    }
    EXPECT_GT(RelDiff(c.out, a.out), 1e-4) << MethodName(m);
  }
}

// ---------------------------------------------------------------------------
// The compute-sanitizer subset: every method once, small.
// ---------------------------------------------------------------------------

class CudaSmokeTest : public CudaBackendTest {};

TEST_F(CudaSmokeTest, EveryMethodSmall) {
  for (bool causal : {false, true}) {
    TestTensors t = testing::Make(2, 2, 97, 97, 48, 40, testing::kClustered, 4,
                                  testing::kPadded);
    t.SetKeyLengths({97, 61});
    t.params.causal = causal;
    const std::vector<double> ref = t.Reference();
    for (const Setting& s : AllSettings()) {
      Apply(s, &t.params);
      ExpectMatchesCpu(t, ref,
                       absl::StrCat("smoke ", s.name, " causal ", causal));
    }
  }
}

TEST_F(CudaSmokeTest, CrossAttentionSmall) {
  TestTensors t = testing::Make(1, 2, 33, 130, 64, 32, testing::kGaussian, 6,
                                testing::kBNHD);
  t.params.causal = true;
  const std::vector<double> ref = t.Reference();
  for (const Setting& s : AllSettings()) {
    Apply(s, &t.params);
    ExpectMatchesCpu(t, ref, absl::StrCat("smoke cross ", s.name));
  }
}

}  // namespace
}  // namespace scatterbrain
