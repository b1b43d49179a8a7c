// scatterbrain/kernels/cpu/lsh.cc — the LSH rounds of the sparse support:
// each round hashes every valid key and every query to a point on a 1-D
// order (k-means leaves or two levels of cross-polytope buckets, then a
// projection's value), sorts the keys and cuts them into equal-size chunks;
// a query joins the chunk whose key range holds its own hash (sparse.cc
// explains why). Split from sparse.cc, which runs the pass over the chunks.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/profile.h"
#include "kernels/cpu/vmath.h"
#include "kernels/cuda/sparse_math.h"
#include "kernels/random_draws.h"

namespace scatterbrain {
namespace cpu {
namespace {

// Hash keys of n rows of x (row stride ld) for one round. `extra` holds the
// SMYRF transform's appended coordinates (2 per row) or is null.
void HashRows(const float* x, int64_t ld, int64_t n, int64_t d,
              const float* extra, const std::vector<float>& proj, int P,
              WorkspaceMeter* meter, HashKey* out) {
  PhaseScope scope(Phase::kHashAssign);
  const int64_t D = extra ? d + 2 : d;
  Scratch<float> p(meter, static_cast<size_t>(n) * 2 * P);
  // proj is (2P) x D row-major; the first d columns multiply x.
  Gemm(false, true, n, 2 * P, d, 1.0f, x, ld, proj.data(), D, 0.0f, p.data(),
       2 * P);
  for (int64_t i = 0; i < n; ++i) {
    float* pi = p.data() + i * 2 * P;
    if (extra) {
      for (int l = 0; l < 2 * P; ++l)
        pi[l] += proj[l * D + d] * extra[2 * i] +
                 proj[l * D + d + 1] * extra[2 * i + 1];
    }
    // The device's rule (sparse_math.h), so both backends bucket alike.
    const cuda::sparse::HashCode code = cuda::sparse::CrossPolytopeCode(pi, P);
    out[i] = HashKey{code.bucket, code.value};
  }
}

// k-means "hash" for one round: spherical k-means on the key directions
// with about `clusters` centroids. Beyond kMaxFlatCentroids it becomes a
// two-level tree (K1 ~ sqrt(clusters) top centroids, K2 children each), so
// that assigning N keys costs N * (K1 + K2) * d instead of N * clusters * d
// (which grows as N^2 / bucket_size).
// Centroids are trained by Lloyd iterations on a seeded sample of at most
// kKMeansSamplesPerCentroid keys per leaf, initialised from sampled keys. A
// key's order key is (its leaf, its projection on a random direction); a
// query's is (the leaf reached by largest inner products, its projection),
// so queries land in the key chunks of their leaf.
constexpr int64_t kKMeansSamplesPerCentroid = 32;
constexpr int64_t kMaxFlatCentroids = 256;

// Lloyd iterations of spherical k-means: `cent` (K x d) starts as given and
// ends as the unit mean direction of its members among the n unit rows of x.
void SphericalKMeans(const float* x, int64_t n, int64_t d, int64_t K,
                     int iterations, WorkspaceMeter* meter, float* cent) {
  if (n == 0 || K == 0) return;
  // Similarities in blocks of rows, as in TreeAssign.
  constexpr int64_t kFitBlock = 256;
  Scratch<float> sims(meter, std::min(n, kFitBlock) * K), sum(meter, K * d);
  Scratch<int32_t> assign(meter, n);
  for (int it = 0; it < iterations; ++it) {
    for (int64_t j = 0; j < n; ++j) {
      if (j % kFitBlock == 0)
        Gemm(false, true, std::min(kFitBlock, n - j), K, d, 1.0f, x + j * d, d,
             cent, d, 0.0f, sims.data(), K);
      const float* r = sims.data() + (j % kFitBlock) * K;
      const float mx = Max(r, K);
      int64_t t = 0;
      while (t + 1 < K && r[t] != mx) ++t;
      assign[j] = static_cast<int32_t>(t);
    }
    sum.Zero();
    for (int64_t j = 0; j < n; ++j) {
      float* c = sum.data() + assign[j] * d;
      for (int64_t e = 0; e < d; ++e) c[e] += x[j * d + e];
    }
    for (int64_t t = 0; t < K; ++t) {
      const float* c = sum.data() + t * d;
      double n2 = 0;
      for (int64_t e = 0; e < d; ++e) n2 += double(c[e]) * c[e];
      if (n2 == 0) continue;  // empty cluster: keep the old centroid
      const float inv = static_cast<float>(1.0 / std::sqrt(n2));
      for (int64_t e = 0; e < d; ++e) cent[t * d + e] = c[e] * inv;
    }
  }
}

// Leaf of each of n rows of x (row stride ld) in the two-level tree.
void TreeAssign(const float* x, int64_t ld, int64_t n, int64_t d,
                const float* top, int64_t K1, const float* leaves, int64_t K2,
                WorkspaceMeter* meter, uint32_t* out) {
  // Blocks of rows whose similarities stay in cache between the GEMM that
  // writes them and the argmax that reads them (at N = 16384 the whole
  // matrix was 16 MB per slice, written, zeroed and read through memory).
  constexpr int64_t kAssignBlock = 256;
  Scratch<float> sims(meter, std::min(n, kAssignBlock) * K1);
  for (int64_t j = 0; j < n; ++j) {
    if (j % kAssignBlock == 0)
      Gemm(false, true, std::min(kAssignBlock, n - j), K1, d, 1.0f, x + j * ld,
           ld, top, d, 0.0f, sims.data(), K1);
    const float* r = sims.data() + (j % kAssignBlock) * K1;
    const float mx = Max(r, K1);
    int64_t t = 0;
    while (t + 1 < K1 && r[t] != mx) ++t;
    if (K2 == 1) {  // one child: nothing to compare
      out[j] = static_cast<uint32_t>(t);
      continue;
    }
    const float* row = x + j * ld;
    const float* child = leaves + t * K2 * d;
    int64_t best = 0;
    float best_v = -std::numeric_limits<float>::infinity();
    for (int64_t u = 0; u < K2; ++u) {
      const float v = Dot(row, child + u * d, d);
      if (v > best_v) {
        best_v = v;
        best = u;
      }
    }
    out[j] = static_cast<uint32_t>(t * K2 + best);
  }
}

}  // namespace

void FitKMeans(const Slice& s, int64_t clusters, int iterations, uint64_t seed,
               int round, WorkspaceMeter* meter, KMeansModel* model) {
  PhaseScope scope(Phase::kKMeansFit);
  const int64_t nk = s.nk, d = s.d;
  const int64_t K = std::max<int64_t>(1, std::min(clusters, nk));
  // One level while that is affordable (it clusters better: measured on the
  // clustered and smooth families); a tree beyond.
  const int64_t K1 =
      K <= kMaxFlatCentroids
          ? K
          : static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(K))));
  const int64_t K2 = (K + K1 - 1) / K1;
  model->d = d;
  model->k1 = K1;
  model->k2 = K2;
  // Training sample of unit key directions.
  const std::vector<int64_t> train =
      SampleRows(seed, DrawPurpose::kHash, static_cast<int64_t>(round) + 1000,
                 s.h, nk, std::min(nk, K * kKMeansSamplesPerCentroid));
  const int64_t nt = static_cast<int64_t>(train.size());
  Scratch<float> unit(meter, nt * d);
  for (int64_t t = 0; t < nt; ++t) {
    const float* k = s.krow(train[t]);
    const double n2 = SumSquares(k, d);
    const float inv = n2 > 0 ? static_cast<float>(1.0 / std::sqrt(n2)) : 0.0f;
    for (int64_t c = 0; c < d; ++c) unit[t * d + c] = k[c] * inv;
  }
  // Top level.
  std::vector<float>& top = model->top;
  std::vector<float>& leaves = model->leaves;
  top.assign(K1 * d, 0.0f);
  leaves.assign(K1 * K2 * d, 0.0f);
  const std::vector<int64_t> init =
      SampleRows(seed, DrawPurpose::kHash, static_cast<int64_t>(round) + 2000,
                 s.h, nt, std::min(K1, nt));
  for (int64_t t = 0; t < K1; ++t)
    std::memcpy(top.data() + t * d, unit.data() + init[t % init.size()] * d,
                d * sizeof(float));
  SphericalKMeans(unit.data(), nt, d, K1, iterations, meter, top.data());
  const DrawCache::Draw dir_draw =
      DrawCache::Global().HashProjections(seed, s.h, round, 1, d);
  model->dir = *dir_draw;
  if (K2 == 1) {
    // One child per top centroid: assignment never compares children, so
    // they are the tops themselves (fitting them changed no leaf).
    leaves = top;
    return;
  }
  // Second level: each top centroid's sample members, clustered into K2.
  Scratch<uint32_t> tops(meter, nt);
  TreeAssign(unit.data(), d, nt, d, top.data(), K1, top.data(), 1, meter,
             tops.data());
  Scratch<float> members(meter, nt * d);
  for (int64_t t = 0; t < K1 && !s.stopped(); ++t) {
    int64_t n = 0;
    for (int64_t j = 0; j < nt; ++j)
      if (tops[j] == static_cast<uint32_t>(t))
        std::memcpy(members.data() + (n++) * d, unit.data() + j * d,
                    d * sizeof(float));
    float* child = leaves.data() + t * K2 * d;
    for (int64_t u = 0; u < K2; ++u) {
      // Spread the initial children over the members (or the parent when the
      // top cluster is empty).
      const float* src =
          n > 0 ? members.data() + ((u * n) / K2) * d : top.data() + t * d;
      std::memcpy(child + u * d, src, d * sizeof(float));
    }
    SphericalKMeans(members.data(), n, d, K2, iterations, meter, child);
  }
}

