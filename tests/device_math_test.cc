// scatterbrain/tests/device_math_test.cc — the CUDA kernels' per-element and
// per-row math (kernels/cuda/math.h, __host__ __device__) run on the CPU:
// no GPU is needed, so this runs everywhere (label cpu). Each piece is
// checked against the CPU backend (the reference the CUDA backend must
// match) or fp64, and the kernels' decompositions (the flash tile loop, the
// feature sweeps, the causal chunked scan) are replayed with these functions
// to check their index arithmetic on odd sizes.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/math.h"
#include "kernels/devices.h"
#include "kernels/random_draws.h"
#include "tests/testutil/reference.h"

namespace scatterbrain {
namespace {

namespace dm = cuda::devmath;
using testing::TestTensors;

// (The float16 / bfloat16 conversions the kernels use are
// common/float16_bits.h, the host codec's own code: tests/float16_test.cc.)

TEST(DeviceMathTest, FiniteChecks) {
  EXPECT_TRUE(dm::IsFinite(0.0f));
  EXPECT_TRUE(dm::IsFinite(-3e38f));
  EXPECT_FALSE(dm::IsFinite(dm::Infinity()));
  EXPECT_FALSE(dm::IsFinite(dm::NegInfinity()));
  EXPECT_FALSE(dm::IsFinite(std::numeric_limits<float>::quiet_NaN()));
  EXPECT_TRUE(dm::IsFiniteDouble(1e300));
  EXPECT_FALSE(dm::IsFiniteDouble(std::numeric_limits<double>::infinity()));
  EXPECT_FALSE(dm::IsFiniteDouble(std::numeric_limits<double>::quiet_NaN()));
  EXPECT_EQ(dm::FloorDiv(-1, 64), -1);
  EXPECT_EQ(dm::FloorDiv(-64, 64), -1);
  EXPECT_EQ(dm::FloorDiv(-65, 64), -2);
  EXPECT_EQ(dm::FloorDiv(63, 64), 0);
}

// ---------------------------------------------------------------------------
// Masks and key ranges
// ---------------------------------------------------------------------------

struct MaskCase {
  int64_t nq, seq_k, nk;
  bool causal;
  int window;  // 0: none
};
const MaskCase kMaskCases[] = {
    {1, 1, 1, false, 0},     {97, 97, 97, true, 0},
    {97, 130, 100, true, 0}, {130, 97, 97, true, 0},
    {97, 97, 0, false, 0},   {97, 130, 130, false, 7},
    {130, 97, 60, true, 8},  {1025, 1025, 1025, true, 128},
    {5, 33, 33, true, 1},    {200, 3, 3, true, 0}};

TEST(DeviceMathTest, VisibleKeysFollowTheCpuSlice) {
  for (const MaskCase& c : kMaskCases) {
    cpu::Slice s{};
    s.nq = c.nq;
    s.nk = c.nk;
    s.offset = c.seq_k - c.nq;
    s.causal = c.causal;
    const int64_t half = c.window > 0 ? c.window / 2 : -1;
    for (int64_t i = 0; i < c.nq; ++i) {
      ASSERT_EQ(dm::KeyLimit(i, s.offset, c.nk, c.causal), s.KeyLimit(i));
      for (int64_t j = -1; j <= c.seq_k; ++j) {
        // sparse.cc: in_window(i, j) && causal_ok, over keys [0, nk).
        bool want = j >= 0 && j < s.KeyLimit(i);
        if (half >= 0)
          want = want && j >= i + s.offset - half && j <= i + s.offset + half;
        ASSERT_EQ(dm::KeyVisible(i, j, s.offset, c.nk, c.causal, half), want)
            << "i=" << i << " j=" << j;
      }
    }
    // Every tile's key range holds every visible key of its rows.
    for (int64_t bm : {16, 64}) {
      for (int64_t i0 = 0; i0 < c.nq; i0 += bm) {
        const int64_t i1 = std::min(c.nq, i0 + bm);
        const dm::KeyRange r =
            dm::TileKeys(i0, i1, s.offset, c.nk, c.causal, half);
        ASSERT_GE(r.lo, 0);
        ASSERT_LE(r.hi, c.nk);
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = 0; j < c.seq_k; ++j)
            if (dm::KeyVisible(i, j, s.offset, c.nk, c.causal, half)) {
              ASSERT_GE(j, r.lo);
              ASSERT_LT(j, r.hi);
            }
      }
    }
  }
}

TEST(DeviceMathTest, FindRequestSkipsEmptyRequests) {
  const int64_t offsets[] = {0, 0, 3, 3, 4, 10};
  const int n = 5;
  const int want[] = {1, 1, 1, 3, 4, 4, 4, 4, 4, 4};
  for (int64_t s = 0; s < 10; ++s)
    EXPECT_EQ(dm::FindRequest(offsets, n, s), want[s]) << s;
  const int64_t one[] = {0, 7};
  for (int64_t s = 0; s < 7; ++s) EXPECT_EQ(dm::FindRequest(one, 1, s), 0);
}

// ---------------------------------------------------------------------------
// Online softmax
// ---------------------------------------------------------------------------

TEST(DeviceMathTest, OnlineSoftmaxOverMaskedTilesMatchesFp64) {
  testing::Rng rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + static_cast<int>(rng.UniformInt(300));
    const int tile = 1 + static_cast<int>(rng.UniformInt(70));
    std::vector<float> x(n), v(n);
    std::vector<bool> mask(n);
    const double spread = trial % 3 == 0 ? 30.0 : 3.0;
    for (int j = 0; j < n; ++j) {
      x[j] = static_cast<float>(spread * rng.Normal());
      v[j] = static_cast<float>(rng.Normal());
      // Whole masked tiles and scattered masked keys; some rows all masked.
      mask[j] = trial % 7 != 0 && ((j / tile) % 3 != 1) && rng.Uniform() < 0.8;
    }
    double mx = -INFINITY;
    for (int j = 0; j < n; ++j)
      if (mask[j]) mx = std::max(mx, static_cast<double>(x[j]));
    double num = 0, den = 0;
    for (int j = 0; j < n; ++j)
      if (mask[j]) {
        num += std::exp(x[j] - mx) * v[j];
        den += std::exp(x[j] - mx);
      }
    const double want = den > 0 ? num / den : 0.0;

    dm::SoftmaxState st = dm::SoftmaxStart();
    float acc = 0.0f;
    for (int j0 = 0; j0 < n; j0 += tile) {
      float tmax = dm::NegInfinity();
      std::vector<float> s(tile, dm::NegInfinity());
      for (int b = 0; b < tile && j0 + b < n; ++b) {
        if (mask[j0 + b]) s[b] = x[j0 + b];
        tmax = std::max(tmax, s[b]);
      }
      const float alpha = dm::SoftmaxBeginTile(&st, tmax);
      ASSERT_TRUE(std::isfinite(alpha));
      acc *= alpha;
      float psum = 0.0f;
      for (int b = 0; b < tile && j0 + b < n; ++b) {
        const float p = dm::SoftmaxWeight(s[b], st.max);
        ASSERT_TRUE(std::isfinite(p));
        psum += p;
        acc += p * v[j0 + b];
      }
      dm::SoftmaxAddTile(&st, psum);
    }
    const float got = acc * dm::SoftmaxInverse(st.sum);
    ASSERT_TRUE(std::isfinite(got));
    EXPECT_NEAR(got, want, 2e-5 * (1 + std::fabs(want))) << "trial " << trial;
    if (den == 0) {
      EXPECT_EQ(got, 0.0f);
    }

    // Two halves merged give the same row.
    const int cut = n / 2;
    dm::SoftmaxState a = dm::SoftmaxStart(), b = dm::SoftmaxStart();
    float na = 0, nb = 0;
    for (int half = 0; half < 2; ++half) {
      dm::SoftmaxState* h = half == 0 ? &a : &b;
      float* nacc = half == 0 ? &na : &nb;
      for (int j = half == 0 ? 0 : cut; j < (half == 0 ? cut : n); ++j) {
        const float xj = mask[j] ? x[j] : dm::NegInfinity();
        *nacc *= dm::SoftmaxBeginTile(h, xj);
        const float p = dm::SoftmaxWeight(xj, h->max);
        dm::SoftmaxAddTile(h, p);
        *nacc += p * v[j];
      }
    }
    const dm::MergeFactors f = dm::SoftmaxMerge(&a, b);
    const float merged = (na * f.a + nb * f.b) * dm::SoftmaxInverse(a.sum);
    EXPECT_NEAR(merged, want, 2e-5 * (1 + std::fabs(want)));
  }
}

