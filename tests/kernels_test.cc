// scatterbrain/tests/kernels_test.cc — the CPU backend against the fp64
// exact reference: every method, odd sizes, layouts with sentinels, causal,
// padding, cross-attention, extreme inputs, and the statistical properties
// of the estimators.
#include <cmath>
#include <memory>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/ops.h"
#include "kernels/error_estimate.h"
#include "kernels/random_draws.h"
#include "kernels/validate.h"
#include "tests/testutil/reference.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace {

using testing::Family;
using testing::Layout;
using testing::TestTensors;

constexpr Method kAllMethods[] = {Method::kExact, Method::kPerformer,
                                  Method::kLsh, Method::kLocal,
                                  Method::kScatterbrain};

std::unique_ptr<Backend> Cpu() {
  auto b = CreateBackend("cpu");
  EXPECT_TRUE(b.ok()) << b.status();
  return std::move(*b);
}

AttentionStats RunChecked(Backend& be, TestTensors& t) {
  auto st = be.Forward(t.params);
  EXPECT_TRUE(st.ok()) << st.status();
  EXPECT_TRUE(t.SentinelsIntact()) << t.SentinelReport();
  EXPECT_EQ(t.UnwrittenOutputs(), 0);
  EXPECT_TRUE(t.OutputFinite());
  return st.ok() ? *st : AttentionStats{};
}

struct Shape {
  int64_t b, h, nq, nk, d, dv;
};
constexpr Shape kOddShapes[] = {
    {1, 1, 1, 1, 48, 40},       {2, 3, 97, 97, 48, 40},
    {1, 2, 1025, 1025, 48, 40}, {2, 2, 97, 130, 48, 40},
    {1, 2, 130, 97, 48, 40},    {3, 1, 5, 33, 7, 3}};

// ---------------------------------------------------------------------------
// Exact paths: exact, local (exact on its window), and full supports.
// ---------------------------------------------------------------------------

TEST(ExactTest, MatchesFp64OnOddShapesLayoutsCausalPadding) {
  auto be = Cpu();
  for (const Shape& s : kOddShapes) {
    for (Layout layout : testing::AllLayouts()) {
      for (bool causal : {false, true}) {
        for (bool padded : {false, true}) {
          TestTensors t = testing::Make(s.b, s.h, s.nq, s.nk, s.d, s.dv,
                                        testing::kGaussian, 11, layout, 2.0);
          if (padded) {
            std::vector<int32_t> len(s.b);
            for (int64_t b = 0; b < s.b; ++b)
              len[b] =
                  static_cast<int32_t>(std::max<int64_t>(1, s.nk - 3 * b - 1));
            t.SetKeyLengths(len);
          }
          t.params.method = Method::kExact;
          t.params.causal = causal;
          RunChecked(*be, t);
          EXPECT_LT(t.RelativeError(t.Reference()), 2e-5)
              << s.nq << "x" << s.nk << " layout "
              << testing::LayoutName(layout) << " causal " << causal
              << " padded " << padded;
        }
      }
    }
  }
}

TEST(LocalTest, ExactOnItsWindow) {
  auto be = Cpu();
  for (const Shape& s : kOddShapes) {
    for (bool causal : {false, true}) {
      for (int window : {1, 16, 65}) {
        TestTensors t = testing::Make(s.b, s.h, s.nq, s.nk, s.d, s.dv,
                                      testing::kGaussian, 3, testing::kPadded);
        t.params.method = Method::kLocal;
        t.params.window = window;
        t.params.causal = causal;
        RunChecked(*be, t);
        const auto ref = testing::LocalAttentionDouble(t.params);
        EXPECT_LT(t.RelativeError(ref), 2e-5) << "window " << window;
      }
    }
  }
}

TEST(LshTest, OneBucketCoveringAllKeysIsExact) {
  auto be = Cpu();
  for (const Shape& s : kOddShapes) {
    for (bool causal : {false, true}) {
      TestTensors t = testing::Make(s.b, s.h, s.nq, s.nk, s.d, s.dv,
                                    testing::kGaussian, 5, testing::kBNHD);
      t.params.method = Method::kLsh;
      t.params.bucket_size = static_cast<int>(s.nk);
      t.params.num_hashes = 3;
      t.params.causal = causal;
      RunChecked(*be, t);
      EXPECT_LT(t.RelativeError(t.Reference()), 2e-5);
    }
  }
}

