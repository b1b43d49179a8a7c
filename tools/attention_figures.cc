// scatterbrain/tools/attention_figures.cc — the exact-attention figures of
// the real-data accuracy mode (see attention_figures.h). One pass per query
// row: fp64 logits, the row's keys sorted by weight once, then every
// budget's oracle answer and every sparsity figure from that order.
#include "tools/attention_figures.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <thread>

namespace scatterbrain {
namespace accuracy {
namespace {

// Sums of one (batch, head) slice, reduced in slice order afterwards.
struct SliceSums {
  SparsityFigures sparsity;        // sums over rows, not yet means
  std::vector<double> oracle_num;  // per budget: sum ||o_oracle - o||^2
  double ref_sq = 0;               // sum ||o||^2
  double mean_v_num = 0;           // sum ||mean(V) - o||^2
};

void SliceFigures(const AttentionParams& p, const std::vector<double>& ref,
                  const std::vector<int>& budgets, int64_t b, int64_t h,
                  SliceSums* s) {
  const int64_t nq = p.seq_q, nk = p.seq_k, d = p.dim, dv = p.dim_v;
  const double scale = EffectiveScale(p);
  const float* q = p.q + b * p.q_strides.batch + h * p.q_strides.head;
  const float* k = p.k + b * p.k_strides.batch + h * p.k_strides.head;
  const float* v = p.v + b * p.v_strides.batch + h * p.v_strides.head;
  const double* o = ref.data() + (b * p.heads + h) * nq * dv;
  s->oracle_num.assign(budgets.size(), 0.0);

  std::vector<double> mean_v(dv, 0.0);
  for (int64_t j = 0; j < nk; ++j)
    for (int64_t c = 0; c < dv; ++c) mean_v[c] += v[j * p.v_strides.row + c];
  for (double& m : mean_v) m /= static_cast<double>(nk);

  std::vector<double> logit(nk), w(nk), acc(dv);
  std::vector<int64_t> order(nk);
  for (int64_t i = 0; i < nq; ++i) {
    const float* qi = q + i * p.q_strides.row;
    double mx = -INFINITY;
    for (int64_t j = 0; j < nk; ++j) {
      const float* kj = k + j * p.k_strides.row;
      double dot = 0;
      for (int64_t c = 0; c < d; ++c)
        dot += static_cast<double>(qi[c]) * static_cast<double>(kj[c]);
      logit[j] = scale * dot;
      mx = std::max(mx, logit[j]);
    }
    double z = 0;
    for (int64_t j = 0; j < nk; ++j) z += (w[j] = std::exp(logit[j] - mx));
    std::iota(order.begin(), order.end(), int64_t{0});
    // Ties broken by position so the order (and the oracle) is well defined.
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t c) {
      return w[a] != w[c] ? w[a] > w[c] : a < c;
    });

    const double* oi = o + i * dv;
    for (int64_t c = 0; c < dv; ++c) {
      s->ref_sq += oi[c] * oi[c];
      s->mean_v_num += (mean_v[c] - oi[c]) * (mean_v[c] - oi[c]);
    }

    // Sparsity figures from the full row.
    SparsityFigures& f = s->sparsity;
    const int64_t pos = i + (nk - nq);
    for (int64_t r = 0; r < nk; ++r) {
      const int64_t j = order[r];
      const double pj = w[j] / z;
      if (pj > 0) f.entropy_nats -= pj * std::log(pj);
      if (r < 32) f.top32_mass += pj;
      if (r < 64) f.top64_mass += pj;
      if (std::llabs(pos - j) <= 16) f.local16_mass += pj;
    }
    f.first_key_mass += w[0] / z;
    f.last_key_mass += w[nk - 1] / z;

    // Oracle answers: the restricted softmax over the best `budget` keys,
    // accumulated in weight order so every budget reuses the prefix.
    std::vector<size_t> by_budget(budgets.size());
    std::iota(by_budget.begin(), by_budget.end(), size_t{0});
    std::sort(by_budget.begin(), by_budget.end(),
              [&](size_t a, size_t c) { return budgets[a] < budgets[c]; });
    std::fill(acc.begin(), acc.end(), 0.0);
    double zk = 0;
    int64_t taken = 0;
    for (size_t bi : by_budget) {
      const int64_t want = std::min<int64_t>(budgets[bi], nk);
      for (; taken < want; ++taken) {
        const int64_t j = order[taken];
        zk += w[j];
        const float* vj = v + j * p.v_strides.row;
        for (int64_t c = 0; c < dv; ++c) acc[c] += w[j] * vj[c];
      }
      double num = 0;
      for (int64_t c = 0; c < dv; ++c) {
        const double e = acc[c] / zk - oi[c];
        num += e * e;
      }
      s->oracle_num[bi] += num;
    }
  }
}

// Runs fn(slice) for slice in [0, slices) on `threads` threads.
template <typename Fn>
void ParallelSlices(int64_t slices, int threads, Fn fn) {
  int n = threads > 0 ? threads
                      : static_cast<int>(std::thread::hardware_concurrency());
  n = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n, slices)));
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t s; (s = next.fetch_add(1)) < slices;) fn(s);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
}

}  // namespace

ExactFigures ComputeExactFigures(const AttentionParams& p,
                                 const std::vector<double>& ref,
                                 const std::vector<int>& budgets, int threads) {
  const int64_t slices = p.batch * p.heads;
  std::vector<SliceSums> sums(slices);
  ParallelSlices(slices, threads, [&](int64_t s) {
    SliceFigures(p, ref, budgets, s / p.heads, s % p.heads, &sums[s]);
  });

  ExactFigures out;
  out.oracle_error.assign(budgets.size(), 0.0);
  double ref_sq = 0, mean_v_num = 0;
  SparsityFigures& f = out.sparsity;
  for (const SliceSums& s : sums) {
    ref_sq += s.ref_sq;
    mean_v_num += s.mean_v_num;
    for (size_t bi = 0; bi < budgets.size(); ++bi)
      out.oracle_error[bi] += s.oracle_num[bi];
    f.entropy_nats += s.sparsity.entropy_nats;
    f.top32_mass += s.sparsity.top32_mass;
    f.top64_mass += s.sparsity.top64_mass;
    f.local16_mass += s.sparsity.local16_mass;
    f.first_key_mass += s.sparsity.first_key_mass;
    f.last_key_mass += s.sparsity.last_key_mass;
  }
  const double rows = static_cast<double>(slices * p.seq_q);
  for (double* x : {&f.entropy_nats, &f.top32_mass, &f.top64_mass,
                    &f.local16_mass, &f.first_key_mass, &f.last_key_mass})
    *x /= rows;
  // The same convention as testing::RelativeError: absolute when ||O|| = 0.
  auto rel = [&](double num) {
    return ref_sq > 0 ? std::sqrt(num / ref_sq) : std::sqrt(num);
  };
  for (double& e : out.oracle_error) e = rel(e);
  out.mean_v_error = rel(mean_v_num);
  return out;
}

std::vector<double> SliceErrors(const AttentionParams& p,
                                const std::vector<float>& out,
                                const std::vector<double>& ref) {
  const int64_t slices = p.batch * p.heads, span = p.seq_q * p.dim_v;
  std::vector<double> errors(slices, 0.0);
  for (int64_t s = 0; s < slices; ++s) {
    double num = 0, den = 0;
    for (int64_t x = s * span; x < (s + 1) * span; ++x) {
      const double e = static_cast<double>(out[x]) - ref[x];
      num += e * e;
      den += ref[x] * ref[x];
    }
    errors[s] = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  }
  return errors;
}

}  // namespace accuracy
}  // namespace scatterbrain
