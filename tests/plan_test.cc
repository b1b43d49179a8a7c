// scatterbrain/tests/plan_test.cc — Scatterbrain's per-slice choices on the
// CPU backend (kernels/cpu/plan.cc): the support chosen per head (sparse =
// auto), global keys, and the error target with its fallback to exact
// attention; each against the fp64 exact reference, on synthetic families
// and on the real MiniLM attention when its data is present.
#include "kernels/cpu/plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "kernels/backend.h"
#include "kernels/params.h"
#include "tests/testutil/minilm.h"
#include "tests/testutil/reference.h"

namespace scatterbrain {
namespace {

using testing::TestTensors;

std::unique_ptr<Backend> Cpu() {
  auto b = CreateBackend("cpu");
  EXPECT_TRUE(b.ok()) << b.status();
  return std::move(*b);
}

// Relative error of one (batch, head) slice of p.out against ref.
double SliceError(const AttentionParams& p, const std::vector<double>& ref,
                  int64_t b, int64_t h) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < p.seq_q; ++i) {
    const float* o = p.out + b * p.out_strides.batch + h * p.out_strides.head +
                     i * p.out_strides.row;
    const double* r = ref.data() + ((b * p.heads + h) * p.seq_q + i) * p.dim_v;
    for (int64_t c = 0; c < p.dim_v; ++c) {
      num += (o[c] - r[c]) * (o[c] - r[c]);
      den += r[c] * r[c];
    }
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

AttentionParams Sb(AttentionParams p, int budget, SparseSupport sparse) {
  p.method = Method::kScatterbrain;
  p.num_features = budget / 2;
  p.bucket_size = budget / 2;
  p.window = budget / 2;
  p.sparse = sparse;
  p.seed = 1;
  return p;
}

TEST(RelativeErrorBound, RatioAndBound) {
  double est = 0;
  // e = 0.01 y on every row: estimate 0.1, no spread, bound = estimate.
  std::vector<double> y = {1, 2, 3, 4}, e = {0.01, 0.02, 0.03, 0.04};
  EXPECT_NEAR(cpu::RelativeErrorBound(e, y, 100, 2.0, &est), 0.1, 1e-12);
  EXPECT_NEAR(est, 0.1, 1e-12);
  // Spread raises the bound above the estimate.
  e = {0.0, 0.04, 0.0, 0.06};
  const double bound = cpu::RelativeErrorBound(e, y, 100, 2.0, &est);
  EXPECT_NEAR(est, 0.1, 1e-12);
  EXPECT_GT(bound, est);
  // The whole population sampled: no uncertainty left.
  EXPECT_NEAR(cpu::RelativeErrorBound(e, y, 4, 2.0, &est), 0.1, 1e-12);
  // Too few rows: no bound.
  EXPECT_TRUE(std::isinf(cpu::RelativeErrorBound({1.0}, {1.0}, 9, 2, &est)));
}

TEST(SparseAuto, ChoosesPerHeadDeterministicallyAndReports) {
  auto backend = Cpu();
  TestTensors t =
      TestTensors::Make(2, 3, 301, 301, 24, 40, testing::kSmooth, 7);
  AttentionParams p = Sb(t.params, 64, SparseSupport::kAuto);
  auto st = backend->Forward(p);
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_EQ(st->head_plans.size(), 6u);
  std::vector<float> first(t.params.out, t.params.out + 2 * 3 * 301 * 40);
  for (const HeadPlan& hp : st->head_plans) {
    EXPECT_NE(hp.sparse, SparseSupport::kAuto);
    EXPECT_FALSE(hp.exact);
    EXPECT_GE(hp.support_mass, 0.0);
    EXPECT_LE(hp.support_mass, 1.0 + 1e-6);
    EXPECT_EQ(hp.num_features, 32);
  }
  EXPECT_TRUE(t.SentinelsIntact());
  // Same seed, same choices and bits.
  t.ResetOut();
  auto again = backend->Forward(p);
  ASSERT_TRUE(again.ok());
  for (size_t i = 0; i < st->head_plans.size(); ++i) {
    EXPECT_EQ(again->head_plans[i].sparse, st->head_plans[i].sparse);
    EXPECT_EQ(again->head_plans[i].support_mass,
              st->head_plans[i].support_mass);
  }
  EXPECT_TRUE(std::equal(first.begin(), first.end(), t.params.out));
  EXPECT_GT(st->score_evaluations, 0);
  EXPECT_EQ(st->exact_score_evaluations, 2 * 3 * 301 * 301);
}

TEST(SparseAuto, NoWorseThanTheBetterFixedSupportOnTheFamilies) {
  auto backend = Cpu();
  for (testing::Family fam :
       {testing::kGaussian, testing::kClustered, testing::kSmooth}) {
    TestTensors t = TestTensors::Make(1, 4, 1024, 1024, 64, 64, fam, 3);
    const std::vector<double> ref = testing::ExactAttentionDouble(t.params);
    double err[3];
    const SparseSupport kinds[3] = {SparseSupport::kLsh, SparseSupport::kLocal,
                                    SparseSupport::kAuto};
    for (int k = 0; k < 3; ++k) {
      t.ResetOut();
      AttentionParams p = Sb(t.params, 128, kinds[k]);
      ASSERT_TRUE(backend->Forward(p).ok());
      err[k] = testing::RelativeError(p, ref);
    }
    std::printf("%-10s lsh %.4f local %.4f auto %.4f\n",
                testing::FamilyName(fam), err[0], err[1], err[2]);
    EXPECT_LE(err[2], 1.1 * std::min(err[0], err[1]) + 1e-3)
        << testing::FamilyName(fam);
  }
}

TEST(SparseAuto, CausalKeyLengthsAndOddSizesStayInBounds) {
  auto backend = Cpu();
  TestTensors t = TestTensors::Make(2, 2, 77, 133, 20, 12, testing::kGaussian,
                                    5, testing::kPadded);
  t.SetKeyLengths({133, 90});
  AttentionParams p = Sb(t.params, 32, SparseSupport::kAuto);
  p.causal = true;
  p.global_keys = 3;
  p.target_error = 0.3;
  auto st = backend->Forward(p);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_TRUE(t.SentinelsIntact());
  const std::vector<double> ref = testing::ExactAttentionDouble(p);
  for (const HeadPlan& hp : st->head_plans) {
    const double e = SliceError(p, ref, hp.batch, hp.head);
    EXPECT_TRUE(std::isfinite(e));
    EXPECT_LE(e, 0.3) << hp.batch << "," << hp.head;
  }
}

TEST(TargetError, MetOnTheFamiliesAndCheaperThanExactWhenLoose) {
  auto backend = Cpu();
  int slices = 0, met = 0;
  for (testing::Family fam :
       {testing::kGaussian, testing::kClustered, testing::kSmooth}) {
    for (double target : {0.1, 0.25}) {
      TestTensors t = TestTensors::Make(1, 8, 1024, 1024, 32, 32, fam, 11);
      const std::vector<double> ref = testing::ExactAttentionDouble(t.params);
      AttentionParams p = Sb(t.params, 256, SparseSupport::kAuto);
      p.target_error = target;
      auto st = backend->Forward(p);
      ASSERT_TRUE(st.ok()) << st.status();
      ASSERT_EQ(st->head_plans.size(), 8u);
      int exact = 0;
      for (const HeadPlan& hp : st->head_plans) {
        const double e = SliceError(p, ref, hp.batch, hp.head);
        ++slices;
        met += e <= target;
        exact += hp.exact;
        if (!hp.exact) {
          EXPECT_LE(hp.error_bound, target);
        }
        EXPECT_GE(hp.error_bound, 0.0);
      }
      EXPECT_GE(st->error_bound, 0.0);
      EXPECT_LE(st->error_bound, target);
      std::printf("%-10s target %.2f  exact slices %d  cost %.3f of exact\n",
                  testing::FamilyName(fam), target, exact,
                  double(st->score_evaluations) / st->exact_score_evaluations);
      // Met cheaply where the data allows; where it does not (exact
      // fallback) the ladder's waste stays small.
      if (target == 0.25 && fam == testing::kSmooth) {
        EXPECT_LT(st->score_evaluations, st->exact_score_evaluations / 2);
      }
      EXPECT_LT(st->score_evaluations, 1.2 * st->exact_score_evaluations);
    }
  }
  // The bound is statistical (README: Accuracy, error target): 95%.
  EXPECT_GE(met, 0.95 * slices);
}

TEST(TargetError, FallsBackToExactWhenNothingCheaperMeetsIt) {
  auto backend = Cpu();
  TestTensors t = TestTensors::Make(1, 3, 300, 300, 16, 16, testing::kGaussian,
                                    2, testing::kPadded);
  AttentionParams p = Sb(t.params, 64, SparseSupport::kLsh);
  p.target_error = 1e-4;
  auto st = backend->Forward(p);
  ASSERT_TRUE(st.ok()) << st.status();
  const std::vector<double> ref = testing::ExactAttentionDouble(p);
  EXPECT_LT(testing::RelativeError(p, ref), 1e-5);
  ASSERT_EQ(st->head_plans.size(), 3u);
  for (const HeadPlan& hp : st->head_plans) {
    EXPECT_TRUE(hp.exact);
    EXPECT_EQ(hp.error_bound, 0.0);
  }
  EXPECT_EQ(st->error_bound, 0.0);
  EXPECT_TRUE(t.SentinelsIntact());
  // Exact's cost, plus the ladder tried before it.
  EXPECT_GE(st->score_evaluations, st->exact_score_evaluations);
}

TEST(GlobalKeys, FindAKeyEveryQueryAttendsTo) {
  auto backend = Cpu();
  TestTensors t =
      TestTensors::Make(1, 2, 512, 512, 32, 32, testing::kGaussian, 4);
  // Key 0 aligned with every query (a [CLS] column): a large logit bonus.
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t c = 0; c < 32; ++c) t.K(0, h, 0, c) = 0.0f;
    for (int64_t i = 0; i < 512; ++i) t.Q(0, h, i, 0) = 3.0f;
    t.K(0, h, 0, 0) = 12.0f;
  }
  const std::vector<double> ref = testing::ExactAttentionDouble(t.params);
  double err[2];
  for (int g = 0; g < 2; ++g) {
    t.ResetOut();
    AttentionParams p = Sb(t.params, 64, SparseSupport::kLsh);
    p.global_keys = g * 4;
    auto st = backend->Forward(p);
    ASSERT_TRUE(st.ok());
    err[g] = testing::RelativeError(p, ref);
    if (g == 1) {
      ASSERT_EQ(st->head_plans.size(), 2u);
      for (const HeadPlan& hp : st->head_plans) EXPECT_GE(hp.global_keys, 1);
    }
  }
  std::printf("global keys: without %.4f with %.4f\n", err[0], err[1]);
  EXPECT_LT(err[1], err[0]);
}

