// scatterbrain/tests/reference_test.cc — checks of the fp64 reference, the
// error metric, the input families and the sentinel guards themselves: every
// other accuracy test trusts these.
#include "tests/testutil/reference.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/params.h"

namespace {

namespace sbt = ::scatterbrain::testing;
using ::scatterbrain::AttentionParams;
using ::scatterbrain::EffectiveScale;

// An independent, deliberately naive long-double evaluation of one output
// row over the visible keys [lo, hi), read through the accessors.
std::vector<double> NaiveRow(const sbt::TestTensors& t, int64_t b, int64_t h,
                             int64_t i, int64_t lo, int64_t hi) {
  const AttentionParams& p = t.params;
  std::vector<double> o(static_cast<size_t>(p.dim_v), 0.0);
  if (hi <= lo) return o;
  const long double tau = EffectiveScale(p);
  std::vector<long double> s;
  long double mx = -std::numeric_limits<long double>::infinity();
  for (int64_t j = lo; j < hi; ++j) {
    long double dot = 0;
    for (int64_t c = 0; c < p.dim; ++c) {
      dot += static_cast<long double>(t.Q(b, h, i, c)) * t.K(b, h, j, c);
    }
    s.push_back(tau * dot);
    mx = std::max(mx, s.back());
  }
  long double den = 0;
  std::vector<long double> num(o.size(), 0.0L);
  for (int64_t j = lo; j < hi; ++j) {
    const long double w = std::exp(s[j - lo] - mx);
    den += w;
    for (int64_t c = 0; c < p.dim_v; ++c) num[c] += w * t.V(b, h, j, c);
  }
  for (int64_t c = 0; c < p.dim_v; ++c) {
    o[c] = static_cast<double>(num[c] / den);
  }
  return o;
}

// ref element (b, h, i, c) of a contiguous [B, H, Nq, dv] reference.
double RefAt(const std::vector<double>& ref, const AttentionParams& p,
             int64_t b, int64_t h, int64_t i, int64_t c) {
  return ref[((b * p.heads + h) * p.seq_q + i) * p.dim_v + c];
}

void ExpectRowNear(const std::vector<double>& ref, const AttentionParams& p,
                   int64_t b, int64_t h, int64_t i,
                   const std::vector<double>& want, double tol) {
  for (int64_t c = 0; c < p.dim_v; ++c) {
    EXPECT_NEAR(RefAt(ref, p, b, h, i, c), want[c], tol)
        << "b=" << b << " h=" << h << " i=" << i << " c=" << c;
  }
}

// Writes ref (as float) into t's out.
void WriteOut(sbt::TestTensors& t, const std::vector<double>& ref,
              double factor = 1.0) {
  const AttentionParams& p = t.params;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads; ++h)
      for (int64_t i = 0; i < p.seq_q; ++i)
        for (int64_t c = 0; c < p.dim_v; ++c)
          t.Out(b, h, i, c) =
              static_cast<float>(factor * RefAt(ref, p, b, h, i, c));
}

TEST(ReferenceTest, OneByOneReturnsV) {
  auto t = sbt::Make(1, 1, 1, 1, 3, 2, sbt::kGaussian, 7);
  const auto ref = sbt::ExactAttentionDouble(t.params);
  ASSERT_EQ(ref.size(), 2u);
  EXPECT_EQ(ref[0], static_cast<double>(t.V(0, 0, 0, 0)));
  EXPECT_EQ(ref[1], static_cast<double>(t.V(0, 0, 0, 1)));
}

TEST(ReferenceTest, TwoKeysKnownSoftmax) {
  // d = 4, default scale 1/2: logits 0 and 1.
  sbt::TestTensors t(1, 1, 1, 2, 4, 2);
  t.Q(0, 0, 0, 0) = 2.0f;
  t.K(0, 0, 1, 0) = 1.0f;
  t.V(0, 0, 0, 0) = 1.0f;
  t.V(0, 0, 1, 1) = 1.0f;
  const double e = std::exp(1.0);
  auto ref = sbt::ExactAttentionDouble(t.params);
  EXPECT_NEAR(ref[0], 1.0 / (1.0 + e), 1e-15);
  EXPECT_NEAR(ref[1], e / (1.0 + e), 1e-15);
  // An explicit scale is honoured: scale 1 gives logits 0 and 2.
  t.params.scale = 1.0f;
  ref = sbt::ExactAttentionDouble(t.params);
  const double e2 = std::exp(2.0);
  EXPECT_NEAR(ref[0], 1.0 / (1.0 + e2), 1e-15);
  EXPECT_NEAR(ref[1], e2 / (1.0 + e2), 1e-15);
}