void KMeansOrderKeys(const KMeansModel& model, const float* x, int64_t ld,
                     int64_t n, const CancelToken* cancel,
                     WorkspaceMeter* meter, HashKey* out) {
  PhaseScope scope(Phase::kHashAssign);
  const int64_t d = model.d;
  // In blocks of rows (each row's leaf is its own), so that a stop is seen
  // within one block: a whole N = 65536 pass is ~100 ms of one core.
  constexpr int64_t kOrderBlock = 8192;
  Scratch<uint32_t> leaf(meter, std::min(n, kOrderBlock));
  for (int64_t j0 = 0; j0 < n && !Stopped(cancel); j0 += kOrderBlock) {
    const int64_t nb = std::min(kOrderBlock, n - j0);
    TreeAssign(x + j0 * ld, ld, nb, d, model.top.data(), model.k1,
               model.leaves.data(), model.k2, meter, leaf.data());
    for (int64_t j = 0; j < nb; ++j) {
      const float v = Dot(model.dir.data(), x + (j0 + j) * ld, d);
      out[j0 + j] = HashKey{leaf[j], v};
    }
  }
}

void CrossPolytopeOrderKeys(const float* x, int64_t ld, int64_t n, int64_t d,
                            const std::vector<float>& proj, int P,
                            WorkspaceMeter* meter, HashKey* out) {
  HashRows(x, ld, n, d, nullptr, proj, P, meter, out);
}