TEST(Validation, TargetErrorRange) {
  auto backend = Cpu();
  TestTensors t = TestTensors::Make(1, 1, 8, 8, 4, 4, testing::kGaussian, 1);
  AttentionParams p = Sb(t.params, 8, SparseSupport::kAuto);
  for (double bad : {-0.1, 1.0, std::numeric_limits<double>::quiet_NaN()}) {
    p.target_error = bad;
    EXPECT_EQ(backend->Forward(p).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  p.target_error = 0.1;
  p.method = Method::kExact;
  EXPECT_EQ(backend->Forward(p).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WorkspaceBytes, BoundsThePlannedPeak) {
  auto backend = Cpu();
  TestTensors t =
      TestTensors::Make(1, 2, 700, 700, 32, 48, testing::kClustered, 9);
  for (double target : {0.0, 0.05}) {
    AttentionParams p = Sb(t.params, 64, SparseSupport::kAuto);
    p.global_keys = 4;
    p.target_error = target;
    auto st = backend->Forward(p);
    ASSERT_TRUE(st.ok());
    EXPECT_LE(st->workspace_bytes, backend->WorkspaceBytes(p)) << target;
  }
}

// The real attention of all-MiniLM-L6-v2 (all 6 layers, both windows, 12
// heads): auto is never much worse than the better fixed support, and the
// error target holds on nearly every slice.
TEST(RealAttention, AutoAndTargetOnMiniLm) {
  const std::string dir = testing::MiniLmDir();
  if (dir.empty()) GTEST_SKIP() << "no MiniLM data (set SB_MINILM_DIR)";
  auto backend = Cpu();
  int slices = 0, met = 0;
  for (int layer = 0; layer < 6; ++layer) {
    auto in = testing::LoadMiniLmLayer(dir, layer);
    ASSERT_TRUE(in.ok()) << in.status();
    AttentionParams base;
    base.batch = in->batch;
    base.heads = in->heads;
    base.seq_q = base.seq_k = in->n;
    base.dim = base.dim_v = in->d;
    base.q = in->q.data();
    base.k = in->k.data();
    base.v = in->v.data();
    std::vector<float> out(in->q.size());
    base.out = out.data();
    SetContiguousStrides(base);
    const std::vector<double> ref = testing::ExactAttentionDouble(base);
    double err[3];
    const SparseSupport kinds[3] = {SparseSupport::kLsh, SparseSupport::kLocal,
                                    SparseSupport::kAuto};
    for (int k = 0; k < 3; ++k) {
      AttentionParams p = Sb(base, 64, kinds[k]);
      p.global_keys = k == 2 ? 4 : 0;
      ASSERT_TRUE(backend->Forward(p).ok());
      err[k] = testing::RelativeError(p, ref);
    }
    AttentionParams p = Sb(base, 256, SparseSupport::kAuto);
    p.target_error = 0.25;
    auto st = backend->Forward(p);
    ASSERT_TRUE(st.ok());
    int layer_met = 0;
    for (const HeadPlan& hp : st->head_plans) {
      const bool ok = SliceError(p, ref, hp.batch, hp.head) <= 0.25;
      layer_met += ok;
      // N = 512 < kMinLadderKeys: nothing is faster than exact, no search.
      EXPECT_TRUE(hp.exact);
    }
    EXPECT_EQ(st->score_evaluations, st->exact_score_evaluations);
    slices += static_cast<int>(st->head_plans.size());
    met += layer_met;
    std::printf(
        "L%d budget 64: lsh %.4f local %.4f auto %.4f | target 0.25: %d/%zu "
        "met, cost %.3f of exact\n",
        layer, err[0], err[1], err[2], layer_met, st->head_plans.size(),
        double(st->score_evaluations) / st->exact_score_evaluations);
    EXPECT_LE(err[2], 1.05 * std::min(err[0], err[1])) << "layer " << layer;
  }
  EXPECT_GE(met, 0.95 * slices);
}

}  // namespace
}  // namespace scatterbrain