// The flash kernels' tile loop (exact.cu / exact_generic.cu), replayed on
// the CPU with the same helpers, against the CPU backend: causal
// bottom-right, cross attention, key lengths and windows.
void FlashReplay(const AttentionParams& p, int64_t half, int64_t bm, int64_t bn,
                 std::vector<float>* out, int64_t* guards) {
  const float tau = EffectiveScale(p);
  out->assign(p.batch * p.heads * p.seq_q * p.dim_v, 0.0f);
  *guards = 0;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t nk = p.key_lengths ? p.key_lengths[b] : p.seq_k;
      const int64_t off = p.seq_k - p.seq_q;
      const float* q = p.q + b * p.q_strides.batch + h * p.q_strides.head;
      const float* k = p.k + b * p.k_strides.batch + h * p.k_strides.head;
      const float* v = p.v + b * p.v_strides.batch + h * p.v_strides.head;
      float* o = out->data() + (b * p.heads + h) * p.seq_q * p.dim_v;
      for (int64_t i0 = 0; i0 < p.seq_q; i0 += bm) {
        const int64_t i1 = std::min(p.seq_q, i0 + bm);
        std::vector<dm::SoftmaxState> st(bm, dm::SoftmaxStart());
        std::vector<float> acc(bm * p.dim_v, 0.0f);
        const dm::KeyRange kr = dm::TileKeys(i0, i1, off, nk, p.causal, half);
        for (int64_t j0 = kr.lo; j0 < kr.hi; j0 += bn) {
          const bool full =
              half < 0 && j0 + bn <= kr.hi &&
              (!p.causal || j0 + bn <= dm::KeyLimit(i0, off, nk, true));
          for (int64_t r = 0; r < bm; ++r) {
            const int64_t i = i0 + r;
            std::vector<float> s(bn);
            float tmax = dm::NegInfinity();
            for (int64_t c = 0; c < bn; ++c) {
              const int64_t j = j0 + c;
              const bool ok =
                  i < i1 &&
                  (full || (j < kr.hi &&
                            dm::KeyVisible(i, j, off, nk, p.causal, half)));
              float dot = 0;
              if (ok)
                for (int64_t e = 0; e < p.dim; ++e)
                  dot +=
                      q[i * p.q_strides.row + e] * k[j * p.k_strides.row + e];
              s[c] = ok ? dot * tau : dm::NegInfinity();
              tmax = std::max(tmax, s[c]);
            }
            const float alpha = dm::SoftmaxBeginTile(&st[r], tmax);
            float psum = 0;
            for (int64_t e = 0; e < p.dim_v; ++e) acc[r * p.dim_v + e] *= alpha;
            for (int64_t c = 0; c < bn && j0 + c < kr.hi; ++c) {
              const float w = dm::SoftmaxWeight(s[c], st[r].max);
              psum += w;
              for (int64_t e = 0; e < p.dim_v; ++e)
                acc[r * p.dim_v + e] += w * v[(j0 + c) * p.v_strides.row + e];
            }
            dm::SoftmaxAddTile(&st[r], psum);
          }
        }
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t r = i - i0;
          const float inv = dm::SoftmaxInverse(st[r].sum);
          for (int64_t e = 0; e < p.dim_v; ++e)
            o[i * p.dim_v + e] = acc[r * p.dim_v + e] * inv;
          if (half >= 0 && !(st[r].sum > 0) &&
              dm::KeyLimit(i, off, nk, p.causal) > 0)
            ++*guards;
        }
      }
    }
}