namespace {

void KMeansHash(const Slice& s, int64_t clusters, int iterations, uint64_t seed,
                int round, WorkspaceMeter* meter, HashKey* hk, HashKey* hq) {
  KMeansModel model;
  FitKMeans(s, clusters, iterations, seed, round, meter, &model);
  KMeansOrderKeys(model, s.k, s.k_row, s.nk, s.cancel, meter, hk);
  KMeansOrderKeys(model, s.q, s.q_row, s.nq, s.cancel, meter, hq);
}

// korder = 0..n-1 sorted by (hash key, index). The keys are packed into
// one integer per row first (bucket, then the value's bits mapped to an
// unsigned order) so that the sort compares plain integers in a contiguous
// array instead of chasing HashKeys through the indices.
void SortByHash(const HashKey* hk, int64_t n, WorkspaceMeter* meter,
                int64_t* korder) {
  struct Item {
    uint64_t key;
    int64_t index;
  };
  Scratch<Item> items(meter, n);
  for (int64_t j = 0; j < n; ++j) {
    uint32_t bits = __builtin_bit_cast(uint32_t, hk[j].value);
    if (bits == 0x80000000u) bits = 0;  // -0 == +0, as the float compare
    // Negative floats order by their inverted bits, the others above them.
    bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    items[j] = Item{(uint64_t{hk[j].bucket} << 32) | bits, j};
  }
  std::sort(items.data(), items.data() + n, [](const Item& a, const Item& b) {
    return a.key != b.key ? a.key < b.key : a.index < b.index;
  });
  for (int64_t j = 0; j < n; ++j) korder[j] = items[j].index;
}

}  // namespace