TEST(ReferenceTest, UniformAttentionIsMeanOfVisibleV) {
  for (bool causal : {false, true}) {
    for (bool lengths : {false, true}) {
      auto t = sbt::Make(2, 3, 5, 7, 4, 3, sbt::kZeros, 11);
      t.params.causal = causal;
      if (lengths) t.SetKeyLengths({4, 7});
      const AttentionParams& p = t.params;
      const auto ref = sbt::ExactAttentionDouble(p);
      const int64_t off = p.seq_k - p.seq_q;  // 2
      for (int64_t b = 0; b < 2; ++b) {
        const int64_t kl = lengths ? (b == 0 ? 4 : 7) : 7;
        for (int64_t h = 0; h < 3; ++h) {
          for (int64_t i = 0; i < 5; ++i) {
            const int64_t hi = causal ? std::min(kl, i + off + 1) : kl;
            for (int64_t c = 0; c < 3; ++c) {
              double mean = 0;
              for (int64_t j = 0; j < hi; ++j) mean += t.V(b, h, j, c);
              mean /= hi;
              EXPECT_NEAR(RefAt(ref, p, b, h, i, c), mean, 1e-12)
                  << "causal=" << causal << " lengths=" << lengths << " b=" << b
                  << " h=" << h << " i=" << i;
            }
          }
        }
      }
    }
  }
}

TEST(ReferenceTest, CausalSelfAttentionRowZeroSeesOnlyKeyZero) {
  auto t =
      sbt::Make(1, 2, 6, 6, 8, 5, sbt::kGaussian, 3, sbt::kContiguous, 3.0);
  t.params.causal = true;
  const auto ref = sbt::ExactAttentionDouble(t.params);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t c = 0; c < 5; ++c) {
      EXPECT_EQ(RefAt(ref, t.params, 0, h, 0, c),
                static_cast<double>(t.V(0, h, 0, c)));
    }
    for (int64_t i = 0; i < 6; ++i) {
      ExpectRowNear(ref, t.params, 0, h, i, NaiveRow(t, 0, h, i, 0, i + 1),
                    1e-12);
    }
  }
}

TEST(ReferenceTest, CausalBottomRightOffsetFewerQueries) {
  // Nq = 3 < Nk = 7: query i sees keys j <= i + 4.
  auto t =
      sbt::Make(1, 1, 3, 7, 8, 4, sbt::kGaussian, 5, sbt::kContiguous, 2.0);
  t.params.causal = true;
  const auto ref = sbt::ExactAttentionDouble(t.params);
  for (int64_t i = 0; i < 3; ++i) {
    ExpectRowNear(ref, t.params, 0, 0, i, NaiveRow(t, 0, 0, i, 0, i + 5),
                  1e-12);
  }
  // And it is not the non-causal answer (which sees all 7 keys).
  const auto full = NaiveRow(t, 0, 0, 0, 0, 7);
  double diff = 0;
  for (int64_t c = 0; c < 4; ++c) {
    diff += std::fabs(RefAt(ref, t.params, 0, 0, 0, c) - full[c]);
  }
  EXPECT_GT(diff, 1e-3);
}

TEST(ReferenceTest, CausalMoreQueriesThanKeysEarlyRowsAreZero) {
  // Nq = 5 > Nk = 3: offset -2; rows 0 and 1 see nothing, row 2 sees key 0.
  auto t = sbt::Make(1, 1, 5, 3, 4, 3, sbt::kGaussian, 9);
  t.params.causal = true;
  const auto ref = sbt::ExactAttentionDouble(t.params);
  for (int64_t c = 0; c < 3; ++c) {
    EXPECT_EQ(RefAt(ref, t.params, 0, 0, 0, c), 0.0);
    EXPECT_EQ(RefAt(ref, t.params, 0, 0, 1, c), 0.0);
    EXPECT_EQ(RefAt(ref, t.params, 0, 0, 2, c),
              static_cast<double>(t.V(0, 0, 0, c)));
  }
  ExpectRowNear(ref, t.params, 0, 0, 4, NaiveRow(t, 0, 0, 4, 0, 3), 1e-12);
}

