// scatterbrain/tests/sparse_math_test.cc — the __host__ __device__ math of
// the CUDA LSH and Scatterbrain launchers (kernels/cuda/sparse_math.h), run
// on the CPU against the CPU backend it must reproduce: the draws'
// generator and row sampling, hash codes and their sort order, chunk
// arithmetic, argmax tie-breaks, the support as the kernels assemble it
// (pair counts equal to cpu::AccumulateSupport's), and the combination
// (outputs, guards and fallbacks equal to cpu::WriteScatterbrain's).
// Needs no GPU (not a cuda_* test).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/sparse_math.h"
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
    for (DrawPurpose purpose : {DrawPurpose::kHash, DrawPurpose::kCalibration}) {
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
    for (int64_t count : {int64_t{0}, int64_t{1}, n / 3, n / 2, n - 1, n, n + 4}) {
      for (int64_t head : {0, 5}) {
        const auto want =
            SampleRows(11, DrawPurpose::kCalibration, 2, head, n, count);
        EXPECT_EQ(SampleViaBits(11, DrawPurpose::kCalibration, 2, head, n, count),
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
  const float specials[] = {0.0f, -0.0f, 1e-45f, -1e-45f, 1.0f, -1.0f,
                            3.4e38f, -3.4e38f,
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
          ASSERT_EQ(sm::ChunkOfPosition(pos, nk, nchunks), t) << nk << " " << pos;
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
      best[lane] = sm::NegInf();
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
        if (sm::BeatsFirstMax(best[lane ^ o], idx[lane ^ o], nb[lane], ni[lane])) {
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
      for (int64_t c = 0; c < d; ++c) qn[i] += double(s.qrow(i)[c]) * s.qrow(i)[c];
      qmax = std::max(qmax, qn[i]);
    }
    for (int64_t j = 0; j < nk; ++j) {
      for (int64_t c = 0; c < d; ++c) kn[j] += double(s.krow(j)[c]) * s.krow(j)[c];
      kmax = std::max(kmax, kn[j]);
    }
    const int64_t nchunks = sm::NumChunks(nk, o.bucket_size);
    std::vector<std::vector<int64_t>> qc(o.num_hashes, std::vector<int64_t>(nq));
    std::vector<std::vector<int64_t>> kc(o.num_hashes, std::vector<int64_t>(nk));
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
      for (int64_t c = 0; c < d; ++c) dot += double(s.qrow(i)[c]) * s.krow(j)[c];
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
      EXPECT_NEAR(rows[i].emax, acc.emax[i], 1e-4 * (1 + std::fabs(rows[i].emax)));
      for (int64_t c = 0; c < s.dv; ++c)
        EXPECT_NEAR(rows[i].avg[c], acc.ev[i * s.dv + c] / acc.e1[i],
                    1e-4 * (1 + std::fabs(rows[i].avg[c])));
    }
  }
}

// ---------------------------------------------------------------------------
// The combination: the kernels' per-row math on the CPU's accumulators must
// write what cpu::WriteSparseOnly / cpu::WriteScatterbrain write.
// ---------------------------------------------------------------------------

// The CPU's per-row mean of the visible values (combine.cc's MeanValues).
std::vector<double> MeanRows(const cpu::Slice& s) {
  std::vector<double> out(s.nq * s.dv, 0.0);
  std::vector<double> prefix((s.nk + 1) * s.dv, 0.0);
  for (int64_t j = 0; j < s.nk; ++j)
    for (int64_t c = 0; c < s.dv; ++c)
      prefix[(j + 1) * s.dv + c] = prefix[j * s.dv + c] + s.vrow(j)[c];
  std::vector<double> whole(s.dv);
  cpu::MeanValue(s, 0, whole.data());
  for (int64_t i = 0; i < s.nq; ++i) {
    const int64_t lim = s.KeyLimit(i);
    for (int64_t c = 0; c < s.dv; ++c)
      out[i * s.dv + c] = !s.causal ? whole[c]
                          : lim > 0 ? prefix[lim * s.dv + c] / lim
                                    : 0.0;
  }
  return out;
}

sm::RowInputs InputsOf(const cpu::Slice& s, const cpu::Features& f,
                       const cpu::LowRank& lr, const cpu::SparseAcc& acc,
                       int64_t i) {
  sm::RowInputs in;
  in.lim = s.KeyLimit(i);
  in.count = acc.count[i];
  in.emax = acc.emax[i];
  in.e1 = acc.e1[i];
  in.f1 = acc.f1[i];
  in.den = lr.den[i];
  in.qscale = f.qscale[i];
  in.kscale = f.kscale;
  return in;
}

// The combination as the CUDA kernels compute it (calibrate.cu,
// scatterbrain.cu), row by row.
void EmulateCombine(const cpu::Slice& s, const cpu::Features& f,
                    const cpu::LowRank& lr, const cpu::SparseAcc& acc,
                    Estimator est, int calibration_rows, uint64_t seed,
                    std::vector<float>* out, cpu::SliceStats* st) {
  const int64_t dv = s.dv;
  const std::vector<double> vbar = MeanRows(s);
  out->assign(s.nq * dv, 0.0f);
  auto lv_off = [&](int64_t i, int64_t c) { return acc.lv[i * dv + c]; };
  if (est == Estimator::kUnbiased) {
    for (int64_t i = 0; i < s.nq; ++i) {
      const sm::RowInputs in = InputsOf(s, f, lr, acc, i);
      const sm::RowParts p = sm::MakeRowParts(in);
      if (p.empty) continue;
      const sm::UnbiasedRow u = sm::MakeUnbiased(p, in);
      st->guards += (p.guard ? 1 : 0) + (u.ok ? 0 : 1);
      for (int64_t c = 0; c < dv; ++c)
        (*out)[i * dv + c] =
            u.ok ? sm::UnbiasedValue(u, p.has_l, acc.ev[i * dv + c], lv_off(i, c))
                 : static_cast<float>(vbar[i * dv + c]);
    }
    return;
  }
  sm::CalibrationChoice ch;
  std::vector<int64_t> rows;
  std::vector<double> exact;
  if (calibration_rows > 0) {
    rows = SampleRows(seed, DrawPurpose::kCalibration, s.b, s.h, s.nq,
                      calibration_rows);
    const size_t n = rows.size();
    std::vector<double> co(n * sm::kNumCandidates, 0.0),
        cc(n * sm::kNumCandidates, 0.0), oo(n, 0.0);
    std::vector<uint8_t> used(n, 0);
    exact.assign(n * dv, 0.0);
    for (size_t r = 0; r < n; ++r) {
      const int64_t i = rows[r];
      const sm::RowParts p = sm::MakeRowParts(InputsOf(s, f, lr, acc, i));
      double* ex = exact.data() + r * dv;
      if (p.empty || !cpu::ExactRow(s, i, ex)) continue;
      used[r] = 1;
      for (int64_t c = 0; c < dv; ++c) oo[r] += ex[c] * ex[c];
      for (int k = 0; k < sm::kNumCandidates; ++k) {
        const sm::Candidate cand = sm::MakeCandidate(p, k);
        double a = 0, b = 0;
        for (int64_t c = 0; c < dv; ++c) {
          const double v = sm::CandidateValue(cand, vbar[i * dv + c],
                                              acc.ev[i * dv + c], lv_off(i, c));
          a += v * ex[c];
          b += v * v;
        }
        co[r * sm::kNumCandidates + k] = a;
        cc[r * sm::kNumCandidates + k] = b;
      }
    }
    ch = sm::SelectCandidate(co.data(), cc.data(), oo.data(), used.data(),
                             static_cast<int64_t>(n));
    if (ch.fallback) ++st->fallbacks;
  }
  for (int64_t i = 0; i < s.nq; ++i) {
    const sm::RowParts p = sm::MakeRowParts(InputsOf(s, f, lr, acc, i));
    if (p.empty) continue;
    if (sm::CalibratedGuard(p)) ++st->guards;
    const sm::Candidate cand = sm::MakeCandidate(p, ch.candidate);
    for (int64_t c = 0; c < dv; ++c)
      (*out)[i * dv + c] = static_cast<float>(
          ch.alpha * sm::CandidateValue(cand, vbar[i * dv + c],
                                        acc.ev[i * dv + c], lv_off(i, c)));
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    if (s.KeyLimit(rows[r]) <= 0) continue;
    for (int64_t c = 0; c < dv; ++c)
      (*out)[rows[r] * dv + c] = static_cast<float>(exact[r * dv + c]);
  }
}

TEST(CombineTest, KernelMathWritesWhatTheCpuWrites) {
  struct Case {
    testing::Family family;
    bool causal;
    int64_t nq, nk;
    int32_t key_length;
    int calibration_rows;
  };
  const Case cases[] = {
      {testing::kGaussian, false, 97, 97, 97, 16},
      {testing::kClustered, true, 97, 130, 100, 16},
      {testing::kRandomV, false, 130, 97, 60, 0},
      {testing::kHugeNorm, true, 64, 64, 64, 8},
      {testing::kZeros, false, 33, 40, 40, 100},
      {testing::kSmooth, true, 1, 1, 1, 16},
  };
  int64_t guards = 0, fallbacks = 0;
  for (const Case& k : cases) {
    for (Estimator est : {Estimator::kCalibrated, Estimator::kUnbiased}) {
      TestTensors t = testing::Make(2, 1, k.nq, k.nk, 24, 20, k.family, 7);
      t.params.causal = k.causal;
      t.SetKeyLengths({k.key_length, static_cast<int32_t>(k.nk)});
      const cpu::Slice s = cpu::MakeSlice(t.params, 0, 0);
      cpu::WorkspaceMeter meter;
      cpu::Features f;
      cpu::ComputeFeatures(s, DrawFeatureProjections(3, 0, 8, 24), 8, &meter, &f);
      cpu::LowRank lr;
      cpu::ComputeLowRank(s, f, &meter, &lr);
      cpu::SupportOptions o;
      o.lsh = true;
      o.local = true;
      o.window = 6;
      o.bucket_size = 8;
      o.num_hashes = 2;
      o.seed = 4;
      o.allow_fused = false;  // the CUDA path is the general one
      cpu::SparseAcc acc;
      cpu::AccumulateSupport(s, o, &f, &lr, &meter, &acc);

      cpu::SliceStats cpu_st, emu_st;
      cpu::WriteScatterbrain(s, f, lr, acc, est, k.calibration_rows, 21, &meter,
                             &cpu_st);
      std::vector<float> emu;
      EmulateCombine(s, f, lr, acc, est, k.calibration_rows, 21, &emu, &emu_st);
      for (int64_t i = 0; i < s.nq; ++i)
        for (int64_t c = 0; c < s.dv; ++c)
          ASSERT_EQ(emu[i * s.dv + c], s.orow(i)[c])
              << testing::FamilyName(k.family) << " " << EstimatorName(est)
              << " row " << i << " col " << c;
      EXPECT_EQ(emu_st.guards, cpu_st.guards) << testing::FamilyName(k.family);
      EXPECT_EQ(emu_st.fallbacks, cpu_st.fallbacks);
      guards += cpu_st.guards;
      fallbacks += cpu_st.fallbacks;
    }
  }
  // The cases reach the guarded paths, not only the plain ones.
  EXPECT_GT(guards, 0);
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
    const bool ok = sm::SparseOnlyRow(s.KeyLimit(i), acc.count[i], acc.e1[i], &guard);
    guards += guard;
    const float inv = ok ? 1.0f / acc.e1[i] : 0.0f;
    for (int64_t c = 0; c < s.dv; ++c)
      ASSERT_EQ(ok ? acc.ev[i * s.dv + c] * inv : 0.0f, s.orow(i)[c]) << i;
  }
  EXPECT_EQ(guards, st.guards);
}

}  // namespace
}  // namespace scatterbrain