TEST(ScatterbrainTest, SupportCoveringEveryPairEqualsExact) {
  auto be = Cpu();
  for (const Shape& s : kOddShapes) {
    for (SparseSupport sparse :
         {SparseSupport::kLsh, SparseSupport::kLocal, SparseSupport::kBoth}) {
      for (Estimator est : {Estimator::kCalibrated, Estimator::kUnbiased}) {
        for (bool causal : {false, true}) {
          TestTensors t =
              testing::Make(s.b, s.h, s.nq, s.nk, s.d, s.dv, testing::kGaussian,
                            9, testing::kPadded, 1.5);
          std::vector<int32_t> len(s.b, static_cast<int32_t>(s.nk));
          len.back() = static_cast<int32_t>((s.nk + 1) / 2);
          t.SetKeyLengths(len);
          t.params.method = Method::kScatterbrain;
          t.params.sparse = sparse;
          t.params.estimator = est;
          t.params.causal = causal;
          t.params.num_features = 16;
          t.params.bucket_size = static_cast<int>(s.nk);
          t.params.num_hashes = 2;
          t.params.window = static_cast<int>(2 * (s.nq + s.nk) + 1);
          RunChecked(*be, t);
          EXPECT_LT(t.RelativeError(t.Reference()), 1e-5)
              << SparseName(sparse) << " " << EstimatorName(est) << " causal "
              << causal << " shape " << s.nq << "x" << s.nk;
        }
      }
    }
  }
}

TEST(ScaleTest, ACustomSoftmaxScaleIsHonouredEverywhere) {
  // Every path that is exact for these settings must use the given scale.
  auto be = Cpu();
  TestTensors t = testing::Make(2, 2, 97, 97, 48, 40, testing::kGaussian, 12);
  for (float scale : {0.05f, 0.4f}) {
    t.params.scale = scale;
    const auto ref = t.Reference();
    for (Method m : kAllMethods) {
      if (m == Method::kPerformer) continue;  // never exact
      t.params.method = m;
      t.params.bucket_size = 97;
      t.params.window = 400;
      t.params.num_features = 8;
      t.ResetOut();
      RunChecked(*be, t);
      EXPECT_LT(t.RelativeError(ref), 2e-5) << MethodName(m) << " " << scale;
    }
    // Performer is never exact: its output must be much closer to the
    // reference at its own scale than at the other one.
    AttentionParams other = t.params;
    other.scale = scale < 0.1f ? 0.4f : 0.05f;
    const auto ref_other = testing::ExactAttentionDouble(other);
    t.params.method = Method::kPerformer;
    t.params.num_features = 256;
    t.ResetOut();
    RunChecked(*be, t);
    EXPECT_LT(t.RelativeError(ref), 0.8 * t.RelativeError(ref_other)) << scale;
  }
}

// ---------------------------------------------------------------------------
// The sparse support: each pair counted once across rounds and the window.
// ---------------------------------------------------------------------------

TEST(SupportTest, PairsFoundInSeveralRoundsCountOnce) {
  // With V = identity, ev[i][j] is exactly the weight of pair (i, j) in S_i.
  const int64_t nq = 70, nk = 64, d = 16;
  TestTensors t = testing::Make(1, 1, nq, nk, d, nk, testing::kGaussian, 4);
  for (int64_t j = 0; j < nk; ++j)
    for (int64_t c = 0; c < nk; ++c) t.V(0, 0, j, c) = j == c ? 1.0f : 0.0f;
  for (bool local : {false, true}) {
    cpu::Slice s = cpu::MakeSlice(t.params, 0, 0);
    cpu::SupportOptions o;
    o.lsh = true;
    o.local = local;
    o.bucket_size = 8;
    o.num_hashes = 6;
    o.hash_projections = 1;  // coarse hash: rounds overlap a lot
    o.window = 9;
    cpu::WorkspaceMeter meter;
    cpu::SparseAcc acc;
    cpu::AccumulateSupport(s, o, nullptr, nullptr, &meter, &acc);
    int64_t total = 0;
    for (int64_t i = 0; i < nq; ++i) {
      int64_t members = 0;
      double logit_max = -1e300;
      std::vector<double> logit(nk);
      for (int64_t j = 0; j < nk; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < d; ++c)
          dot += double(t.Q(0, 0, i, c)) * t.K(0, 0, j, c);
        logit[j] = dot * s.tau;
      }
      for (int64_t j = 0; j < nk; ++j) {
        const float w = acc.ev[i * nk + j];
        if (w > 0) {
          ++members;
          logit_max = std::max(logit_max, logit[j]);
        }
      }
      EXPECT_EQ(members, acc.count[i]) << "row " << i;
      EXPECT_LE(acc.count[i], nk);
      EXPECT_NEAR(logit_max, acc.emax[i], 1e-4);
      for (int64_t j = 0; j < nk; ++j) {
        const float w = acc.ev[i * nk + j];
        if (w > 0) {
          EXPECT_NEAR(w, std::exp(logit[j] - acc.emax[i]), 1e-5);
        }
      }
      total += members;
    }
    // Six rounds of size-8 chunks: far more than one chunk per row on average.
    EXPECT_GT(total, nq * 8 * 2);
  }
}

