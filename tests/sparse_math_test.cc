// scatterbrain/tests/sparse_math_test.cc — the __host__ __device__ math of
// the CUDA LSH and Scatterbrain launchers (kernels/cuda/sparse_math.h), run
// on the CPU against the CPU backend it must reproduce: the draws'
// generator and row sampling, hash codes and their sort order, chunk
// arithmetic, argmax tie-breaks, the support as the kernels assemble it
// (pair counts equal to cpu::AccumulateSupport's), and the combination's
// rules (which kernels/cpu/combine.cc shares).
// Needs no GPU (not a cuda_* test).
#include "kernels/cuda/sparse_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/ops.h"
#include "kernels/random_draws.h"
#include "tests/testutil/reference.h"

namespace scatterbrain {
namespace {

namespace sm = cuda::sparse;
using testing::TestTensors;

// ---------------------------------------------------------------------------
// Draws.
// ---------------------------------------------------------------------------

TEST(DrawRngTest, SameStreamAsTheHostGenerator) {
  for (uint64_t seed : {0ull, 1ull, 0x9E3779B97F4A7C15ull}) {
    for (DrawPurpose purpose :
         {DrawPurpose::kHash, DrawPurpose::kCalibration}) {
      for (uint64_t a : {0ull, 3ull, 1001ull}) {
        Rng host(seed, purpose, a, 7);
        sm::DrawRng dev(seed, static_cast<uint64_t>(purpose), a, 7);
        for (int i = 0; i < 64; ++i) ASSERT_EQ(host.NextU64(), dev.Next());
        for (uint64_t n : {1ull, 2ull, 97ull, 1ull << 40, ~0ull - 5}) {
          ASSERT_EQ(host.Below(n), dev.Below(n)) << n;
        }
      }
    }
  }
}

// FloydSample into a bit set, read back in order, is SampleRows.
std::vector<int64_t> SampleViaBits(uint64_t seed, DrawPurpose purpose,
                                   int64_t a, int64_t b, int64_t n,
                                   int64_t count) {
  std::vector<int64_t> out;
  if (count >= n) {
    out.resize(n);
    std::iota(out.begin(), out.end(), 0);
    return out;
  }
  std::vector<uint32_t> words((n + 31) / 32, 0u);
  sm::BitSet set{words.data()};
  sm::FloydSample(seed, static_cast<uint64_t>(purpose), a, b, n, count, set);
  for (int64_t t = 0; t < n; ++t)
    if (set.Contains(t)) out.push_back(t);
  return out;
}

TEST(DrawRngTest, FloydSampleIsSampleRows) {
  for (int64_t n : {1, 2, 5, 31, 32, 33, 97, 1025, 4096}) {
    for (int64_t count :
         {int64_t{0}, int64_t{1}, n / 3, n / 2, n - 1, n, n + 4}) {
      for (int64_t head : {0, 5}) {
        const auto want =
            SampleRows(11, DrawPurpose::kCalibration, 2, head, n, count);
        EXPECT_EQ(
            SampleViaBits(11, DrawPurpose::kCalibration, 2, head, n, count),
            want)
            << "n " << n << " count " << count;
        // The k-means training sample's stream (round + 1000, head).
        EXPECT_EQ(SampleViaBits(3, DrawPurpose::kHash, 1001, head, n, count),
                  SampleRows(3, DrawPurpose::kHash, 1001, head, n, count));
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Hash codes, sort keys, chunks, argmax.
// ---------------------------------------------------------------------------

TEST(HashCodeTest, CrossPolytopeBucketsAndTies) {
  // Level 1 [1, -3]: -p_1 wins (bucket 3); level 2 [2, 0.5]: +p_0 (0).
  const float p[] = {1.0f, -3.0f, 2.0f, 0.5f};
  sm::HashCode c = sm::CrossPolytopeCode(p, 2);
  EXPECT_EQ(c.bucket, 3u * 4u + 0u);
  EXPECT_EQ(c.value, 2.0f);
  // Ties go to the first: +p_0 before -p_0's equal magnitude elsewhere.
  const float tie[] = {2.0f, -2.0f, -1.0f, 1.0f};
  c = sm::CrossPolytopeCode(tie, 2);
  EXPECT_EQ(c.bucket, 0u * 4u + 1u);  // level 2: -p_0 = 1 before +p_1 = 1
  EXPECT_EQ(c.value, 1.0f);
  // One projection per level (SMYRF's): two buckets each.
  const float one[] = {-0.5f, 0.25f};
  c = sm::CrossPolytopeCode(one, 1);
  EXPECT_EQ(c.bucket, 1u * 2u + 0u);
  EXPECT_EQ(c.value, 0.25f);
}

TEST(HashCodeTest, SortKeyOrderIsBucketThenValue) {
  const float specials[] = {0.0f,
                            -0.0f,
                            1e-45f,
                            -1e-45f,
                            1.0f,
                            -1.0f,
                            3.4e38f,
                            -3.4e38f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()};
  std::vector<sm::HashCode> codes;
  for (uint32_t b : {0u, 1u, 7u, 0xffffffffu})
    for (float v : specials) codes.push_back(sm::HashCode{b, v});
  testing::Rng rng(5);
  for (int i = 0; i < 300; ++i)
    codes.push_back(sm::HashCode{static_cast<uint32_t>(rng.UniformInt(4)),
                                 static_cast<float>(rng.Normal() * 10)});
  for (const auto& a : codes) {
    for (const auto& b : codes) {
      const bool less =
          a.bucket != b.bucket ? a.bucket < b.bucket : a.value < b.value;
      ASSERT_EQ(sm::HashSortKey(a) < sm::HashSortKey(b), less)
          << a.bucket << "," << a.value << " vs " << b.bucket << "," << b.value;
    }
  }
}

TEST(ChunkTest, PositionsChunksAndQueriesAsTheCpuCutsThem) {
  for (int64_t nk = 1; nk <= 300; nk += 7) {
    for (int64_t bucket : {1, 3, 7, 64, 128, 1000}) {
      const int64_t c = std::min(bucket, nk);
      const int64_t nchunks = (nk + c - 1) / c;
      ASSERT_EQ(sm::NumChunks(nk, bucket), nchunks);
      std::vector<int64_t> kstart(nchunks + 1);
      for (int64_t t = 0; t <= nchunks; ++t) kstart[t] = t * nk / nchunks;
      for (int64_t t = 0; t < nchunks; ++t) {
        ASSERT_EQ(sm::ChunkStart(t, nk, nchunks), kstart[t]);
        for (int64_t pos = kstart[t]; pos < kstart[t + 1]; ++pos)
          ASSERT_EQ(sm::ChunkOfPosition(pos, nk, nchunks), t)
              << nk << " " << pos;
      }
      // Sorted keys with repeats; a query's chunk is the last one whose
      // first key is <= it (chunk 0 below them all).
      std::vector<uint64_t> sorted(nk);
      for (int64_t pos = 0; pos < nk; ++pos) sorted[pos] = 10 + 2 * (pos / 3);
      for (uint64_t q = 0; q < static_cast<uint64_t>(14 + 2 * nk); ++q) {
        int64_t want = 0;
        for (int64_t t = 1; t < nchunks; ++t)
          if (sorted[kstart[t]] <= q) want = t;
        ASSERT_EQ(sm::QueryChunk(q, sorted.data(), nk, nchunks), want);
      }
    }
  }
  EXPECT_EQ(sm::NumChunks(0, 128), 0);
}

TEST(KMeansTest, ShapeAsTheCpuBuildsIt) {
  // Flat up to 256 centroids; a tree of ceil(sqrt K) tops beyond.
  sm::KMeansShape s = sm::MakeKMeansShape(2100, 64);
  EXPECT_EQ(s.k, 33);
  EXPECT_EQ(s.k1, 33);
  EXPECT_EQ(s.k2, 1);
  EXPECT_EQ(s.samples, 33 * 32);
  s = sm::MakeKMeansShape(2100, 8);
  EXPECT_EQ(s.k, 263);
  EXPECT_EQ(s.k1, 17);
  EXPECT_EQ(s.k2, 16);
  EXPECT_EQ(s.samples, 2100);
  s = sm::MakeKMeansShape(65536, 128);
  EXPECT_EQ(s.k, 512);
  EXPECT_EQ(s.k1, 23);
  EXPECT_EQ(s.k2, 23);
  EXPECT_EQ(s.samples, 16384);
  s = sm::MakeKMeansShape(5, 128);
  EXPECT_EQ(s.k, 1);
  EXPECT_EQ(s.samples, 5);
  // Every shape fits the 3K centroid rows a slice is given.
  for (int64_t nk = 1; nk < 5000; nk += 37)
    for (int64_t bucket : {1, 2, 8, 128}) {
      const sm::KMeansShape t = sm::MakeKMeansShape(nk, bucket);
      EXPECT_GE(t.k1 * t.k2, t.k);
      EXPECT_LE(t.k1 + t.k1 * t.k2, 3 * t.k);
      EXPECT_LE(t.k, nk / bucket + 1);
    }
}

TEST(KMeansTest, FirstMaxReductionInAnyOrderIsTheCpuArgmax) {
  testing::Rng rng(9);
  for (int trial = 0; trial < 500; ++trial) {
    const int n = 1 + static_cast<int>(rng.UniformInt(100));
    std::vector<float> v(n);
    for (float& x : v) x = static_cast<float>(rng.UniformInt(4)) - 2.0f;
    // CPU: Max, then the first equal entry.
    const float mx = *std::max_element(v.begin(), v.end());
    int want = 0;
    while (want + 1 < n && v[want] != mx) ++want;
    // Device: lanes take strided candidates, then a butterfly reduction.
    float best[32];
    int idx[32];
    for (int lane = 0; lane < 32; ++lane) {
      best[lane] = sm::NegInfinity();
      idx[lane] = std::numeric_limits<int>::max();
      for (int u = lane; u < n; u += 32)
        if (sm::BeatsFirstMax(v[u], u, best[lane], idx[lane])) {
          best[lane] = v[u];
          idx[lane] = u;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
      float nb[32];
      int ni[32];
      for (int lane = 0; lane < 32; ++lane) {
        nb[lane] = best[lane];
        ni[lane] = idx[lane];
        if (sm::BeatsFirstMax(best[lane ^ o], idx[lane ^ o], nb[lane],
                              ni[lane])) {
          nb[lane] = best[lane ^ o];
          ni[lane] = idx[lane ^ o];
        }
      }
      std::copy(nb, nb + 32, best);
      std::copy(ni, ni + 32, idx);
    }
    for (int lane = 0; lane < 32; ++lane) ASSERT_EQ(idx[lane], want);
  }
}

TEST(MaskTest, KeyLimitAndLocalRangeAsTheCpuSlice) {
  TestTensors t = testing::Make(1, 1, 40, 50, 4, 4, testing::kGaussian, 1);
  for (bool causal : {false, true}) {
    t.params.causal = causal;
    for (int32_t len : {50, 23, 0}) {
      t.SetKeyLengths({len});
      const cpu::Slice s = cpu::MakeSlice(t.params, 0, 0);
      for (int64_t i = 0; i < s.nq; ++i)
        ASSERT_EQ(sm::KeyLimit(i, s.nk, s.offset, causal), s.KeyLimit(i));
      // The CPU's local blocks: keys [lo, hi) cover every allowed pair.
      const int64_t half = 4;
      for (int64_t i0 = 0; i0 < s.nq; i0 += 16) {
        const int64_t i1 = std::min<int64_t>(s.nq, i0 + 16);
        int64_t lo, hi;
        sm::LocalKeyRange(i0, i1, s.nk, s.offset, half, causal, &lo, &hi);
        for (int64_t i = i0; i < i1; ++i) {
          for (int64_t j = 0; j < s.nk; ++j) {
            if (sm::InWindow(i, j, s.offset, half) &&
                sm::CausalOk(i, j, s.offset, causal)) {
              ASSERT_TRUE(j >= lo && j < hi) << i << " " << j;
            }
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// The support as the kernels assemble it: cross-polytope codes on the CPU's
// own projections, a stable sort by HashSortKey, chunks by position, query
// chunks by QueryChunk, and the pass's masks. Its pairs must be the CPU's.
// ---------------------------------------------------------------------------

struct EmulatedRow {
  int64_t count = 0;
  double emax = -1e300;
  std::vector<double> avg;  // support average of v
};

std::vector<EmulatedRow> EmulateSupport(const cpu::Slice& s,
                                        const cpu::SupportOptions& o) {
  const int64_t nq = s.nq, nk = s.nk, d = s.d, dv = s.dv;
  const int64_t half = o.window / 2;
  std::vector<std::vector<int64_t>> pairs(nq);
  if (o.local) {
    for (int64_t i = 0; i < nq; ++i)
      for (int64_t j = 0; j < nk; ++j)
        if (sm::InWindow(i, j, s.offset, half) &&
            sm::CausalOk(i, j, s.offset, s.causal))
          pairs[i].push_back(j);
  }
  if (o.lsh && nk > 0) {
    const bool smyrf = o.transform == LshTransform::kSmyrf;
    const int64_t D = smyrf ? d + 2 : d;
    const int P = o.hash_projections;
    // SMYRF's appended coordinates, from double norms.
    std::vector<double> qn(nq), kn(nk);
    double qmax = 0, kmax = 0;
    for (int64_t i = 0; i < nq; ++i) {
      for (int64_t c = 0; c < d; ++c)
        qn[i] += double(s.qrow(i)[c]) * s.qrow(i)[c];
      qmax = std::max(qmax, qn[i]);
    }
    for (int64_t j = 0; j < nk; ++j) {
      for (int64_t c = 0; c < d; ++c)
        kn[j] += double(s.krow(j)[c]) * s.krow(j)[c];
      kmax = std::max(kmax, kn[j]);
    }
    const int64_t nchunks = sm::NumChunks(nk, o.bucket_size);
    std::vector<std::vector<int64_t>> qc(o.num_hashes,
                                         std::vector<int64_t>(nq));
    std::vector<std::vector<int64_t>> kc(o.num_hashes,
                                         std::vector<int64_t>(nk));
    for (int round = 0; round < o.num_hashes; ++round) {
      const std::vector<float> proj =
          DrawHashProjections(o.seed, s.h, round, 2 * P, D);
      auto codes = [&](const float* x, int64_t ld, int64_t n, bool is_q,
                       const std::vector<double>& norms) {
        std::vector<float> p(n * 2 * P);
        cpu::Gemm(false, true, n, 2 * P, d, 1.0f, x, ld, proj.data(), D, 0.0f,
                  p.data(), 2 * P);
        std::vector<uint64_t> keys(n);
        for (int64_t i = 0; i < n; ++i) {
          float* pi = p.data() + i * 2 * P;
          if (smyrf) {
            const float pad = sm::SmyrfPad(norms[i], qmax + kmax);
            const float e0 = is_q ? 0.0f : pad, e1 = is_q ? pad : 0.0f;
            for (int l = 0; l < 2 * P; ++l)
              pi[l] = sm::AddSmyrf(pi[l], proj[l * D + d], proj[l * D + d + 1],
                                   e0, e1);
          }
          keys[i] = sm::HashSortKey(sm::CrossPolytopeCode(pi, P));
        }
        return keys;
      };
      const std::vector<uint64_t> kkey = codes(s.k, s.k_row, nk, false, kn);
      const std::vector<uint64_t> qkey = codes(s.q, s.q_row, nq, true, qn);
      std::vector<int64_t> korder(nk);
      std::iota(korder.begin(), korder.end(), 0);
      std::stable_sort(korder.begin(), korder.end(),
                       [&](int64_t a, int64_t b) { return kkey[a] < kkey[b]; });
      std::vector<uint64_t> sorted(nk);
      for (int64_t pos = 0; pos < nk; ++pos) {
        sorted[pos] = kkey[korder[pos]];
        kc[round][korder[pos]] = sm::ChunkOfPosition(pos, nk, nchunks);
      }
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t t = sm::QueryChunk(qkey[i], sorted.data(), nk, nchunks);
        qc[round][i] = t;
        for (int64_t pos = sm::ChunkStart(t, nk, nchunks);
             pos < sm::ChunkStart(t + 1, nk, nchunks); ++pos) {
          const int64_t j = korder[pos];
          bool ok = sm::CausalOk(i, j, s.offset, s.causal);
          if (o.local && sm::InWindow(i, j, s.offset, half)) ok = false;
          for (int r = 0; ok && r < round; ++r)
            if (qc[r][i] == kc[r][j]) ok = false;
          if (ok) pairs[i].push_back(j);
        }
      }
    }
  }
  std::vector<EmulatedRow> rows(nq);
  for (int64_t i = 0; i < nq; ++i) {
    EmulatedRow& r = rows[i];
    r.count = static_cast<int64_t>(pairs[i].size());
    r.avg.assign(dv, 0.0);
    if (r.count == 0) continue;
    std::vector<double> logit;
    for (int64_t j : pairs[i]) {
      double dot = 0;
      for (int64_t c = 0; c < d; ++c)
        dot += double(s.qrow(i)[c]) * s.krow(j)[c];
      logit.push_back(dot * s.tau);
      r.emax = std::max(r.emax, logit.back());
    }
    double sum = 0;
    for (size_t a = 0; a < pairs[i].size(); ++a) {
      const double w = std::exp(logit[a] - r.emax);
      sum += w;
      for (int64_t c = 0; c < dv; ++c) r.avg[c] += w * s.vrow(pairs[i][a])[c];
    }
    for (double& x : r.avg) x /= sum;
  }
  return rows;
}

TEST(SupportEmulationTest, PairsAndAveragesAreTheCpuSupport) {
  struct Case {
    int64_t nq, nk, d;
    bool causal, local;
    int rounds, projections, bucket;
    LshTransform transform;
    int32_t key_length;
  };
  const Case cases[] = {
      {97, 97, 48, false, false, 1, 4, 16, LshTransform::kNone, 97},
      {97, 130, 48, true, false, 3, 2, 8, LshTransform::kNone, 130},
      {130, 97, 16, false, true, 4, 1, 8, LshTransform::kSmyrf, 97},
      {70, 64, 16, true, true, 6, 1, 8, LshTransform::kSmyrf, 50},
      {1, 1, 7, false, false, 2, 3, 128, LshTransform::kNone, 1},
      {33, 200, 12, false, true, 2, 4, 1000, LshTransform::kSmyrf, 150},
  };
  for (const Case& k : cases) {
    TestTensors t = testing::Make(1, 2, k.nq, k.nk, k.d, 5, testing::kClustered,
                                  k.nq + k.nk, testing::kPadded);
    t.params.causal = k.causal;
    t.SetKeyLengths({k.key_length});
    const cpu::Slice s = cpu::MakeSlice(t.params, 0, 1);
    cpu::SupportOptions o;
    o.lsh = true;
    o.local = k.local;
    o.window = 9;
    o.hash = LshHash::kCrossPolytope;
    o.num_hashes = k.rounds;
    o.hash_projections = k.projections;
    o.bucket_size = k.bucket;
    o.transform = k.transform;
    o.seed = 17;
    cpu::WorkspaceMeter meter;
    cpu::SparseAcc acc;
    cpu::AccumulateSupport(s, o, nullptr, nullptr, &meter, &acc);
    const std::vector<EmulatedRow> rows = EmulateSupport(s, o);
    for (int64_t i = 0; i < s.nq; ++i) {
      ASSERT_EQ(rows[i].count, acc.count[i]) << "row " << i << " nq " << k.nq;
      if (rows[i].count == 0) continue;
      EXPECT_NEAR(rows[i].emax, acc.emax[i],
                  1e-4 * (1 + std::fabs(rows[i].emax)));
      for (int64_t c = 0; c < s.dv; ++c)
        EXPECT_NEAR(rows[i].avg[c], acc.ev[i * s.dv + c] / acc.e1[i],
                    1e-4 * (1 + std::fabs(rows[i].avg[c])));
    }
  }
}

// ---------------------------------------------------------------------------
// The combination.
// ---------------------------------------------------------------------------

// kernels/cpu/combine.cc calls these same functions, so the CPU backend's
// tests cover them end to end; here, their rules on inputs built to hit
// each branch.

sm::RowInputs Row(int64_t lim, int64_t count, float emax, float e1, float f1,
                  float den) {
  sm::RowInputs in;
  in.lim = lim;
  in.count = count;
  in.emax = emax;
  in.e1 = e1;
  in.f1 = f1;
  in.den = den;
  in.qscale = -1.5f;
  in.kscale = 0.25f;
  return in;
}

TEST(CombineTest, RowPartsSplitTheMassAndGuardCancellation) {
  // A row that sees no key.
  EXPECT_TRUE(sm::MakeRowParts(Row(0, 0, 0, 0, 0, 0)).empty);
  // The support covers the row: no low-rank part, no guard.
  sm::RowParts p = sm::MakeRowParts(Row(10, 10, 2.0f, 3.0f, 4.0f, 4.5f));
  EXPECT_FALSE(p.has_l);
  EXPECT_FALSE(p.guard);
  EXPECT_EQ(p.wt, 0.0);
  EXPECT_EQ(p.wr, 0.0);
  // What is left of the low-rank mass is rounding: clamped and guarded.
  p = sm::MakeRowParts(Row(10, 4, 2.0f, 3.0f, 1.0f, 1.0f + 1e-7f));
  EXPECT_TRUE(p.guard);
  EXPECT_FALSE(p.has_l);
  p = sm::MakeRowParts(Row(10, 4, 2.0f, 3.0f, 2.0f, 1.0f));  // negative
  EXPECT_TRUE(p.guard);
  // No exact part: everything is low-rank.
  p = sm::MakeRowParts(Row(10, 0, 0.0f, 0.0f, 0.0f, 2.0f));
  EXPECT_FALSE(p.has_e);
  EXPECT_TRUE(p.has_l);
  EXPECT_EQ(p.wt, 1.0);
  EXPECT_EQ(p.wr, 1.0);
  EXPECT_TRUE(sm::CalibratedGuard(sm::MakeRowParts(Row(10, 0, 0, 0, 0, 0))));
  // Both parts: the textbook share compares the masses in log space, the
  // ratio share the low-rank's own split.
  const sm::RowInputs in = Row(10, 4, 2.0f, 3.0f, 1.0f, 5.0f);
  p = sm::MakeRowParts(in);
  ASSERT_TRUE(p.has_e && p.has_l && !p.guard);
  const long double mass_l = 4.0L * std::exp(-1.25L);  // l1 e^{qs + ks}
  const long double mass_e = 3.0L * std::exp(2.0L);    // e1 e^{emax}
  EXPECT_NEAR(p.wt, static_cast<double>(mass_l / (mass_l + mass_e)), 1e-12);
  EXPECT_NEAR(p.wr, 4.0 / 5.0, 1e-12);
  // The textbook estimator weighs the numerators by the same masses.
  const sm::UnbiasedRow u = sm::MakeUnbiased(p, in);
  ASSERT_TRUE(u.ok);
  const float ev = 6.0f, lv = -8.0f;  // directions 2 and -2
  const long double want =
      (ev * std::exp(2.0L) + lv * std::exp(-1.25L)) / (mass_e + mass_l);
  EXPECT_NEAR(sm::UnbiasedValue(u, p.has_l, ev, lv), static_cast<double>(want),
              1e-6);
}

TEST(CombineTest, CandidatesMixTheDirections) {
  const sm::RowParts p = sm::MakeRowParts(Row(10, 4, 2.0f, 3.0f, 1.0f, 5.0f));
  const double vbar = 0.5;
  const float ev = 6.0f, lv = -8.0f;  // E_dir = 2, L_dir = -2
  EXPECT_EQ(sm::CandidateValue(sm::MakeCandidate(p, sm::kMeanCandidate), vbar,
                               ev, lv),
            vbar);
  EXPECT_NEAR(sm::CandidateValue(sm::MakeCandidate(p, sm::kSparseCandidate),
                                 vbar, ev, lv),
              2.0, 1e-12);
  for (int k = 0; k < sm::kMeanCandidate; ++k) {
    const int wi = k / sm::kNumLambda;
    const double w = wi == 0 ? p.wt : wi == 1 ? p.wr : std::sqrt(p.wt * p.wr);
    const double lambda = sm::Lambda(k % sm::kNumLambda);
    const double dir = vbar + lambda * (-2.0 - vbar);
    EXPECT_NEAR(sm::CandidateValue(sm::MakeCandidate(p, k), vbar, ev, lv),
                (1 - w) * 2.0 + w * dir, 1e-12)
        << k;
  }
}

TEST(CombineTest, SelectionPicksTheCandidateThatFitsTheExactRows) {
  const int n = 8, K = sm::kNumCandidates;
  std::vector<double> co(n * K, 0.0), cc(n * K, 1.0), oo(n, 1.0);
  std::vector<uint8_t> used(n, 1);
  // Candidate 5 is the exact row on every sampled row; the others are
  // orthogonal to it.
  for (int r = 0; r < n; ++r) co[r * K + 5] = 1.0;
  sm::CalibrationChoice ch =
      sm::SelectCandidate(co.data(), cc.data(), oo.data(), used.data(), n);
  EXPECT_EQ(ch.candidate, 5);
  EXPECT_EQ(ch.alpha, 1.0);
  EXPECT_FALSE(ch.fallback);
  // Nothing fits: answering zeros (the mean candidate at alpha 0) wins, and
  // it is a fallback.
  for (int r = 0; r < n; ++r) co[r * K + 5] = 0.0;
  ch = sm::SelectCandidate(co.data(), cc.data(), oo.data(), used.data(), n);
  EXPECT_EQ(ch.candidate, sm::kMeanCandidate);
  EXPECT_EQ(ch.alpha, 0.0);
  EXPECT_TRUE(ch.fallback);
  // Candidate 3 is twice the exact row, less aligned on row 0: the fitted
  // alpha (~1/2) varies between leave-one-out fits, and is shrunk by its
  // jackknife standard error.
  for (int r = 0; r < n; ++r) {
    co[r * K + 3] = r == 0 ? 1.0 : 2.0;
    cc[r * K + 3] = 4.0;
  }
  ch = sm::SelectCandidate(co.data(), cc.data(), oo.data(), used.data(), n);
  EXPECT_EQ(ch.candidate, 3);
  EXPECT_LT(ch.alpha, sm::FitAlpha(15.0, 32.0) - 0.01);
  EXPECT_GT(ch.alpha, 0.3);
  EXPECT_TRUE(ch.fallback);  // alpha < 1/2
  // No exact mass at all (rows that see nothing): the default, unshrunk.
  std::fill(oo.begin(), oo.end(), 0.0);
  std::fill(used.begin(), used.end(), 0);
  ch = sm::SelectCandidate(co.data(), cc.data(), oo.data(), used.data(), n);
  EXPECT_EQ(ch.candidate, sm::kDefaultCandidate);
  EXPECT_EQ(ch.alpha, 1.0);
  EXPECT_FALSE(ch.fallback);
}

TEST(CombineTest, SparseOnlyRowIsWriteSparseOnly) {
  TestTensors t = testing::Make(1, 1, 50, 40, 8, 6, testing::kClustered, 2);
  t.params.causal = true;
  t.SetKeyLengths({30});
  const cpu::Slice s = cpu::MakeSlice(t.params, 0, 0);
  cpu::SupportOptions o;
  o.lsh = true;
  o.bucket_size = 4;
  o.hash = LshHash::kCrossPolytope;
  cpu::WorkspaceMeter meter;
  cpu::SparseAcc acc;
  cpu::AccumulateSupport(s, o, nullptr, nullptr, &meter, &acc);
  cpu::SliceStats st;
  cpu::WriteSparseOnly(s, acc, &st);
  int64_t guards = 0;
  for (int64_t i = 0; i < s.nq; ++i) {
    bool guard = false;
    const bool ok =
        sm::SparseOnlyRow(s.KeyLimit(i), acc.count[i], acc.e1[i], &guard);
    guards += guard;
    const float inv = ok ? 1.0f / acc.e1[i] : 0.0f;
    for (int64_t c = 0; c < s.dv; ++c)
      ASSERT_EQ(ok ? acc.ev[i * s.dv + c] * inv : 0.0f, s.orow(i)[c]) << i;
  }
  EXPECT_EQ(guards, st.guards);
}

}  // namespace
}  // namespace scatterbrain