TEST(DeviceMathTest, FlashTileLoopMatchesTheCpuBackend) {
  auto cpu = CreateBackend("cpu");
  ASSERT_TRUE(cpu.ok());
  struct Case {
    int64_t b, h, nq, nk, d, dv;
    bool causal, lengths;
    int window;
  } cases[] = {{1, 1, 1, 1, 48, 40, false, false, 0},
               {2, 2, 97, 97, 48, 40, true, false, 0},
               {2, 1, 97, 130, 48, 24, true, true, 0},
               {1, 2, 130, 97, 16, 16, true, false, 0},
               {2, 1, 97, 130, 48, 40, false, true, 9},
               {1, 1, 130, 97, 8, 8, true, false, 16},
               {1, 1, 33, 5, 7, 3, true, false, 1}};
  for (const Case& c : cases) {
    TestTensors t = TestTensors::Make(c.b, c.h, c.nq, c.nk, c.d, c.dv,
                                      testing::kGaussian, 11);
    std::vector<int32_t> lengths;
    if (c.lengths) {
      for (int64_t b = 0; b < c.b; ++b)
        lengths.push_back(static_cast<int32_t>(b == 0 ? c.nk - 31 : c.nk));
      t.params.key_lengths = lengths.data();
    }
    t.params.causal = c.causal;
    t.params.method = c.window > 0 ? Method::kLocal : Method::kExact;
    t.params.window = c.window > 0 ? c.window : 128;
    auto st = (*cpu)->Forward(t.params);
    ASSERT_TRUE(st.ok()) << st.status();
    for (auto [bm, bn] :
         {std::pair<int64_t, int64_t>{64, 64}, {64, 32}, {16, 64}}) {
      std::vector<float> got;
      int64_t guards = 0;
      FlashReplay(t.params, c.window > 0 ? c.window / 2 : -1, bm, bn, &got,
                  &guards);
      double err = 0, norm = 0;
      for (int64_t b = 0; b < c.b; ++b)
        for (int64_t h = 0; h < c.h; ++h)
          for (int64_t i = 0; i < c.nq; ++i)
            for (int64_t e = 0; e < c.dv; ++e) {
              const float want = t.params.out[b * t.params.out_strides.batch +
                                              h * t.params.out_strides.head +
                                              i * t.params.out_strides.row + e];
              const float g = got[((b * c.h + h) * c.nq + i) * c.dv + e];
              err = std::max(err, static_cast<double>(std::fabs(g - want)));
              norm = std::max(norm, static_cast<double>(std::fabs(want)));
            }
      EXPECT_LT(err, 1e-5 * (1 + norm)) << "case nq=" << c.nq << " nk=" << c.nk;
      EXPECT_EQ(guards, st->denominator_guards);
    }
  }
}