TEST(SupportTest, EveryQueryMeetsOneEqualSizeChunkPerRound) {
  // 2100 keys in chunks of 8: 263 clusters, beyond the flat k-means limit
  // (the two-level tree), and 33 (flat) for chunks of 64.
  TestTensors t = testing::Make(1, 1, 700, 2100, 16, 8, testing::kClustered, 2);
  for (LshHash hash : {LshHash::kKMeans, LshHash::kCrossPolytope}) {
    for (int bucket : {8, 64}) {
      const cpu::Slice s = cpu::MakeSlice(t.params, 0, 0);
      cpu::SupportOptions o;
      o.lsh = true;
      o.hash = hash;
      o.bucket_size = bucket;
      cpu::WorkspaceMeter meter;
      cpu::SparseAcc acc;
      cpu::AccumulateSupport(s, o, nullptr, nullptr, &meter, &acc);
      const int64_t chunks = (2100 + bucket - 1) / bucket;
      for (int64_t i = 0; i < s.nq; ++i) {
        EXPECT_GE(acc.count[i], 2100 / chunks) << LshHashName(hash);
        EXPECT_LE(acc.count[i], (2100 + chunks - 1) / chunks);
      }
    }
  }
}

TEST(SupportTest, FusedLowRankPathMatchesTheGeneralPath) {
  // One non-causal LSH round fuses the low-rank sums into the support pass;
  // it must give what ComputeLowRank + the pairwise estimate on S give.
  for (LshHash hash : {LshHash::kKMeans, LshHash::kCrossPolytope}) {
    TestTensors t = testing::Make(2, 2, 301, 257, 48, 40, testing::kClustered,
                                  3, testing::kPadded);
    t.SetKeyLengths({257, 200});
    for (int64_t b = 0; b < 2; ++b) {
      const cpu::Slice s = cpu::MakeSlice(t.params, b, 1);
      cpu::WorkspaceMeter meter;
      cpu::Features f;
      cpu::ComputeFeatures(s, DrawFeatureProjections(5, 1, 16, 48), 16, &meter,
                           &f);
      cpu::SupportOptions o;
      o.lsh = true;
      o.hash = hash;
      o.bucket_size = 32;
      o.seed = 9;
      ASSERT_TRUE(cpu::FusesLowRank(s, o));
      cpu::LowRank lr_fused;
      cpu::SparseAcc fused;
      cpu::AccumulateSupport(s, o, &f, &lr_fused, &meter, &fused);
      o.allow_fused = false;
      cpu::LowRank lr;
      cpu::ComputeLowRank(s, f, &meter, &lr);
      cpu::SparseAcc general;
      cpu::AccumulateSupport(s, o, &f, &lr, &meter, &general);
      for (int64_t i = 0; i < s.nq; ++i) {
        const double scale = std::fabs(lr.den[i]) + 1e-30;
        EXPECT_NEAR(lr_fused.den[i], lr.den[i], 1e-5 * scale);
        EXPECT_NEAR(fused.f1[i], general.f1[i], 1e-5 * scale);
        EXPECT_EQ(fused.count[i], general.count[i]);
        EXPECT_EQ(fused.e1[i], general.e1[i]);
        for (int64_t c = 0; c < s.dv; ++c)
          EXPECT_NEAR(fused.lv[i * s.dv + c], general.lv[i * s.dv + c],
                      1e-4 * scale)
              << "row " << i;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Unbiasedness: E[phi(q).phi(k)] = exp(tau q.k), and the Scatterbrain
// (textbook) estimate exact-on-S plus low-rank elsewhere is unbiased too.
// ---------------------------------------------------------------------------

TEST(EstimatorTest, LowRankAndScatterbrainScoreEstimatesAreUnbiased) {
  const int64_t nq = 3, nk = 24, d = 8;
  TestTensors t = testing::Make(1, 1, nq, nk, d, nk, testing::kGaussian, 21,
                                testing::kContiguous, 0.7);
  for (int64_t j = 0; j < nk; ++j)
    for (int64_t c = 0; c < nk; ++c) t.V(0, 0, j, c) = j == c ? 1.0f : 0.0f;
  const cpu::Slice s = cpu::MakeSlice(t.params, 0, 0);
  std::vector<double> exact(nq * nk);
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t j = 0; j < nk; ++j) {
      double dot = 0;
      for (int64_t c = 0; c < d; ++c)
        dot += double(t.Q(0, 0, i, c)) * t.K(0, 0, j, c);
      exact[i * nk + j] = std::exp(dot * s.tau);
    }
  const int kTrials = 3000;
  const int r = 4;  // 8 features
  std::vector<double> sum_lr(nq * nk), sq_lr(nq * nk), sum_sb(nq * nk),
      sq_sb(nq * nk);
  int64_t in_support = 0;
  for (int trial = 0; trial < kTrials; ++trial) {
    cpu::WorkspaceMeter meter;
    cpu::Features f;
    cpu::ComputeFeatures(s, DrawFeatureProjections(trial, 0, r, d), r, &meter,
                         &f);
    cpu::SupportOptions o;
    o.lsh = true;
    o.bucket_size = 6;
    o.num_hashes = 2;
    o.hash_projections = 2;
    o.seed = 1000003ull * trial + 17;
    cpu::LowRank lr;
    cpu::ComputeLowRank(s, f, &meter, &lr);
    cpu::SparseAcc acc;
    cpu::AccumulateSupport(s, o, &f, &lr, &meter, &acc);
    for (int64_t i = 0; i < nq; ++i) {
      for (int64_t j = 0; j < nk; ++j) {
        double phi = 0;
        for (int l = 0; l < f.m; ++l)
          phi += double(f.q[i * f.m + l]) * f.k[j * f.m + l];
        phi *= std::exp(double(f.qscale[i]) + f.kscale);
        const bool in_s = acc.ev[i * nk + j] > 0;
        in_support += in_s;
        const double sb = in_s ? exact[i * nk + j] : phi;
        sum_lr[i * nk + j] += phi;
        sq_lr[i * nk + j] += phi * phi;
        sum_sb[i * nk + j] += sb;
        sq_sb[i * nk + j] += sb * sb;
      }
    }
  }
  EXPECT_GT(in_support, kTrials * nq * 6);
  for (int64_t e = 0; e < nq * nk; ++e) {
    for (auto [sum, sq, name] :
         {std::tuple{sum_lr[e], sq_lr[e], "low-rank"},
          std::tuple{sum_sb[e], sq_sb[e], "scatterbrain"}}) {
      const double mean = sum / kTrials;
      const double var = std::max(sq / kTrials - mean * mean, 0.0);
      const double se = std::sqrt(var / kTrials);
      // 5 standard errors: a false alarm has probability ~1e-6 per entry.
      EXPECT_NEAR(mean, exact[e], 5 * se + 1e-9 * exact[e])
          << name << " entry " << e;
    }
  }
}

// ---------------------------------------------------------------------------
// Accuracy: error budgets against fp64 and monotone in the budget.
// ---------------------------------------------------------------------------

double ErrorOf(Backend& be, TestTensors& t, const std::vector<double>& ref) {
  t.ResetOut();
  RunChecked(be, t);
  return t.RelativeError(ref);
}

TEST(AccuracyTest, ErrorShrinksAsTheBudgetGrows) {
  auto be = Cpu();
  TestTensors t = testing::Make(1, 4, 1025, 1025, 48, 40, testing::kGaussian,
                                13, testing::kContiguous, 0.25);
  const auto ref = t.Reference();
  t.params.method = Method::kPerformer;
  t.params.num_features = 8;
  const double perf_small = ErrorOf(*be, t, ref);
  t.params.num_features = 512;
  const double perf_large = ErrorOf(*be, t, ref);
  EXPECT_LT(perf_large, 0.6 * perf_small);

  t.params.method = Method::kLsh;
  t.params.bucket_size = 16;
  const double lsh_small = ErrorOf(*be, t, ref);
  t.params.bucket_size = 512;
  const double lsh_large = ErrorOf(*be, t, ref);
  EXPECT_LT(lsh_large, 0.5 * lsh_small);

  t.params.method = Method::kScatterbrain;
  t.params.num_features = 8;
  t.params.bucket_size = 8;
  const double sb_small = ErrorOf(*be, t, ref);
  t.params.num_features = 256;
  t.params.bucket_size = 256;
  const double sb_large = ErrorOf(*be, t, ref);
  EXPECT_LT(sb_large, sb_small);
  EXPECT_LT(sb_large, 0.4);
}

TEST(AccuracyTest, ScatterbrainBeatsItsPartsAndNeverExceedsZeroAnswer) {
  auto be = Cpu();
  struct Case {
    Family family;
    double logit_std;
  };
  for (Case c : {Case{testing::kGaussian, 0.25}, Case{testing::kGaussian, 1.0},
                 Case{testing::kGaussian, 4.0}, Case{testing::kClustered, 1.0},
                 Case{testing::kSmooth, 1.0}}) {
    TestTensors t = testing::Make(1, 4, 1024, 1024, 64, 64, c.family, 5,
                                  testing::kContiguous, c.logit_std);
    const auto ref = t.Reference();
    const int budget = 128;
    t.params.method = Method::kPerformer;
    t.params.num_features = budget;
    const double perf = ErrorOf(*be, t, ref);
    t.params.method = Method::kLsh;
    t.params.bucket_size = budget;
    const double lsh = ErrorOf(*be, t, ref);
    t.params.method = Method::kScatterbrain;
    t.params.num_features = budget / 2;
    t.params.bucket_size = budget / 2;
    const double sb = ErrorOf(*be, t, ref);
    SCOPED_TRACE(testing::FamilyName(c.family));
    SCOPED_TRACE(c.logit_std);
    EXPECT_LE(sb, 1.1 * std::min(perf, lsh)) << perf << " " << lsh;
    EXPECT_LE(sb, 1.0);
    // The textbook estimator stays available and finite.
    t.params.estimator = Estimator::kUnbiased;
    const double sb_unbiased = ErrorOf(*be, t, ref);
    EXPECT_TRUE(std::isfinite(sb_unbiased));
  }
}

// ---------------------------------------------------------------------------
// Masks: a row's output never depends on keys it must not see.
// ---------------------------------------------------------------------------

// perturb_keys: also change the hidden keys (not only their values). With
// causal masking, LSH clusters are formed over the whole sequence (as in
// Reformer and SMYRF), so where future keys hash can change which past keys
// share a row's cluster, and the per-slice key log-scale of the random
// features can move by rounding: those cases perturb values only, or allow
// rounding (tol).
void ExpectIndependentOfHiddenKeys(Method method, bool causal, bool padding,
                                   bool perturb_keys, double tol) {
  auto be = Cpu();
  const int64_t n = 97;
  TestTensors t = testing::Make(2, 2, n, n, 48, 40, testing::kGaussian, 8,
                                testing::kContiguous, 1.0);
  t.params.method = method;
  t.params.causal = causal;
  t.params.num_features = 32;
  t.params.bucket_size = 16;
  t.params.num_hashes = 2;
  t.params.window = 17;
  t.params.calibration_rows = 0;  // calibration reads whole rows by design
  if (padding) t.SetKeyLengths({60, 97});
  RunChecked(*be, t);
  const std::vector<float> before = t.OutContiguous();
  // Change everything hidden: keys/values after row 50 (causal) or past the
  // length of batch 0 (padding). Rows <= 50 of every slice must not move.
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t j = 60; j < n; ++j)
      for (int64_t c = 0; c < 40; ++c) {
        t.V(0, h, j, c) += 100.0f;
        if (perturb_keys) t.K(0, h, j, c % 48) *= -3.0f;
      }
  t.ResetOut();
  RunChecked(*be, t);
  const std::vector<float> after = t.OutContiguous();
  const int64_t rows_checked = padding ? n : 60;
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t i = 0; i < rows_checked; ++i)
      for (int64_t c = 0; c < 40; ++c) {
        const size_t idx = ((0 * 2 + h) * n + i) * 40 + c;
        ASSERT_NEAR(before[idx], after[idx],
                    tol * (1.0 + std::fabs(before[idx])))
            << MethodName(method) << " row " << i << " causal " << causal;
      }
}

TEST(MaskTest, CausalRowsIgnoreFutureKeys) {
  ExpectIndependentOfHiddenKeys(Method::kExact, true, false, true, 0.0);
  ExpectIndependentOfHiddenKeys(Method::kLocal, true, false, true, 0.0);
  ExpectIndependentOfHiddenKeys(Method::kPerformer, true, false, true, 1e-5);
  for (Method m : kAllMethods)
    ExpectIndependentOfHiddenKeys(m, true, false, false, 0.0);
}

TEST(MaskTest, PaddedKeysAreIgnored) {
  for (Method m : kAllMethods)
    ExpectIndependentOfHiddenKeys(m, false, true, true, 0.0);
}

// ---------------------------------------------------------------------------
// Every method on odd shapes, cross-attention, layouts: sane and in budget.
// ---------------------------------------------------------------------------

TEST(AllMethodsTest, OddShapesAllLayoutsStayFiniteAndInBudget) {
  auto be = Cpu();
  for (const Shape& s : kOddShapes) {
    for (Layout layout : testing::AllLayouts()) {
      TestTensors t = testing::Make(s.b, s.h, s.nq, s.nk, s.d, s.dv,
                                    testing::kGaussian, 2, layout, 0.25);
      const auto ref = t.Reference();
      for (Method m : kAllMethods) {
        for (bool causal : {false, true}) {
          t.params.method = m;
          t.params.causal = causal;
          t.params.num_features = 64;
          t.params.bucket_size = 32;
          t.params.window = 32;
          t.ResetOut();
          RunChecked(*be, t);
          const auto r = causal ? [&] {
            AttentionParams p = t.params;
            return testing::ExactAttentionDouble(p);
          }() : ref;
          const double err = t.RelativeError(r);
          // Loose, per-method budgets at logit std 0.25 (the sizes include
          // N = 1 and 5-row cases where a 32-key bucket is the whole row).
          const double budget = m == Method::kExact          ? 2e-5
                                : m == Method::kScatterbrain ? 1.0
                                : m == Method::kPerformer    ? 1.5
                                                             : 12.0;
          EXPECT_LE(err, budget)
              << MethodName(m) << " " << s.nq << "x" << s.nk << " "
              << testing::LayoutName(layout) << " causal " << causal;
        }
      }
    }
  }
}

TEST(ExtremeInputsTest, HugeNormsZerosAndSingleTokenNeverGiveNanOrInf) {
  auto be = Cpu();
  for (Family fam : {testing::kHugeNorm, testing::kZeros}) {
    for (int64_t n : {1, 2, 97}) {
      TestTensors t = testing::Make(1, 2, n, n, 48, 40, fam, 3);
      const auto ref = t.Reference();
      for (Method m : kAllMethods) {
        for (Estimator est : {Estimator::kCalibrated, Estimator::kUnbiased}) {
          for (bool causal : {false, true}) {
            t.params.method = m;
            t.params.estimator = est;
            t.params.causal = causal;
            t.params.num_features = 16;
            t.params.bucket_size = 8;
            t.params.window = 8;
            t.ResetOut();
            auto st = be->Forward(t.params);
            ASSERT_TRUE(st.ok()) << st.status();
            EXPECT_TRUE(t.OutputFinite()) << MethodName(m) << " n=" << n;
            EXPECT_TRUE(t.SentinelsIntact());
            if (n == 1 || (fam == testing::kZeros && m != Method::kLsh &&
                           m != Method::kLocal && !causal)) {
              // One key, or uniform attention: every method is exact.
              EXPECT_LT(
                  t.RelativeError(
                      causal ? testing::ExactAttentionDouble(t.params) : ref),
                  1e-4)
                  << MethodName(m) << " n=" << n;
            }
          }
        }
      }
    }
  }
}

TEST(ExtremeInputsTest, HugeNormScatterbrainCountsItsGuards) {
  auto be = Cpu();
  TestTensors t = testing::Make(1, 2, 200, 200, 32, 32, testing::kHugeNorm, 3);
  const auto ref = t.Reference();
  t.params.method = Method::kScatterbrain;
  t.params.num_features = 16;
  t.params.bucket_size = 16;
  const AttentionStats st = RunChecked(*be, t);
  // Feature products underflow for almost every pair: the low-rank mass is
  // gone and the guard must say so.
  EXPECT_GT(st.denominator_guards + st.fallbacks, 0);
  EXPECT_LE(t.RelativeError(ref), 1.0 + 1e-6);
}

// ---------------------------------------------------------------------------
// Determinism, threads, stats, the error estimator, validation.
// ---------------------------------------------------------------------------

TEST(DeterminismTest, SameSeedSameOutputAnyThreadCount) {
  BackendOptions one_thread, three_threads;
  one_thread.threads = 1;
  three_threads.threads = 3;
  auto be1 = CreateBackend("cpu", one_thread);
  auto be3 = CreateBackend("cpu", three_threads);
  ASSERT_TRUE(be1.ok() && be3.ok());
  Backend& be = **be1;
  TestTensors t = testing::Make(2, 3, 300, 300, 32, 32, testing::kClustered, 1);
  for (Method m : kAllMethods) {
    t.params.method = m;
    t.params.seed = 77;
    t.ResetOut();
    RunChecked(be, t);
    const auto one = t.OutContiguous();
    t.ResetOut();
    RunChecked(**be3, t);
    EXPECT_EQ(one, t.OutContiguous()) << MethodName(m);
    if (m == Method::kPerformer || m == Method::kScatterbrain) {
      t.params.seed = 78;
      t.ResetOut();
      RunChecked(be, t);
      EXPECT_NE(one, t.OutContiguous()) << MethodName(m);
    }
  }
}

TEST(StatsTest, ReportsDenseBytesAndASmallerWorkspace) {
  auto be = Cpu();
  TestTensors t =
      testing::Make(1, 2, 2048, 2048, 64, 64, testing::kGaussian, 1);
  t.params.method = Method::kScatterbrain;
  t.params.num_features = 64;
  t.params.bucket_size = 64;
  const AttentionStats st = RunChecked(*be, t);
  EXPECT_EQ(st.dense_score_bytes, 2 * 2048 * 2048 * 4);
  EXPECT_GT(st.workspace_bytes, 0);
  EXPECT_LT(st.workspace_bytes, st.dense_score_bytes / 4);
}

TEST(ErrorEstimateTest, TracksTheTrueError) {
  auto be = Cpu();
  TestTensors t = testing::Make(1, 4, 513, 513, 32, 32, testing::kGaussian, 6,
                                testing::kPadded, 0.25);
  const auto ref = t.Reference();
  t.params.method = Method::kExact;
  RunChecked(*be, t);
  auto e0 = EstimateRelativeError(t.params, 16, 1);
  ASSERT_TRUE(e0.ok());
  EXPECT_LT(*e0, 1e-5);
  t.params.method = Method::kPerformer;
  t.params.num_features = 16;
  t.ResetOut();
  RunChecked(*be, t);
  auto e1 = EstimateRelativeError(t.params, 128, 2);
  ASSERT_TRUE(e1.ok());
  const double truth = t.RelativeError(ref);
  EXPECT_NEAR(*e1, truth, 0.35 * truth);
}

TEST(ValidateTest, NamesTheBadField) {
  TestTensors t = testing::Make(1, 1, 4, 4, 8, 8, testing::kGaussian, 1);
  auto expect_bad = [&](auto mutate, const std::string& field) {
    AttentionParams p = t.params;
    mutate(p);
    const absl::Status st = ValidateParams(p);
    EXPECT_THAT(
        st, scatterbrain::testutil::StatusIs(absl::StatusCode::kInvalidArgument,
                                             ::testing::StartsWith(field)))
        << field;
    auto be = Cpu();
    EXPECT_EQ(be->Forward(p).status().code(),
              absl::StatusCode::kInvalidArgument);
  };
  expect_bad([](AttentionParams& p) { p.dim = 0; }, "dim");
  expect_bad([](AttentionParams& p) { p.seq_k = 0; }, "seq_k");
  expect_bad([](AttentionParams& p) { p.q = nullptr; }, "q");
  expect_bad([](AttentionParams& p) { p.out_strides.row = 3; },
             "out_strides.row");
  expect_bad([](AttentionParams& p) { p.scale = -1.0f; }, "scale");
  expect_bad([](AttentionParams& p) { p.scale = NAN; }, "scale");
  expect_bad(
      [](AttentionParams& p) {
        p.method = Method::kPerformer;
        p.num_features = 7;
      },
      "num_features");
  expect_bad(
      [](AttentionParams& p) {
        p.method = Method::kLsh;
        p.bucket_size = 0;
      },
      "bucket_size");
  expect_bad(
      [](AttentionParams& p) {
        p.method = Method::kLsh;
        p.num_hashes = 0;
      },
      "num_hashes");
  expect_bad(
      [](AttentionParams& p) {
        p.method = Method::kLocal;
        p.window = 0;
      },
      "window");
  expect_bad([](AttentionParams& p) { p.calibration_rows = -1; },
             "calibration_rows");
  static const int32_t bad_len[] = {9};
  expect_bad([](AttentionParams& p) { p.key_lengths = bad_len; },
             "key_lengths[0]");
  t.Q(0, 0, 2, 3) = INFINITY;
  expect_bad([](AttentionParams&) {}, "q");
}

}  // namespace
}  // namespace scatterbrain