TEST(ReferenceTest, KeyLengthsExcludePaddingAndZeroLengthGivesZeros) {
  auto t = sbt::Make(3, 2, 4, 6, 8, 3, sbt::kGaussian, 13);
  // Poison the padding of batch 1 (keys >= 3): it must never be read.
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t j = 3; j < 6; ++j) {
      for (int64_t c = 0; c < 8; ++c) t.K(1, h, j, c) = 1e30f;
      for (int64_t c = 0; c < 3; ++c) {
        t.V(1, h, j, c) = std::numeric_limits<float>::quiet_NaN();
      }
    }
  }
  t.SetKeyLengths({0, 3, 100});  // 100 clamps to seq_k
  const auto ref = sbt::ExactAttentionDouble(t.params);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 0; i < 4; ++i) {
      for (int64_t c = 0; c < 3; ++c) {
        EXPECT_EQ(RefAt(ref, t.params, 0, h, i, c), 0.0);
      }
      ExpectRowNear(ref, t.params, 1, h, i, NaiveRow(t, 1, h, i, 0, 3), 1e-12);
      ExpectRowNear(ref, t.params, 2, h, i, NaiveRow(t, 2, h, i, 0, 6), 1e-12);
    }
  }
  // Key lengths combine with the causal mask (offset 2 here).
  t.params.causal = true;
  const auto ref_c = sbt::ExactAttentionDouble(t.params);
  for (int64_t i = 0; i < 4; ++i) {
    ExpectRowNear(ref_c, t.params, 1, 0, i,
                  NaiveRow(t, 1, 0, i, 0, std::min<int64_t>(3, i + 3)), 1e-12);
  }
}

TEST(ReferenceTest, StridedLayoutsEqualContiguous) {
  for (sbt::Family f : sbt::AllFamilies()) {
    auto base = sbt::Make(2, 3, 9, 11, 6, 5, f, 21);
    base.params.causal = true;
    base.SetKeyLengths({8, 11});
    const auto want = sbt::ExactAttentionDouble(base.params);
    for (sbt::Layout l : {sbt::kPadded, sbt::kBNHD}) {
      auto t = sbt::Make(2, 3, 9, 11, 6, 5, f, 21, l);
      t.params.causal = true;
      t.SetKeyLengths({8, 11});
      // Same logical values...
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t h = 0; h < 3; ++h)
          for (int64_t j = 0; j < 11; ++j)
            for (int64_t c = 0; c < 5; ++c) {
              ASSERT_EQ(t.K(b, h, j, c), base.K(b, h, j, c));
              ASSERT_EQ(t.V(b, h, j, c), base.V(b, h, j, c));
              if (j < 9) {
                ASSERT_EQ(t.Q(b, h, j, c), base.Q(b, h, j, c));
              }
            }
      // ...and bit-identical references (input gaps hold NaN: reading one
      // would show).
      EXPECT_EQ(sbt::ExactAttentionDouble(t.params), want)
          << sbt::FamilyName(f) << " " << sbt::LayoutName(l);
      EXPECT_TRUE(t.SentinelsIntact()) << t.SentinelReport();
    }
  }
}

TEST(ReferenceTest, RowsSubsetMatchesFull) {
  auto t = sbt::Make(2, 2, 40, 40, 8, 4, sbt::kClustered, 4);
  t.params.causal = true;
  const auto full = sbt::ExactAttentionDouble(t.params);
  const std::vector<int64_t> rows = {39, 0, 17, 17};
  const auto sub = sbt::ExactAttentionDoubleRows(t.params, rows);
  ASSERT_EQ(sub.size(), 2u * 2 * rows.size() * 4);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 2; ++h)
      for (size_t r = 0; r < rows.size(); ++r)
        for (int64_t c = 0; c < 4; ++c)
          EXPECT_EQ(sub[((b * 2 + h) * rows.size() + r) * 4 + c],
                    RefAt(full, t.params, b, h, rows[r], c));
  // RelativeErrorRows on the exact rows written to out is ~ float rounding.
  WriteOut(t, full);
  EXPECT_LT(sbt::RelativeErrorRows(t.params.out, t.params.out_strides, t.params,
                                   rows, sub),
            1e-6);
}

