// scatterbrain/kernels/cpu/sparse.cc — the sparse support: LSH clusters and
// local windows, accumulated exactly (and, for Scatterbrain, together with
// the low-rank estimate on the same pairs).
//
// LSH (the rounds are built in lsh.cc): each round hashes every valid key
// and every query to a point on a 1-D order, sorts the keys and cuts them
// into equal-size chunks. A query joins the chunk whose key range holds its
// own hash, so every query sees exactly one chunk per round (per-query cost
// is fixed) and queries and keys that hash alike meet even when their counts
// per bucket differ (cutting queries and keys into chunks separately, as
// SMYRF does, misaligns them). A pair found in several rounds, or also in
// the local window, counts once.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/profile.h"
#include "kernels/cpu/vmath.h"

namespace scatterbrain {
namespace cpu {
namespace {

constexpr int64_t kTileRows = 128;
constexpr int64_t kLocalBlock = 64;

// Copies rows idx[0..n) of src (row stride ld, `width` floats each) into
// dst, packed. The rows are scattered (hash order), so each copy waited on
// memory: the rows a few places ahead are prefetched.
void GatherRows(const float* src, int64_t ld, const int64_t* idx, int64_t n,
                int64_t width, float* dst) {
  constexpr int64_t kAhead = 6;
  constexpr int64_t kLineFloats = 16;
  for (int64_t a = 0; a < std::min(n, kAhead); ++a)
    for (int64_t c = 0; c < width; c += kLineFloats)
      __builtin_prefetch(src + idx[a] * ld + c);
  for (int64_t a = 0; a < n; ++a) {
    if (a + kAhead < n) {
      const float* next = src + idx[a + kAhead] * ld;
      for (int64_t c = 0; c < width; c += kLineFloats)
        __builtin_prefetch(next + c);
    }
    std::memcpy(dst + a * width, src + idx[a] * ld, width * sizeof(float));
  }
}

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
// `kv`, when not null, holds the rows of J already gathered (keys nj x d,
// then values nj x dv).
template <typename Allowed>
void ProcessTile(const Slice& s, const Features* f, const FusedChunk* fused,
                 const int64_t* I, int64_t ni, const int64_t* J, int64_t nj,
                 const float* const* kv, bool masked, const Allowed& allowed,
                 WorkspaceMeter* meter, TileBuffers* tb, SparseAcc* acc,
                 LowRank* lr, float lowrank_sign) {
  if (ni == 0 || nj == 0) return;
  const int64_t d = s.d, dv = s.dv;
  const int m = f ? f->m : 0;
  float* qt = tb->qt.Ensure(meter, ni * d);
  GatherRows(s.q, s.q_row, I, ni, d, qt);
  const float* kt;
  const float* vt;
  if (kv != nullptr) {
    kt = kv[0];
    vt = kv[1];
  } else {
    float* kg = tb->kt.Ensure(meter, nj * d);
    float* vg = tb->vt.Ensure(meter, nj * dv);
    GatherRows(s.k, s.k_row, J, nj, d, kg);
    GatherRows(s.v, s.v_row, J, nj, dv, vg);
    kt = kg;
    vt = vg;
  }
  // Rows 0..ni-1 of w: exact weights; rows ni..2ni-1: pairwise low-rank.
  const bool pairwise_f = f && !fused;
  const int64_t wrows = pairwise_f ? 2 * ni : ni;
  float* w = tb->sc.Ensure(meter, wrows * nj);
  Gemm(false, true, ni, nj, d, s.tau, qt, d, kt, d, 0.0f, w, nj);
  float* pv = tb->pv.Ensure(meter, wrows * dv);
  if (f) {
    float* fq = tb->fq.Ensure(meter, ni * m);
    GatherRows(f->q.data(), m, I, ni, m, fq);
    if (pairwise_f) {
      float* fk = tb->fk.Ensure(meter, nj * m);
      GatherRows(f->k.data(), m, J, nj, m, fk);
      Gemm(false, true, ni, nj, m, 1.0f, fq, m, fk, m, 0.0f, w + ni * nj, nj);
    } else {
      float* lv = tb->fk.Ensure(meter, ni * dv);
      Gemm(false, false, ni, dv, m, 1.0f, fq, m, fused->zout, dv, 0.0f, lv, dv);
      // The two mass sums as dot products: a GEMM with one column costs
      // more in its setup and packing than the arithmetic.
      for (int64_t r = 0; r < ni; ++r) {
        const int64_t i = I[r];
        std::memcpy(acc->lv.data() + i * dv, lv + r * dv, dv * sizeof(float));
        acc->f1[i] = Dot(fq + r * m, fused->z1c, m);
        lr->den[i] = Dot(fq + r * m, fused->z1, m);
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

}  // namespace

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
          s, f, nullptr, rows.data(), i1 - i0, keys.data(), nj, nullptr,
          /*masked=*/true,
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
          const int64_t* J = korder + kstart[t];
          GatherRows(f->k.data(), m, J, nj, m, fk);
          GatherRows(s.v, s.v_row, J, nj, dv, vt);
          for (int64_t a = 0; a < nj; ++a)
            for (int l = 0; l < m; ++l) z1[l] += fk[a * m + l];
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
        if (qstart[t + 1] == qstart[t]) continue;  // no query joins it
        // The chunk's keys and values, gathered once for all its tiles.
        float* kt = tb.kt.Ensure(meter, static_cast<size_t>(nj) * s.d);
        float* vt = tb.vt.Ensure(meter, static_cast<size_t>(nj) * dv);
        GatherRows(s.k, s.k_row, J, nj, s.d, kt);
        GatherRows(s.v, s.v_row, J, nj, dv, vt);
        const float* kv[2] = {kt, vt};
        for (int64_t a = qstart[t]; a < qstart[t + 1]; a += kTileRows) {
          const int64_t ni = std::min(kTileRows, qstart[t + 1] - a);
          ProcessTile(s, f, fused ? &fc : nullptr, qorder + a, ni, J, nj, kv,
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
                  static_cast<int64_t>(J.size()), nullptr, /*masked=*/true,
                  allowed, meter, &tb, acc, lr, fused ? -1.0f : 1.0f);
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