namespace scatterbrain {
namespace {

TEST(DrawCacheTest, ReturnsTheDrawsAndReusesThem) {
  DrawCache cache(/*max_entries=*/3);
  const DrawCache::Draw a = cache.FeatureProjections(5, 1, 32, 16);
  EXPECT_EQ(*a, DrawFeatureProjections(5, 1, 32, 16));
  EXPECT_EQ(cache.FeatureProjections(5, 1, 32, 16), a);  // the same vector
  EXPECT_EQ(cache.hits(), 1);
  EXPECT_EQ(cache.misses(), 1);
  // Every part of the key matters: head, seed, rows, purpose, round.
  EXPECT_NE(*cache.FeatureProjections(5, 2, 32, 16), *a);
  EXPECT_NE(*cache.FeatureProjections(6, 1, 32, 16), *a);
  const DrawCache::Draw h = cache.HashProjections(5, 1, 0, 32, 16);
  EXPECT_EQ(*h, DrawHashProjections(5, 1, 0, 32, 16));
  EXPECT_NE(*cache.HashProjections(5, 1, 1, 32, 16), *h);
  // Bounded: the least recently used went; a held draw stays valid.
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_EQ(*a, DrawFeatureProjections(5, 1, 32, 16));
}

TEST(DrawCacheTest, ConcurrentCallersGetEqualDraws) {
  DrawCache cache(8);
  std::vector<std::thread> threads;
  std::vector<DrawCache::Draw> got(8);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back(
        [&, t] { got[t] = cache.FeatureProjections(9, t % 2, 64, 32); });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 8; ++t) {
    EXPECT_EQ(*got[t], DrawFeatureProjections(9, t % 2, 64, 32)) << t;
  }
}

}  // namespace
}  // namespace scatterbrain