TEST(ReferenceTest, LocalReferenceWindowSemantics) {
  // Nq = 6 < Nk = 9 (offset 3).
  auto t = sbt::Make(1, 1, 6, 9, 8, 3, sbt::kGaussian, 8);
  // A window covering everything equals exact attention.
  t.params.window = 100;
  EXPECT_EQ(sbt::LocalAttentionDouble(t.params),
            sbt::ExactAttentionDouble(t.params));
  // Window 0: query i sees only key i + 3.
  t.params.window = 0;
  auto ref = sbt::LocalAttentionDouble(t.params);
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t c = 0; c < 3; ++c)
      EXPECT_EQ(RefAt(ref, t.params, 0, 0, i, c),
                static_cast<double>(t.V(0, 0, i + 3, c)));
  // Window 4: |i + 3 - j| <= 2, intersected with causal (j <= i + 3).
  t.params.window = 4;
  t.params.causal = true;
  ref = sbt::LocalAttentionDouble(t.params);
  for (int64_t i = 0; i < 6; ++i) {
    ExpectRowNear(ref, t.params, 0, 0, i,
                  NaiveRow(t, 0, 0, i, std::max<int64_t>(0, i + 1), i + 4),
                  1e-12);
  }
}

TEST(ReferenceTest, RelativeErrorMetric) {
  auto t = sbt::Make(2, 2, 7, 7, 8, 5, sbt::kGaussian, 31, sbt::kPadded);
  const auto ref = t.Reference();
  // Exact values rounded to float: tiny error.
  WriteOut(t, ref);
  EXPECT_LT(t.RelativeError(ref), 1e-6);
  EXPECT_EQ(t.UnwrittenOutputs(), 0);
  EXPECT_TRUE(t.OutputFinite());
  // A 10% scaling error reads as 0.1.
  WriteOut(t, ref, 1.1);
  EXPECT_NEAR(sbt::RelativeError(t.params, ref), 0.1, 1e-6);
  // Answering zeros reads as exactly 1.
  WriteOut(t, ref, 0.0);
  EXPECT_DOUBLE_EQ(
      sbt::RelativeError(t.params.out, t.params.out_strides, t.params, ref),
      1.0);
  // A NaN anywhere makes the error non-finite; so do unwritten outputs.
  WriteOut(t, ref);
  t.Out(1, 1, 6, 4) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(std::isfinite(t.RelativeError(ref)));
  EXPECT_TRUE(std::isnan(
      sbt::MaxAbsError(t.params.out, t.params.out_strides, t.params, ref)));
  t.ResetOut();
  EXPECT_EQ(t.UnwrittenOutputs(), 2 * 2 * 7 * 5);
  EXPECT_FALSE(std::isfinite(t.RelativeError(ref)));
  // A reference of the wrong size gives NaN, not a crash.
  EXPECT_TRUE(std::isnan(t.RelativeError(std::vector<double>(3, 0.0))));
  EXPECT_TRUE(t.SentinelsIntact()) << t.SentinelReport();
}

TEST(ReferenceTest, SentinelsDetectWritesOutsideTheTensor) {
  for (sbt::Layout l : sbt::AllLayouts()) {
    auto t = sbt::Make(2, 3, 5, 6, 4, 7, sbt::kGaussian, 1, l);
    const AttentionParams& p = t.params;
    const auto& s = p.out_strides;
    const int64_t last = (p.batch - 1) * s.batch + (p.heads - 1) * s.head +
                         (p.seq_q - 1) * s.row + (p.dim_v - 1);
    EXPECT_TRUE(t.SentinelsIntact()) << sbt::LayoutName(l);
    EXPECT_EQ(t.UnwrittenOutputs(), 2 * 3 * 5 * 7);

    // Every valid element may be written.
    WriteOut(t, t.Reference());
    EXPECT_TRUE(t.SentinelsIntact()) << t.SentinelReport();

    // One past the end.
    p.out[last + 1] = 0.0f;
    EXPECT_FALSE(t.SentinelsIntact()) << sbt::LayoutName(l);
    EXPECT_NE(t.SentinelReport().find("out[" + std::to_string(last + 1)),
              std::string::npos)
        << t.SentinelReport();
    t.ResetOut();
    EXPECT_TRUE(t.SentinelsIntact());

    // Far past the end, still inside the guard.
    p.out[last + sbt::TestTensors::kGuard] = 1.0f;
    EXPECT_FALSE(t.SentinelsIntact());
    t.ResetOut();

    // One before the start.
    p.out[-1] = 0.0f;
    EXPECT_FALSE(t.SentinelsIntact());
    t.ResetOut();

    // Into a gap between rows / heads (padded layout only has gaps).
    if (l == sbt::kPadded) {
      p.out[p.dim_v] = 0.0f;  // after row 0 of (0, 0)
      EXPECT_FALSE(t.SentinelsIntact());
      t.ResetOut();
      p.out[s.head - 1] = 0.0f;  // after the last row of head 0
      EXPECT_FALSE(t.SentinelsIntact());
      t.ResetOut();
      // An input's gap too (a backend must not write its inputs).
      const_cast<float*>(p.q)[p.dim] = 0.0f;
      EXPECT_FALSE(t.SentinelsIntact());
      const_cast<float*>(p.q)[p.dim] =
          std::numeric_limits<float>::quiet_NaN();  // not the same bits
      EXPECT_FALSE(t.SentinelsIntact());
    }
    // An input's end guard.
    const_cast<float*>(p.v)[-1] = 0.0f;
    EXPECT_FALSE(t.SentinelsIntact());
  }
}

