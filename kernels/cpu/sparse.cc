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
#include "kernels/random_draws.h"

namespace scatterbrain {
namespace cpu {
namespace {

constexpr int64_t kTileRows = 128;
constexpr int64_t kLocalBlock = 64;

struct HashKey {
  uint32_t bucket;
  float value;
  bool operator<(const HashKey& o) const {
    return bucket != o.bucket ? bucket < o.bucket : value < o.value;
  }
};

// Scratch buffers reused by every tile of a slice.
struct TileBuffers {
  Scratch<float> qt, kt, vt, fq, fk, sc, fw, pv;
  Scratch<int64_t> rows, keys;
};

// Exact (and low-rank) contributions of keys J to query rows I, for the
// pairs `allowed(i, j)` accepts.
template <typename Allowed>
void ProcessTile(const Slice& s, const Features* f, const int64_t* I,
                 int64_t ni, const int64_t* J, int64_t nj,
                 const Allowed& allowed, WorkspaceMeter* meter,
                 TileBuffers* tb, SparseAcc* acc) {
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
  // Rows 0..ni-1 of w: exact weights; rows ni..2ni-1: low-rank weights.
  const int64_t wrows = f ? 2 * ni : ni;
  float* w = tb->sc.Ensure(meter, wrows * nj);
  Gemm(false, true, ni, nj, d, s.tau, qt, d, kt, d, 0.0f, w, nj);
  if (f) {
    float* fq = tb->fq.Ensure(meter, ni * m);
    float* fk = tb->fk.Ensure(meter, nj * m);
    for (int64_t r = 0; r < ni; ++r)
      std::memcpy(fq + r * m, f->q.data() + I[r] * m, m * sizeof(float));
    for (int64_t c = 0; c < nj; ++c)
      std::memcpy(fk + c * m, f->k.data() + J[c] * m, m * sizeof(float));
    Gemm(false, true, ni, nj, m, 1.0f, fq, m, fk, m, 0.0f, w + ni * nj, nj);
  }
  bool any = false;
  for (int64_t r = 0; r < ni; ++r) {
    const int64_t i = I[r];
    float* row = w + r * nj;
    float* frow = f ? w + (ni + r) * nj : nullptr;
    float mx = -std::numeric_limits<float>::infinity();
    int64_t n_ok = 0;
    for (int64_t c = 0; c < nj; ++c) {
      if (allowed(i, J[c])) {
        mx = std::max(mx, row[c]);
        ++n_ok;
      } else {
        row[c] = -std::numeric_limits<float>::infinity();
        if (frow) frow[c] = 0.0f;
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
    double sum = 0;
    for (int64_t c = 0; c < nj; ++c) {
      row[c] = std::exp(row[c] - emax);
      sum += row[c];
    }
    acc->e1[i] += static_cast<float>(sum);
    if (frow) {
      double fs = 0;
      for (int64_t c = 0; c < nj; ++c) fs += frow[c];
      acc->f1[i] += static_cast<float>(fs);
    }
  }
  if (!any) return;
  float* pv = tb->pv.Ensure(meter, wrows * dv);
  Gemm(false, false, wrows, dv, nj, 1.0f, w, nj, vt, dv, 0.0f, pv, dv);
  for (int64_t r = 0; r < ni; ++r) {
    const int64_t i = I[r];
    float* ev = acc->ev.data() + i * dv;
    const float* src = pv + r * dv;
    for (int64_t c = 0; c < dv; ++c) ev[c] += src[c];
    if (f) {
      float* fv = acc->fv.data() + i * dv;
      const float* fsrc = pv + (ni + r) * dv;
      for (int64_t c = 0; c < dv; ++c) fv[c] += fsrc[c];
    }
  }
}

// Hash keys of n rows of x (row stride ld) for one round. `extra` holds the
// SMYRF transform's appended coordinates (2 per row) or is null.
void HashRows(const float* x, int64_t ld, int64_t n, int64_t d,
              const float* extra, const std::vector<float>& proj, int P,
              WorkspaceMeter* meter, HashKey* out) {
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
        if (v > best_v) { best_v = v; best = 2 * l; }
        if (-v > best_v) { best_v = -v; best = 2 * l + 1; }
      }
      bucket = bucket * (2 * P) + best;
      value = best_v;
    }
    out[i] = HashKey{bucket, value};
  }
}

}  // namespace

void AccumulateSupport(const Slice& s, const SupportOptions& o,
                       const Features* f, WorkspaceMeter* meter,
                       SparseAcc* acc) {
  const int64_t nq = s.nq, nk = s.nk, dv = s.dv;
  acc->emax.Reset(meter, nq);
  std::fill(acc->emax.data(), acc->emax.data() + nq,
            -std::numeric_limits<float>::infinity());
  acc->e1.Reset(meter, nq);
  acc->ev.Reset(meter, static_cast<size_t>(nq) * dv);
  acc->count.Reset(meter, nq);
  if (f) {
    acc->f1.Reset(meter, nq);
    acc->fv.Reset(meter, static_cast<size_t>(nq) * dv);
  }
  if (nk == 0) return;
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
      const int64_t i1 = std::min(nq, i0 + kLocalBlock);
      const int64_t lo = std::max<int64_t>(0, i0 + s.offset - half);
      int64_t hi = std::min<int64_t>(nk, i1 - 1 + s.offset + half + 1);
      if (s.causal) hi = std::min(hi, s.KeyLimit(i1 - 1));
      if (hi <= lo) continue;
      for (int64_t i = i0; i < i1; ++i) rows[i - i0] = i;
      int64_t nj = 0;
      for (int64_t j = lo; j < hi; ++j) keys[nj++] = j;
      ProcessTile(
          s, f, rows.data(), i1 - i0, keys.data(), nj,
          [&](int64_t i, int64_t j) { return in_window(i, j) && causal_ok(i, j); },
          meter, &tb, acc);
    }
  }

  if (!o.lsh) return;
  const int64_t c = std::min<int64_t>(o.bucket_size, nk);
  const int64_t nchunks = (nk + c - 1) / c;
  const int R = o.num_hashes;
  const int P = o.hash_projections;
  // Chunk ids of every round, kept for de-duplication across rounds.
  Scratch<int32_t> qchunk(meter, static_cast<size_t>(R) * nq);
  Scratch<int32_t> kchunk(meter, static_cast<size_t>(R) * nk);
  Scratch<HashKey> hq(meter, nq), hk(meter, nk);
  Scratch<int64_t> korder(meter, nk), qorder(meter, nq);
  Scratch<int64_t> kstart(meter, nchunks + 1), qstart(meter, nchunks + 1);
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
      for (int64_t t = 0; t < s.d; ++t) a += double(s.qrow(i)[t]) * s.qrow(i)[t];
      qn[i] = a;
      qmax = std::max(qmax, a);
    }
    for (int64_t j = 0; j < nk; ++j) {
      double a = 0;
      for (int64_t t = 0; t < s.d; ++t) a += double(s.krow(j)[t]) * s.krow(j)[t];
      kn[j] = a;
      kmax = std::max(kmax, a);
    }
    const double M = qmax + kmax;
    for (int64_t i = 0; i < nq; ++i) {
      qextra[2 * i] = 0.0f;
      qextra[2 * i + 1] = static_cast<float>(std::sqrt(std::max(0.0, M - qn[i])));
    }
    for (int64_t j = 0; j < nk; ++j) {
      kextra[2 * j] = static_cast<float>(std::sqrt(std::max(0.0, M - kn[j])));
      kextra[2 * j + 1] = 0.0f;
    }
  }
  const int64_t D = smyrf ? s.d + 2 : s.d;
  for (int round = 0; round < R; ++round) {
    const std::vector<float> proj = DrawHashProjections(o.seed, s.h, round, 2 * P, D);
    HashRows(s.k, s.k_row, nk, s.d, smyrf ? kextra.data() : nullptr, proj, P,
             meter, hk.data());
    HashRows(s.q, s.q_row, nq, s.d, smyrf ? qextra.data() : nullptr, proj, P,
             meter, hq.data());
    for (int64_t j = 0; j < nk; ++j) korder[j] = j;
    std::sort(korder.data(), korder.data() + nk, [&](int64_t a, int64_t b) {
      return hk[a] < hk[b] || (!(hk[b] < hk[a]) && a < b);
    });
    for (int64_t t = 0; t <= nchunks; ++t) kstart[t] = t * nk / nchunks;
    int32_t* kc = kchunk.data() + static_cast<size_t>(round) * nk;
    for (int64_t t = 0; t < nchunks; ++t)
      for (int64_t pos = kstart[t]; pos < kstart[t + 1]; ++pos)
        kc[korder[pos]] = static_cast<int32_t>(t);
    // Queries: the chunk whose first key hashes at or below the query.
    int32_t* qc = qchunk.data() + static_cast<size_t>(round) * nq;
    std::vector<int64_t> counts(nchunks + 1, 0);
    for (int64_t i = 0; i < nq; ++i) {
      int64_t lo = 1, hi = nchunks;  // first chunk t >= 1 with start > hq
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (hq[i] < hk[korder[kstart[mid]]]) hi = mid; else lo = mid + 1;
      }
      qc[i] = static_cast<int32_t>(lo - 1);
      ++counts[lo - 1];
    }
    qstart[0] = 0;
    for (int64_t t = 0; t < nchunks; ++t) qstart[t + 1] = qstart[t] + counts[t];
    std::vector<int64_t> fill(qstart.data(), qstart.data() + nchunks);
    for (int64_t i = 0; i < nq; ++i) qorder[fill[qc[i]]++] = i;

    auto allowed = [&](int64_t i, int64_t j) {
      if (!causal_ok(i, j)) return false;
      if (o.local && in_window(i, j)) return false;
      for (int r = 0; r < round; ++r)
        if (qchunk[static_cast<size_t>(r) * nq + i] ==
            kchunk[static_cast<size_t>(r) * nk + j])
          return false;
      return true;
    };
    for (int64_t t = 0; t < nchunks; ++t) {
      const int64_t* J = korder.data() + kstart[t];
      const int64_t nj = kstart[t + 1] - kstart[t];
      for (int64_t a = qstart[t]; a < qstart[t + 1]; a += kTileRows) {
        const int64_t ni = std::min(kTileRows, qstart[t + 1] - a);
        ProcessTile(s, f, qorder.data() + a, ni, J, nj, allowed, meter, &tb,
                    acc);
      }
    }
  }
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