namespace scatterbrain {
namespace {

// WorkspaceBytes is the CPU backend's estimate before the call: never below
// what the call then reports holding at its peak.
TEST(CpuWorkspaceTest, TheQueryBoundsWhatACallHolds) {
  auto be = CreateBackend("cpu");
  ASSERT_TRUE(be.ok());
  struct Shape {
    int64_t nq, nk, d, dv;
    int bucket, window, hashes;
  };
  for (const Shape& sh :
       {Shape{300, 257, 32, 24, 128, 128, 2}, Shape{97, 1025, 48, 40, 16, 8, 1},
        Shape{1025, 130, 64, 64, 64, 300, 3}}) {
    for (Method m : kAllMethods) {
      for (bool causal : {false, true}) {
        for (SparseSupport sp : {SparseSupport::kLsh, SparseSupport::kLocal,
                                 SparseSupport::kBoth}) {
          TestTensors t = testing::Make(2, 3, sh.nq, sh.nk, sh.d, sh.dv,
                                        testing::kClustered, 1);
          t.params.method = m;
          t.params.causal = causal;
          t.params.sparse = sp;
          t.params.bucket_size = sh.bucket;
          t.params.window = sh.window;
          t.params.num_hashes = sh.hashes;
          const AttentionStats st = RunChecked(**be, t);
          EXPECT_LE(st.workspace_bytes, (*be)->WorkspaceBytes(t.params))
              << MethodName(m) << (causal ? " causal " : " ") << SparseName(sp)
              << " " << sh.nq << "x" << sh.nk;
        }
      }
    }
  }
}

}  // namespace
}  // namespace scatterbrain