TEST(ReferenceTest, MovedTensorsKeepValidPointers) {
  auto a = sbt::Make(1, 2, 3, 4, 5, 6, sbt::kGaussian, 2, sbt::kPadded);
  a.SetKeyLengths({3});
  const float q0 = a.Q(0, 1, 2, 4);
  sbt::TestTensors b(std::move(a));
  EXPECT_EQ(
      b.params.q[b.params.q_strides.head + 2 * b.params.q_strides.row + 4], q0);
  ASSERT_NE(b.params.key_lengths, nullptr);
  EXPECT_EQ(b.params.key_lengths[0], 3);
  sbt::TestTensors c;
  c = std::move(b);
  EXPECT_EQ(c.Q(0, 1, 2, 4), q0);
  EXPECT_TRUE(c.SentinelsIntact());
}

// --- the random numbers and the families ---

TEST(FamilyTest, EngineIsTheStandardMt19937_64) {
  // The standard fixes the 10000th output of a default-seeded mt19937_64.
  sbt::Rng r(5489u);
  uint64_t x = 0;
  for (int i = 0; i < 10000; ++i) x = r.NextU64();
  EXPECT_EQ(x, 9981545732273789042ull);
}

TEST(FamilyTest, BoxMullerMoments) {
  sbt::Rng r(123);
  double s1 = 0, s2 = 0, s4 = 0;
  const int n = 1 << 20;
  for (int i = 0; i < n; ++i) {
    const double z = r.Normal();
    s1 += z;
    s2 += z * z;
    s4 += z * z * z * z;
  }
  EXPECT_NEAR(s1 / n, 0.0, 5e-3);
  EXPECT_NEAR(s2 / n, 1.0, 5e-3);
  EXPECT_NEAR(s4 / n, 3.0, 3e-2);
}

TEST(FamilyTest, DeterministicAndSeedSensitive) {
  for (sbt::Family f : sbt::AllFamilies()) {
    auto a = sbt::Make(1, 2, 8, 8, 4, 4, f, 77);
    auto b = sbt::Make(1, 2, 8, 8, 4, 4, f, 77);
    auto c = sbt::Make(1, 2, 8, 8, 4, 4, f, 78);
    EXPECT_EQ(a.Reference(), b.Reference()) << sbt::FamilyName(f);
    EXPECT_NE(a.V(0, 1, 3, 2), c.V(0, 1, 3, 2)) << sbt::FamilyName(f);
    sbt::Family parsed;
    ASSERT_TRUE(sbt::ParseFamily(sbt::FamilyName(f), &parsed));
    EXPECT_EQ(parsed, f);
  }
  sbt::Family unused;
  EXPECT_FALSE(sbt::ParseFamily("nope", &unused));
}

TEST(FamilyTest, GaussianLogitStd) {
  for (double s : {0.5, 2.0, 4.0}) {
    auto t = sbt::Make(1, 1, 256, 256, 64, 1, sbt::kGaussian, 5,
                       sbt::kContiguous, s);
    const double tau = EffectiveScale(t.params);
    double m2 = 0;
    for (int64_t i = 0; i < 256; ++i)
      for (int64_t j = 0; j < 256; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < 64; ++c)
          dot += t.Q(0, 0, i, c) * t.K(0, 0, j, c);
        m2 += (tau * dot) * (tau * dot);
      }
    EXPECT_NEAR(std::sqrt(m2 / (256.0 * 256.0)), s, 0.08 * s) << s;
  }
}