// ---------------------------------------------------------------------------
// Features: features.cu's two sweeps, replayed, against cpu::ComputeFeatures.
// ---------------------------------------------------------------------------

TEST(DeviceMathTest, FeatureSweepsMatchTheCpuFeatures) {
  for (int r : {1, 64, 70}) {
    const int64_t nq = 97, seq_k = 130, d = 48;
    TestTensors t =
        TestTensors::Make(1, 2, nq, seq_k, d, 8, testing::kGaussian, 5 + r);
    const int32_t nk = 100;
    t.params.key_lengths = &nk;
    t.params.scale = 0.3f;
    const int m = 2 * r;
    for (int64_t h = 0; h < 2; ++h) {
      const cpu::Slice s = cpu::MakeSlice(t.params, 0, h);
      const std::vector<float> w = DrawFeatureProjections(0, h, r, d);
      cpu::WorkspaceMeter meter;
      cpu::Features f;
      cpu::ComputeFeatures(s, w, r, &meter, &f);
      const float tau = s.tau, sqrt_tau = std::sqrt(tau);

      // Sweep 1 per row: p (x . w, then sqrt(tau)), max |p| from 0, |x|^2.
      auto sweep = [&](const float* x, std::vector<float>* p, float* pmax,
                       double* sq) {
        p->assign(r, 0.0f);
        *pmax = 0.0f;
        *sq = 0.0;
        for (int l = 0; l < r; ++l) {
          float dot = 0;
          for (int64_t c = 0; c < d; ++c) dot += x[c] * w[l * d + c];
          (*p)[l] = dot * sqrt_tau;
          *pmax = std::max(*pmax, std::fabs((*p)[l]));
        }
        for (int64_t c = 0; c < d; ++c) *sq += static_cast<double>(x[c]) * x[c];
      };
      std::vector<float> p;
      float pmax;
      double sq;
      for (int64_t i = 0; i < nq; ++i) {
        sweep(s.qrow(i), &p, &pmax, &sq);
        const float qscale = dm::QueryLogScale(pmax, sq, tau, m);
        ASSERT_NEAR(qscale, f.qscale[i], 2e-5 * (1 + std::fabs(qscale)));
        for (int l = 0; l < r; ++l) {
          ASSERT_NEAR(dm::FeatureValue(p[l], -pmax), f.q[i * m + l], 3e-5);
          ASSERT_NEAR(dm::FeatureValue(-p[l], -pmax), f.q[i * m + r + l], 3e-5);
        }
      }
      float kscale = dm::NegInfinity();
      for (int64_t j = 0; j < nk; ++j) {
        sweep(s.krow(j), &p, &pmax, &sq);
        kscale = std::max(kscale, pmax + dm::KeyBase(sq, tau));
      }
      ASSERT_NEAR(kscale, f.kscale, 2e-5 * (1 + std::fabs(kscale)));
      for (int64_t j = 0; j < nk; ++j) {
        sweep(s.krow(j), &p, &pmax, &sq);
        const float shift = dm::KeyBase(sq, tau) - kscale;
        for (int l = 0; l < r; ++l) {
          ASSERT_NEAR(dm::FeatureValue(p[l], shift), f.k[j * m + l], 3e-5);
          ASSERT_NEAR(dm::FeatureValue(-p[l], shift), f.k[j * m + r + l], 3e-5);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Causal low-rank chunks (lowrank.cu)
// ---------------------------------------------------------------------------

TEST(DeviceMathTest, ChunkLayoutCoversEveryRowsPrefix) {
  const int64_t w = dm::kLowRankChunk;
  for (int64_t nq : {1, 2, 63, 64, 65, 97, 130, 1025})
    for (int64_t seq_k : {1, 5, 63, 64, 65, 97, 130, 1025, 3000}) {
      const dm::ChunkLayout c = dm::MakeChunkLayout(nq, seq_k, w);
      // The chunks partition [0, seq_k) in order, each at most w wide.
      int64_t at = 0;
      for (int64_t k = 0; k < c.count; ++k) {
        const dm::KeyRange r = dm::ChunkKeys(c, k, seq_k);
        ASSERT_EQ(r.lo, at) << nq << " " << seq_k << " k=" << k;
        ASSERT_GE(r.hi, r.lo);
        ASSERT_LE(r.hi - r.lo, w);
        at = r.hi;
      }
      ASSERT_EQ(at, seq_k);
      const int64_t off = seq_k - nq;
      for (int64_t t = 0; t * w < nq; ++t) {
        const int64_t k = dm::PrefixChunk(c, t);
        const int64_t prefix = k < 0 ? 0 : dm::ChunkKeys(c, k, seq_k).hi;
        const int64_t first = dm::KeyLimit(t * w, off, seq_k, true);
        ASSERT_EQ(prefix, first) << nq << " " << seq_k << " t=" << t;
        for (int64_t i = t * w; i < std::min(nq, (t + 1) * w); ++i) {
          const int64_t rest = dm::KeyLimit(i, off, seq_k, true) - first;
          ASSERT_GE(rest, 0);
          ASSERT_LT(rest, w);
        }
      }
    }
}

TEST(DeviceMathTest, ChunkSlotsOfConsecutiveSlicesNeverOverlap) {
  testing::Rng rng(3);
  const int64_t w = dm::kLowRankChunk;
  for (int trial = 0; trial < 50; ++trial) {
    int64_t first_row = 0, last_slot = -1;
    const int64_t slices = 1 + static_cast<int64_t>(rng.UniformInt(20));
    for (int64_t s = 0; s < slices; ++s) {
      const int64_t nq = 1 + static_cast<int64_t>(rng.UniformInt(300));
      const int64_t seq_k = 1 + static_cast<int64_t>(rng.UniformInt(300));
      const dm::ChunkLayout c = dm::MakeChunkLayout(nq, seq_k, w);
      for (int64_t k = 0; k < c.count; ++k) {
        const int64_t slot = dm::ChunkSlot(s, first_row, k, w);
        ASSERT_GT(slot, last_slot);
        last_slot = slot;
      }
      first_row += seq_k;
    }
    ASSERT_LT(last_slot, dm::ChunkSlots(slices, first_row, w));
  }
}

// The chunked scan with these helpers equals cpu::ComputeLowRank (causal).
TEST(DeviceMathTest, ChunkedScanMatchesTheCpuCausalSums) {
  for (auto [nq, seq_k] : {std::pair<int64_t, int64_t>{97, 97},
                           {130, 97},
                           {97, 130},
                           {1, 200},
                           {200, 1},
                           {64, 128}}) {
    const int64_t d = 16, dv = 12;
    TestTensors t =
        TestTensors::Make(1, 1, nq, seq_k, d, dv, testing::kGaussian, 9);
    t.params.causal = true;
    const int r = 10, m = 2 * r;
    const cpu::Slice s = cpu::MakeSlice(t.params, 0, 0);
    cpu::WorkspaceMeter meter;
    cpu::Features f;
    cpu::ComputeFeatures(s, DrawFeatureProjections(0, 0, r, d), r, &meter, &f);
    cpu::LowRank lr;
    cpu::ComputeLowRank(s, f, &meter, &lr);

    const int64_t w = dm::kLowRankChunk;
    const dm::ChunkLayout c = dm::MakeChunkLayout(nq, seq_k, w);
    const int64_t stride = m * (dv + 1);
    std::vector<double> state(c.count * stride, 0.0);
    for (int64_t k = 0; k < c.count; ++k) {  // chunk sums, then the scan
      const dm::KeyRange kr = dm::ChunkKeys(c, k, seq_k);
      double* e = state.data() + k * stride;
      for (int64_t j = kr.lo; j < kr.hi; ++j)
        for (int l = 0; l < m; ++l) {
          for (int64_t x = 0; x < dv; ++x)
            e[l * dv + x] += f.k[j * m + l] * s.vrow(j)[x];
          e[m * dv + l] += f.k[j * m + l];
        }
      if (k > 0)
        for (int64_t x = 0; x < stride; ++x) e[x] += e[x - stride];
    }
    for (int64_t t0 = 0; t0 < nq; t0 += w) {
      const int64_t k = dm::PrefixChunk(c, t0 / w);
      const int64_t lo = dm::KeyLimit(t0, s.offset, seq_k, true);
      for (int64_t i = t0; i < std::min(nq, t0 + w); ++i) {
        const float* fq = f.q.data() + i * m;
        std::vector<double> num(dv, 0.0);
        double den = 0;
        if (k >= 0) {
          const double* p = state.data() + k * stride;
          for (int l = 0; l < m; ++l) {
            for (int64_t x = 0; x < dv; ++x) num[x] += fq[l] * p[l * dv + x];
            den += fq[l] * p[m * dv + l];
          }
        }
        for (int64_t j = lo; j < dm::KeyLimit(i, s.offset, seq_k, true); ++j) {
          double dot = 0;
          for (int l = 0; l < m; ++l) dot += fq[l] * f.k[j * m + l];
          for (int64_t x = 0; x < dv; ++x) num[x] += dot * s.vrow(j)[x];
          den += dot;
        }
        ASSERT_NEAR(den, lr.den[i], 1e-4 * (1 + std::fabs(den))) << i;
        for (int64_t x = 0; x < dv; ++x)
          ASSERT_NEAR(num[x], lr.num[i * dv + x], 5e-4 * (1 + std::fabs(den)));
      }
    }
  }
}

// ---------------------------------------------------------------------------
// The performer's guarded ratio (WritePerformer's rules).
// ---------------------------------------------------------------------------

TEST(DeviceMathTest, GuardedRatioFollowsWritePerformer) {
  float out;
  EXPECT_TRUE(dm::GuardedRatio(3.0f, 2.0f, &out));
  EXPECT_EQ(out, 1.5f);
  EXPECT_TRUE(dm::GuardedRatio(-1.0f, 3.0f, &out));
  EXPECT_EQ(out, static_cast<float>(-1.0 / 3.0));
  EXPECT_FALSE(dm::GuardedRatio(1.0f, 0.0f, &out));
  EXPECT_FALSE(dm::GuardedRatio(1.0f, -1e-30f, &out));
  EXPECT_FALSE(dm::GuardedRatio(1.0f, dm::Infinity(), &out));
  EXPECT_FALSE(
      dm::GuardedRatio(1.0f, std::numeric_limits<float>::quiet_NaN(), &out));
  // A denormal denominator under a large numerator: finite in double,
  // infinite as a float.
  EXPECT_FALSE(dm::GuardedRatio(1e30f, 1e-40f, &out));
  // A NaN numerator.
  EXPECT_FALSE(
      dm::GuardedRatio(std::numeric_limits<float>::quiet_NaN(), 1.0f, &out));
}

// ---------------------------------------------------------------------------
// The backend itself needs a device: without one it must refuse cleanly.
// ---------------------------------------------------------------------------

TEST(CudaBackendTest, WithoutADeviceCreationFailsCleanly) {
  if (CudaCompiled() && !CudaDevices().empty()) {
    GTEST_SKIP() << "a device is present: the gpu-labelled tests cover it";
  }
  BackendOptions o;
  o.streams = 2;
  auto b = CreateBackend("cuda", o);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), CudaCompiled()
                                   ? absl::StatusCode::kFailedPrecondition
                                   : absl::StatusCode::kUnimplemented)
      << b.status();
}

}  // namespace
}  // namespace scatterbrain
