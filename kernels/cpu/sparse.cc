// scatterbrain/kernels/cpu/sparse.cc — the sparse support: LSH clusters and
// local windows, accumulated exactly (and, for Scatterbrain, together with
// the low-rank estimate on the same pairs).
//
// LSH: each round hashes every valid key and every query to a point on a
// 1-D order (two levels of cross-polytope buckets, then the winning
// projection's value), sorts the keys and cuts them into equal-size chunks.
// A query joins the chunk whose key range holds its own hash, so every query
// sees exactly one chunk per round (per-query cost is fixed) and queries and
// keys that hash alike meet even when their counts per bucket differ (cutting
// queries and keys into chunks separately, as SMYRF does, misaligns them).
// A pair found in several rounds, or also in the local window, counts once.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/profile.h"
#include "kernels/cpu/vmath.h"
#include "kernels/random_draws.h"

namespace scatterbrain {
namespace cpu {
namespace {

constexpr int64_t kTileRows = 128;
constexpr int64_t kLocalBlock = 64;

// Scratch buffers reused by every tile of a slice.
struct TileBuffers {
  Scratch<float> qt, kt, vt, fq, fk, sc, pv, f1;
};

// The low-rank side of a tile. Pairwise: the estimate on every accepted
// pair is accumulated into acc->lv / acc->f1 (the in-support part, later
// taken out of the low-rank total). Fused (unmasked tiles of a single-round,
// non-causal LSH support, where each query meets exactly one key chunk):
// the chunk's sums Zc = phi(K_c)^T [V_c, 1] were made once, and the row's
// out-of-support part phi(q) . (Z - Zc) is written directly, m * dv work per
// row instead of nj * (m + dv).
struct FusedChunk {
  const float* zout;  // m x dv: Z - Zc
  const float* z1c;   // m: column sums of phi(K_c)
  const float* z1;    // m: column sums of phi(K) over all valid keys
};

// Exact (and low-rank) contributions of keys J to query rows I, for the
// pairs `allowed(i, j)` accepts (not consulted when `masked` is false: the
// caller knows every pair of the tile is in). The pairwise low-rank
// numerator is added to acc->lv times `lowrank_sign` (-1 when lv holds the
// fused path's off-support numerator and the pairs join the support).
template <typename Allowed>
void ProcessTile(const Slice& s, const Features* f, const FusedChunk* fused,
                 const int64_t* I, int64_t ni, const int64_t* J, int64_t nj,
                 bool masked, const Allowed& allowed, WorkspaceMeter* meter,
                 TileBuffers* tb, SparseAcc* acc, LowRank* lr,
                 float lowrank_sign) {
  if (ni == 0 || nj == 0) return;
  const int64_t d = s.d, dv = s.dv;
  const int m = f ? f->m : 0;
  float* qt = tb->qt.Ensure(meter, ni * d);
  float* kt = tb->kt.Ensure(meter, nj * d);
  float* vt = tb->vt.Ensure(meter, nj * dv);
  for (int64_t r = 0; r < ni; ++r)
    std::memcpy(qt + r * d, s.qrow(I[r]), d * sizeof(float));
  for (int64_t c = 0; c < nj; ++c) {
    std::memcpy(kt + c * d, s.krow(J[c]), d * sizeof(float));
    std::memcpy(vt + c * dv, s.vrow(J[c]), dv * sizeof(float));
  }
  // Rows 0..ni-1 of w: exact weights; rows ni..2ni-1: pairwise low-rank.
  const bool pairwise_f = f && !fused;
  const int64_t wrows = pairwise_f ? 2 * ni : ni;
  float* w = tb->sc.Ensure(meter, wrows * nj);
  Gemm(false, true, ni, nj, d, s.tau, qt, d, kt, d, 0.0f, w, nj);
  float* pv = tb->pv.Ensure(meter, wrows * dv);
  if (f) {
    float* fq = tb->fq.Ensure(meter, ni * m);
    for (int64_t r = 0; r < ni; ++r)
      std::memcpy(fq + r * m, f->q.data() + I[r] * m, m * sizeof(float));
    if (pairwise_f) {
      float* fk = tb->fk.Ensure(meter, nj * m);
      for (int64_t c = 0; c < nj; ++c)
        std::memcpy(fk + c * m, f->k.data() + J[c] * m, m * sizeof(float));
      Gemm(false, true, ni, nj, m, 1.0f, fq, m, fk, m, 0.0f, w + ni * nj, nj);
    } else {
      float* lv = tb->fk.Ensure(meter, ni * dv + 2 * ni);
      float* f1 = lv + ni * dv;
      float* den = f1 + ni;
      Gemm(false, false, ni, dv, m, 1.0f, fq, m, fused->zout, dv, 0.0f, lv, dv);
      Gemm(false, false, ni, 1, m, 1.0f, fq, m, fused->z1c, 1, 0.0f, f1, 1);
      Gemm(false, false, ni, 1, m, 1.0f, fq, m, fused->z1, 1, 0.0f, den, 1);
      for (int64_t r = 0; r < ni; ++r) {
        const int64_t i = I[r];
        std::memcpy(acc->lv.data() + i * dv, lv + r * dv, dv * sizeof(float));
        acc->f1[i] = f1[r];
        lr->den[i] = den[r];
      }
    }
  }
  bool any = false;
  for (int64_t r = 0; r < ni; ++r) {
    const int64_t i = I[r];
    float* row = w + r * nj;
    float* frow = pairwise_f ? w + (ni + r) * nj : nullptr;
    float mx = -std::numeric_limits<float>::infinity();
    int64_t n_ok = 0;
    if (!masked) {
      mx = Max(row, nj);
      n_ok = nj;
    } else {
      for (int64_t c = 0; c < nj; ++c) {
        if (allowed(i, J[c])) {
          mx = std::max(mx, row[c]);
          ++n_ok;
        } else {
          row[c] = -std::numeric_limits<float>::infinity();
          if (frow) frow[c] = 0.0f;
        }
      }
    }
    if (n_ok == 0) {
      std::fill(row, row + nj, 0.0f);
      continue;
    }
    any = true;
    acc->count[i] += n_ok;
    float& emax = acc->emax[i];
    if (mx > emax) {
      if (emax > -std::numeric_limits<float>::infinity()) {
        const float scale = std::exp(emax - mx);
        acc->e1[i] *= scale;
        float* ev = acc->ev.data() + i * dv;
        for (int64_t c = 0; c < dv; ++c) ev[c] *= scale;
      }
      emax = mx;
    }
    ExpInPlace(row, nj, -emax);  // masked entries are -inf: weight 0
    acc->e1[i] += Sum(row, nj);
    if (frow) acc->f1[i] += Sum(frow, nj);
  }
  if (!any) return;
  Gemm(false, false, wrows, dv, nj, 1.0f, w, nj, vt, dv, 0.0f, pv, dv);
  for (int64_t r = 0; r < ni; ++r) {
    const int64_t i = I[r];
    float* ev = acc->ev.data() + i * dv;
    const float* src = pv + r * dv;
    for (int64_t c = 0; c < dv; ++c) ev[c] += src[c];
    if (pairwise_f) {
      float* lv = acc->lv.data() + i * dv;
      const float* fsrc = pv + (ni + r) * dv;
      for (int64_t c = 0; c < dv; ++c) lv[c] += lowrank_sign * fsrc[c];
    }
  }
}

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
    // Level 1: projections [0, P); level 2: [P, 2P). Bucket = argmax of +-p.
    uint32_t bucket = 0;
    float value = 0.0f;
    for (int level = 0; level < 2; ++level) {
      int best = 0;
      float best_v = -std::numeric_limits<float>::infinity();
      for (int l = 0; l < P; ++l) {
        const float v = pi[level * P + l];
        if (v > best_v) {
          best_v = v;
          best = 2 * l;
        }
        if (-v > best_v) {
          best_v = -v;
          best = 2 * l + 1;
        }
      }
      bucket = bucket * (2 * P) + best;
      value = best_v;
    }
    out[i] = HashKey{bucket, value};
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
  Scratch<float> sims(meter, n * K), sum(meter, K * d);
  Scratch<int32_t> assign(meter, n);
  for (int it = 0; it < iterations; ++it) {
    Gemm(false, true, n, K, d, 1.0f, x, d, cent, d, 0.0f, sims.data(), K);
    for (int64_t j = 0; j < n; ++j) {
      const float* r = sims.data() + j * K;
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
  Scratch<float> sims(meter, n * K1);
  Gemm(false, true, n, K1, d, 1.0f, x, ld, top, d, 0.0f, sims.data(), K1);
  for (int64_t j = 0; j < n; ++j) {
    const float* r = sims.data() + j * K1;
    const float mx = Max(r, K1);
    int64_t t = 0;
    while (t + 1 < K1 && r[t] != mx) ++t;
    const float* row = x + j * ld;
    const float* child = leaves + t * K2 * d;
    int64_t best = 0;
    float best_v = -std::numeric_limits<float>::infinity();
    for (int64_t u = 0; u < K2; ++u) {
      float v = 0;
      for (int64_t e = 0; e < d; ++e) v += row[e] * child[u * d + e];
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
    double n2 = 0;
    for (int64_t c = 0; c < d; ++c) n2 += double(k[c]) * k[c];
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
  const DrawCache::Draw dir_draw =
      DrawCache::Global().HashProjections(seed, s.h, round, 1, d);
  model->dir = *dir_draw;
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
      const float* row = x + (j0 + j) * ld;
      float v = 0;
      for (int64_t c = 0; c < d; ++c) v += model.dir[c] * row[c];
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
    for (int64_t j = 0; j < nk; ++j) korder[j] = j;
    std::sort(korder, korder + nk, [&](int64_t a, int64_t b) {
      return hk[a] < hk[b] || (!(hk[b] < hk[a]) && a < b);
    });
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

bool FusesLowRank(const Slice& s, const SupportOptions& o) {
  return o.allow_fused && o.lsh && !o.local && o.num_hashes == 1 && !s.causal;
}

void AccumulateSupport(const Slice& s, const SupportOptions& o,
                       const Features* f, LowRank* lr, WorkspaceMeter* meter,
                       SparseAcc* acc) {
  PhaseScope scope(Phase::kSparsePass);
  const int64_t nq = s.nq, nk = s.nk, dv = s.dv;
  const bool fused = f && FusesLowRank(s, o);
  acc->emax.Reset(meter, nq);
  std::fill(acc->emax.data(), acc->emax.data() + nq,
            -std::numeric_limits<float>::infinity());
  acc->e1.ResetZero(meter, nq);
  acc->ev.ResetZero(meter, static_cast<size_t>(nq) * dv);
  acc->count.ResetZero(meter, nq);
  if (f) {
    acc->f1.ResetZero(meter, nq);
    acc->lv.ResetZero(meter, static_cast<size_t>(nq) * dv);
    if (fused) lr->den.ResetZero(meter, nq);
  }
  // Without the fused path, lv collects the low-rank estimate on the support;
  // the low-rank total minus it is what the rest of each row gets.
  auto finish = [&]() {
    if (!f || fused) return;
    for (int64_t x = 0; x < nq * dv; ++x) acc->lv[x] = lr->num[x] - acc->lv[x];
  };
  if (nk == 0) {
    finish();
    return;
  }
  TileBuffers tb;
  const int64_t half = o.window / 2;
  auto in_window = [&](int64_t i, int64_t j) {
    const int64_t pos = i + s.offset;
    return j >= pos - half && j <= pos + half;
  };
  auto causal_ok = [&](int64_t i, int64_t j) {
    return !s.causal || j <= i + s.offset;
  };

  if (o.local) {
    Scratch<int64_t> rows(meter, kLocalBlock);
    Scratch<int64_t> keys(meter, kLocalBlock + 2 * half + 1);
    for (int64_t i0 = 0; i0 < nq; i0 += kLocalBlock) {
      if (s.stopped()) return;  // the caller abandons the slice
      const int64_t i1 = std::min(nq, i0 + kLocalBlock);
      const int64_t lo = std::max<int64_t>(0, i0 + s.offset - half);
      int64_t hi = std::min<int64_t>(nk, i1 - 1 + s.offset + half + 1);
      if (s.causal) hi = std::min(hi, s.KeyLimit(i1 - 1));
      if (hi <= lo) continue;
      for (int64_t i = i0; i < i1; ++i) rows[i - i0] = i;
      int64_t nj = 0;
      for (int64_t j = lo; j < hi; ++j) keys[nj++] = j;
      ProcessTile(
          s, f, nullptr, rows.data(), i1 - i0, keys.data(), nj, /*masked=*/true,
          [&](int64_t i, int64_t j) {
            return in_window(i, j) && causal_ok(i, j);
          },
          meter, &tb, acc, lr, 1.0f);
    }
  }

  LshRounds own;
  const LshRounds* L = nullptr;
  if (o.lsh) {
    L = o.lsh_rounds;
    if (L == nullptr) {
      BuildLsh(s, o, meter, &own);
      if (!own.complete) return;  // stopped: the caller abandons the slice
      L = &own;
    }
    const int64_t nchunks = L->nchunks;
    const int R = L->rounds;
    for (int round = 0; round < R; ++round) {
      const int64_t* korder =
          L->korder.data() + static_cast<size_t>(round) * nk;
      const int64_t* kstart =
          L->kstart.data() + static_cast<size_t>(round) * (nchunks + 1);
      const int64_t* qorder =
          L->qorder.data() + static_cast<size_t>(round) * nq;
      const int64_t* qstart =
          L->qstart.data() + static_cast<size_t>(round) * (nchunks + 1);
      auto allowed = [&](int64_t i, int64_t j) {
        if (!causal_ok(i, j)) return false;
        if (o.local && in_window(i, j)) return false;
        return !L->Meets(i, j, round);
      };
      const bool masked = s.causal || o.local || round > 0;
      // Fused low-rank: every chunk's Zc = phi(K_c)^T V_c and column sums,
      // and their totals (the chunks partition the valid keys).
      Scratch<float> zc, z1c, ztot, zout;
      const int m = f ? f->m : 0;
      if (fused) {
        PhaseScope lowrank_scope(Phase::kLowRank);
        const int64_t cmax = kstart[1] - kstart[0] + 1;
        zc.Reset(meter, static_cast<size_t>(nchunks) * m * dv);
        z1c.ResetZero(meter, static_cast<size_t>(nchunks) * m);
        ztot.ResetZero(meter, static_cast<size_t>(m) * (dv + 1));
        zout.Reset(meter, static_cast<size_t>(m) * dv);
        float* fk = tb.fk.Ensure(meter, static_cast<size_t>(cmax + 1) * m);
        float* vt = tb.vt.Ensure(meter, static_cast<size_t>(cmax + 1) * dv);
        for (int64_t t = 0; t < nchunks; ++t) {
          if (s.stopped()) return;
          const int64_t nj = kstart[t + 1] - kstart[t];
          float* z1 = z1c.data() + t * m;
          for (int64_t a = 0; a < nj; ++a) {
            const int64_t j = korder[kstart[t] + a];
            std::memcpy(fk + a * m, f->k.data() + j * m, m * sizeof(float));
            std::memcpy(vt + a * dv, s.vrow(j), dv * sizeof(float));
            for (int l = 0; l < m; ++l) z1[l] += fk[a * m + l];
          }
          float* z = zc.data() + t * m * dv;
          Gemm(true, false, m, dv, nj, 1.0f, fk, m, vt, dv, 0.0f, z, dv);
          for (int64_t x = 0; x < m * dv; ++x) ztot[x] += z[x];
          for (int l = 0; l < m; ++l) ztot[m * dv + l] += z1[l];
        }
      }
      for (int64_t t = 0; t < nchunks; ++t) {
        if (s.stopped()) return;
        const int64_t* J = korder + kstart[t];
        const int64_t nj = kstart[t + 1] - kstart[t];
        FusedChunk fc;
        if (fused) {
          const float* z = zc.data() + t * m * dv;
          for (int64_t x = 0; x < m * dv; ++x) zout[x] = ztot[x] - z[x];
          fc =
              FusedChunk{zout.data(), z1c.data() + t * m, ztot.data() + m * dv};
        }
        for (int64_t a = qstart[t]; a < qstart[t + 1]; a += kTileRows) {
          const int64_t ni = std::min(kTileRows, qstart[t + 1] - a);
          ProcessTile(s, f, fused ? &fc : nullptr, qorder + a, ni, J, nj,
                      masked, allowed, meter, &tb, acc, lr, 1.0f);
        }
      }
    }
  }

  // Global keys: in every row's support, unless already there. With the
  // fused low-rank, lv holds the numerator OFF the support, so their
  // low-rank part is taken out of it rather than added.
  if (o.globals != nullptr && !o.globals->empty()) {
    std::vector<int64_t> J;
    for (int64_t j : *o.globals)
      if (j >= 0 && j < nk) J.push_back(j);
    Scratch<int64_t> rows(meter, kTileRows);
    auto allowed = [&](int64_t i, int64_t j) {
      if (!causal_ok(i, j)) return false;
      if (o.local && in_window(i, j)) return false;
      return L == nullptr || !L->Meets(i, j, L->rounds);
    };
    for (int64_t i0 = 0; i0 < nq && !J.empty(); i0 += kTileRows) {
      if (s.stopped()) return;
      const int64_t i1 = std::min(nq, i0 + kTileRows);
      for (int64_t i = i0; i < i1; ++i) rows[i - i0] = i;
      ProcessTile(s, f, nullptr, rows.data(), i1 - i0, J.data(),
                  static_cast<int64_t>(J.size()), /*masked=*/true, allowed,
                  meter, &tb, acc, lr, fused ? -1.0f : 1.0f);
    }
  }
  finish();
}

void WriteSparseOnly(const Slice& s, const SparseAcc& acc, SliceStats* st) {
  for (int64_t i = 0; i < s.nq; ++i) {
    float* o = s.orow(i);
    if (s.KeyLimit(i) <= 0 || acc.count[i] == 0 || !(acc.e1[i] > 0.0f)) {
      // No visible key in this row's support: nothing to average.
      if (s.KeyLimit(i) > 0) ++st->guards;
      std::fill(o, o + s.dv, 0.0f);
      continue;
    }
    const float inv = 1.0f / acc.e1[i];
    const float* ev = acc.ev.data() + i * s.dv;
    for (int64_t c = 0; c < s.dv; ++c) o[c] = ev[c] * inv;
  }
}

}  // namespace cpu
}  // namespace scatterbrain