TEST(FamilyTest, ClusteredSmoothHugeNormShapes) {
  const int64_t N = 256, d = 64;
  // Clustered: every q has a key whose logit is far above the typical one.
  auto cl = sbt::Make(1, 1, N, N, d, 4, sbt::kClustered, 6);
  const double tau = EffectiveScale(cl.params);
  double best_sum = 0, mean_sum = 0;
  for (int64_t i = 0; i < N; ++i) {
    double best = -1e300, mean = 0;
    for (int64_t j = 0; j < N; ++j) {
      double dot = 0;
      for (int64_t c = 0; c < d; ++c)
        dot += cl.Q(0, 0, i, c) * cl.K(0, 0, j, c);
      best = std::max(best, tau * dot);
      mean += tau * dot / N;
    }
    best_sum += best;
    mean_sum += mean;
  }
  EXPECT_GT((best_sum - mean_sum) / N, 6.0);

  // Smooth: neighbouring keys are much more alike than distant ones.
  auto sm = sbt::Make(1, 1, N, N, d, 4, sbt::kSmooth, 6);
  auto cosine = [&](int64_t a, int64_t b) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t c = 0; c < d; ++c) {
      ab += sm.K(0, 0, a, c) * sm.K(0, 0, b, c);
      aa += sm.K(0, 0, a, c) * sm.K(0, 0, a, c);
      bb += sm.K(0, 0, b, c) * sm.K(0, 0, b, c);
    }
    return ab / std::sqrt(aa * bb);
  };
  double near = 0, far = 0;
  for (int64_t j = 0; j + 128 < N; ++j) {
    near += cosine(j, j + 1);
    far += cosine(j, j + 128);
  }
  EXPECT_GT(near / 128, 0.9);
  EXPECT_LT(std::fabs(far / 128), 0.3);
  // With seq_q < seq_k the time steps align bottom-right, like the causal
  // mask: query i sits next to key i + (seq_k - seq_q).
  auto sq = sbt::Make(1, 1, 64, N, d, 4, sbt::kSmooth, 6);
  double aligned = 0, unaligned = 0;
  for (int64_t i = 0; i < 64; ++i) {
    auto cos_qk = [&](int64_t j) {
      double ab = 0, aa = 0, bb = 0;
      for (int64_t c = 0; c < d; ++c) {
        ab += sq.Q(0, 0, i, c) * sq.K(0, 0, j, c);
        aa += sq.Q(0, 0, i, c) * sq.Q(0, 0, i, c);
        bb += sq.K(0, 0, j, c) * sq.K(0, 0, j, c);
      }
      return ab / std::sqrt(aa * bb);
    };
    aligned += cos_qk(i + N - 64) / 64;
    unaligned += cos_qk(i) / 64;
  }
  EXPECT_GT(aligned, 0.9);
  EXPECT_LT(std::fabs(unaligned), 0.3);

  // HugeNorm: |q| = |k| = 1e3, and the reference stays finite.
  auto hn = sbt::Make(1, 2, 32, 32, d, 4, sbt::kHugeNorm, 6);
  double n2 = 0;
  for (int64_t c = 0; c < d; ++c) n2 += hn.K(0, 1, 7, c) * hn.K(0, 1, 7, c);
  EXPECT_NEAR(std::sqrt(n2), 1e3, 1e-2);
  for (double x : hn.Reference()) ASSERT_TRUE(std::isfinite(x));

  // RandomV: columns have non-zero means.
  auto rv = sbt::Make(1, 1, 4, 512, 8, 8, sbt::kRandomV, 6);
  double max_mean = 0;
  for (int64_t c = 0; c < 8; ++c) {
    double m = 0;
    for (int64_t j = 0; j < 512; ++j) m += rv.V(0, 0, j, c) / 512;
    max_mean = std::max(max_mean, std::fabs(m));
  }
  EXPECT_GT(max_mean, 0.5);
}

TEST(ReferenceTest, LargerCausalCaseAgainstNaive) {
  // Enough rows to exercise the threaded path; spot-check against naive.
  auto t = sbt::Make(2, 2, 300, 333, 48, 24, sbt::kSmooth, 99, sbt::kBNHD);
  t.params.causal = true;
  t.SetKeyLengths({333, 200});
  const auto ref = t.Reference();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i : {0, 1, 150, 299}) {
        const int64_t kl = b == 0 ? 333 : 200;
        ExpectRowNear(ref, t.params, b, h, i,
                      NaiveRow(t, b, h, i, 0, std::min<int64_t>(kl, i + 34)),
                      1e-10);
      }
}

}  // namespace