void BuildLsh(const Slice& s, const SupportOptions& o, WorkspaceMeter* meter,
              LshRounds* out) {
  const int64_t nq = s.nq, nk = s.nk;
  out->complete = false;
  out->rounds = o.num_hashes;
  out->nk = nk;
  out->nq = nq;
  if (nk == 0) {
    out->nchunks = 0;
    out->complete = true;
    return;
  }
  const int64_t c = std::min<int64_t>(std::max(o.bucket_size, 1), nk);
  const int64_t nchunks = (nk + c - 1) / c;
  out->nchunks = nchunks;
  const int R = o.num_hashes;
  const int P = o.hash_projections;
  out->korder.Reset(meter, static_cast<size_t>(R) * nk);
  out->qorder.Reset(meter, static_cast<size_t>(R) * nq);
  out->kstart.Reset(meter, static_cast<size_t>(R) * (nchunks + 1));
  out->qstart.Reset(meter, static_cast<size_t>(R) * (nchunks + 1));
  out->qchunk.Reset(meter, static_cast<size_t>(R) * nq);
  out->kchunk.Reset(meter, static_cast<size_t>(R) * nk);
  Scratch<HashKey> hq(meter, nq), hk(meter, nk);
  Scratch<float> qextra, kextra;
  const bool smyrf = o.transform == LshTransform::kSmyrf;
  if (smyrf) {
    // q -> [q, 0, sqrt(M - |q|^2)], k -> [k, sqrt(M - |k|^2), 0].
    qextra.Reset(meter, 2 * nq);
    kextra.Reset(meter, 2 * nk);
    double qmax = 0, kmax = 0;
    std::vector<double> qn(nq), kn(nk);
    for (int64_t i = 0; i < nq; ++i) {
      double a = 0;
      for (int64_t t = 0; t < s.d; ++t)
        a += double(s.qrow(i)[t]) * s.qrow(i)[t];
      qn[i] = a;
      qmax = std::max(qmax, a);
    }
    for (int64_t j = 0; j < nk; ++j) {
      double a = 0;
      for (int64_t t = 0; t < s.d; ++t)
        a += double(s.krow(j)[t]) * s.krow(j)[t];
      kn[j] = a;
      kmax = std::max(kmax, a);
    }
    const double M = qmax + kmax;
    for (int64_t i = 0; i < nq; ++i) {
      qextra[2 * i] = 0.0f;
      qextra[2 * i + 1] =
          static_cast<float>(std::sqrt(std::max(0.0, M - qn[i])));
    }
    for (int64_t j = 0; j < nk; ++j) {
      kextra[2 * j] = static_cast<float>(std::sqrt(std::max(0.0, M - kn[j])));
      kextra[2 * j + 1] = 0.0f;
    }
  }
  const int64_t D = smyrf ? s.d + 2 : s.d;
  for (int round = 0; round < R; ++round) {
    if (o.hash == LshHash::kKMeans) {
      KMeansHash(s, nchunks, o.kmeans_iterations, o.seed, round, meter,
                 hk.data(), hq.data());
    } else {
      const DrawCache::Draw proj_draw =
          DrawCache::Global().HashProjections(o.seed, s.h, round, 2 * P, D);
      const std::vector<float>& proj = *proj_draw;
      HashRows(s.k, s.k_row, nk, s.d, smyrf ? kextra.data() : nullptr, proj, P,
               meter, hk.data());
      HashRows(s.q, s.q_row, nq, s.d, smyrf ? qextra.data() : nullptr, proj, P,
               meter, hq.data());
    }
    if (s.stopped()) return;  // hashes may be unset: incomplete
    PhaseScope sort_scope(Phase::kSortChunk);
    int64_t* korder = out->korder.data() + static_cast<size_t>(round) * nk;
    int64_t* kstart =
        out->kstart.data() + static_cast<size_t>(round) * (nchunks + 1);
    int64_t* qorder = out->qorder.data() + static_cast<size_t>(round) * nq;
    int64_t* qstart =
        out->qstart.data() + static_cast<size_t>(round) * (nchunks + 1);
    SortByHash(hk.data(), nk, meter, korder);
    for (int64_t t = 0; t <= nchunks; ++t) kstart[t] = t * nk / nchunks;
    int32_t* kc = out->kchunk.data() + static_cast<size_t>(round) * nk;
    for (int64_t t = 0; t < nchunks; ++t)
      for (int64_t pos = kstart[t]; pos < kstart[t + 1]; ++pos)
        kc[korder[pos]] = static_cast<int32_t>(t);
    // Queries: the chunk whose first key hashes at or below the query.
    int32_t* qc = out->qchunk.data() + static_cast<size_t>(round) * nq;
    std::vector<int64_t> counts(nchunks + 1, 0);
    for (int64_t i = 0; i < nq; ++i) {
      int64_t lo = 1, hi = nchunks;  // first chunk t >= 1 with start > hq
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (hq[i] < hk[korder[kstart[mid]]])
          hi = mid;
        else
          lo = mid + 1;
      }
      qc[i] = static_cast<int32_t>(lo - 1);
      ++counts[lo - 1];
    }
    qstart[0] = 0;
    for (int64_t t = 0; t < nchunks; ++t) qstart[t + 1] = qstart[t] + counts[t];
    std::vector<int64_t> fill(qstart, qstart + nchunks);
    for (int64_t i = 0; i < nq; ++i) qorder[fill[qc[i]]++] = i;
  }
  out->complete = true;
}

bool LshRounds::Meets(int64_t i, int64_t j, int rounds_below) const {
  for (int r = 0; r < rounds_below; ++r)
    if (qchunk[static_cast<size_t>(r) * nq + i] ==
        kchunk[static_cast<size_t>(r) * nk + j])
      return true;
  return false;
}

}  // namespace cpu
}  // namespace scatterbrain
