// scatterbrain/tests/testutil/reference.cc — see reference.h.
#include "tests/testutil/reference.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>
#include <thread>
#include <utility>

namespace scatterbrain {
namespace testing {
namespace {

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "scatterbrain::testing: %s\n", what);
  std::abort();
}

float FloatFromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint32_t BitsOf(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

int NumThreads() {
  if (const char* env = std::getenv("SB_TEST_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

// Runs fn(begin, end) over [0, n) in chunks of `grain` on all threads.
void ParallelFor(int64_t n, int64_t grain,
                 const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t chunks = (n + grain - 1) / grain;
  const int threads =
      static_cast<int>(std::min<int64_t>(NumThreads(), chunks));
  if (threads <= 1) {
    fn(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (;;) {
      int64_t c = next.fetch_add(1);
      if (c >= chunks) return;
      int64_t begin = c * grain;
      fn(begin, std::min(n, begin + grain));
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

inline int64_t Offset(const Strides& s, int64_t b, int64_t h, int64_t i,
                      int64_t c) {
  return b * s.batch + h * s.head + i * s.row + c;
}

int64_t KeyLength(const AttentionParams& p, int64_t b) {
  if (p.key_lengths == nullptr) return p.seq_k;
  return std::min<int64_t>(std::max<int64_t>(p.key_lengths[b], 0), p.seq_k);
}

void CheckShape(const AttentionParams& p) {
  if (p.batch < 0 || p.heads < 0 || p.seq_q < 0 || p.seq_k < 0 ||
      p.dim < 0 || p.dim_v < 0) {
    Die("negative shape in AttentionParams");
  }
  const bool empty = p.batch == 0 || p.heads == 0 || p.seq_q == 0;
  if (!empty && (p.q == nullptr || (p.seq_k > 0 && (p.k == nullptr ||
                                                     p.v == nullptr)))) {
    Die("null q/k/v in AttentionParams");
  }
}

// The one implementation behind every reference: rows of every slice,
// optional window (< 0: none).
std::vector<double> ReferenceCore(const AttentionParams& p,
                                  const std::vector<int64_t>& rows,
                                  int64_t window) {
  CheckShape(p);
  const int64_t R = static_cast<int64_t>(rows.size());
  for (int64_t r : rows) {
    if (r < 0 || r >= p.seq_q) Die("row index out of range");
  }
  const int64_t B = p.batch, H = p.heads, d = p.dim, dv = p.dim_v;
  const int64_t off = p.seq_k - p.seq_q;
  const double tau = static_cast<double>(EffectiveScale(p));
  std::vector<double> out(static_cast<size_t>(B * H * R * dv), 0.0);
  std::vector<double> kd, vd;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t kl = KeyLength(p, b);
    for (int64_t h = 0; h < H; ++h) {
      // Keys and values of this slice in fp64, contiguous.
      kd.assign(static_cast<size_t>(kl * d), 0.0);
      vd.assign(static_cast<size_t>(kl * dv), 0.0);
      for (int64_t j = 0; j < kl; ++j) {
        const float* kr = p.k + Offset(p.k_strides, b, h, j, 0);
        const float* vr = p.v + Offset(p.v_strides, b, h, j, 0);
        for (int64_t c = 0; c < d; ++c) kd[j * d + c] = kr[c];
        for (int64_t c = 0; c < dv; ++c) vd[j * dv + c] = vr[c];
      }
      double* slice_out = out.data() + (b * H + h) * R * dv;
      ParallelFor(R, 16, [&](int64_t r0, int64_t r1) {
        std::vector<double> qd(static_cast<size_t>(d));
        std::vector<double> logit(static_cast<size_t>(std::max<int64_t>(kl, 1)));
        std::vector<double> acc(static_cast<size_t>(dv));
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t i = rows[r];
          int64_t lo = 0, hi = kl;  // keys [lo, hi)
          if (p.causal) hi = std::min(hi, i + off + 1);
          if (window >= 0) {
            lo = std::max<int64_t>(lo, i + off - window / 2);
            hi = std::min(hi, i + off + window / 2 + 1);
          }
          double* o = slice_out + r * dv;
          if (hi <= lo) {
            std::fill(o, o + dv, 0.0);
            continue;
          }
          const float* qr = p.q + Offset(p.q_strides, b, h, i, 0);
          for (int64_t c = 0; c < d; ++c) qd[c] = tau * qr[c];
          // Logits; four keys at a time for ILP, each dot product summed in
          // order.
          double mx = -std::numeric_limits<double>::infinity();
          int64_t j = lo;
          for (; j + 4 <= hi; j += 4) {
            const double* k0 = kd.data() + j * d;
            const double* k1 = k0 + d;
            const double* k2 = k1 + d;
            const double* k3 = k2 + d;
            double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (int64_t c = 0; c < d; ++c) {
              const double qc = qd[c];
              s0 += qc * k0[c];
              s1 += qc * k1[c];
              s2 += qc * k2[c];
              s3 += qc * k3[c];
            }
            logit[j - lo] = s0;
            logit[j - lo + 1] = s1;
            logit[j - lo + 2] = s2;
            logit[j - lo + 3] = s3;
            mx = std::max(mx, std::max(std::max(s0, s1), std::max(s2, s3)));
          }
          for (; j < hi; ++j) {
            const double* kr = kd.data() + j * d;
            double s = 0;
            for (int64_t c = 0; c < d; ++c) s += qd[c] * kr[c];
            logit[j - lo] = s;
            mx = std::max(mx, s);
          }
          std::fill(acc.begin(), acc.end(), 0.0);
          double denom = 0;
          for (j = lo; j < hi; ++j) {
            const double w = std::exp(logit[j - lo] - mx);
            denom += w;
            const double* vr = vd.data() + j * dv;
            for (int64_t c = 0; c < dv; ++c) acc[c] += w * vr[c];
          }
          for (int64_t c = 0; c < dv; ++c) o[c] = acc[c] / denom;
        }
      });
    }
  }
  return out;
}

std::vector<int64_t> AllRows(int64_t n) {
  std::vector<int64_t> rows(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) rows[i] = i;
  return rows;
}

// Sum of squared differences and of squared reference over `rows`.
void ErrorSums(const float* out, const Strides& s, const AttentionParams& p,
               const std::vector<int64_t>& rows, const std::vector<double>& ref,
               double* num, double* den, double* max_abs) {
  const int64_t R = static_cast<int64_t>(rows.size());
  double n = 0, dn = 0, mx = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      for (int64_t r = 0; r < R; ++r) {
        const float* o = out + Offset(s, b, h, rows[r], 0);
        const double* e = ref.data() + ((b * p.heads + h) * R + r) * p.dim_v;
        for (int64_t c = 0; c < p.dim_v; ++c) {
          const double diff = static_cast<double>(o[c]) - e[c];
          n += diff * diff;
          dn += e[c] * e[c];
          const double a = std::fabs(diff);
          // NaN-propagating max.
          if (!(a <= mx)) mx = a;
        }
      }
    }
  }
  *num = n;
  *den = dn;
  if (max_abs != nullptr) *max_abs = mx;
}

double RelErrFromSums(double num, double den) {
  if (den == 0.0) return std::sqrt(num);
  return std::sqrt(num) / std::sqrt(den);
}

}  // namespace

// ---------------------------------------------------------------------------
// Reference and error.
// ---------------------------------------------------------------------------

std::vector<double> ExactAttentionDouble(const AttentionParams& p) {
  return ReferenceCore(p, AllRows(p.seq_q), -1);
}

std::vector<double> ExactAttentionDoubleRows(const AttentionParams& p,
                                             const std::vector<int64_t>& rows) {
  return ReferenceCore(p, rows, -1);
}

std::vector<double> LocalAttentionDouble(const AttentionParams& p) {
  return ReferenceCore(p, AllRows(p.seq_q), std::max(p.window, 0));
}

double RelativeError(const float* out, const Strides& strides,
                     const AttentionParams& p, const std::vector<double>& ref) {
  if (static_cast<int64_t>(ref.size()) !=
      p.batch * p.heads * p.seq_q * p.dim_v) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  double num, den;
  ErrorSums(out, strides, p, AllRows(p.seq_q), ref, &num, &den, nullptr);
  return RelErrFromSums(num, den);
}

double RelativeError(const AttentionParams& p, const std::vector<double>& ref) {
  return RelativeError(p.out, p.out_strides, p, ref);
}

double RelativeErrorRows(const float* out, const Strides& strides,
                         const AttentionParams& p,
                         const std::vector<int64_t>& rows,
                         const std::vector<double>& ref) {
  if (static_cast<int64_t>(ref.size()) !=
      p.batch * p.heads * static_cast<int64_t>(rows.size()) * p.dim_v) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  for (int64_t r : rows) {
    if (r < 0 || r >= p.seq_q) return std::numeric_limits<double>::quiet_NaN();
  }
  double num, den;
  ErrorSums(out, strides, p, rows, ref, &num, &den, nullptr);
  return RelErrFromSums(num, den);
}

double MaxAbsError(const float* out, const Strides& strides,
                   const AttentionParams& p, const std::vector<double>& ref) {
  if (static_cast<int64_t>(ref.size()) !=
      p.batch * p.heads * p.seq_q * p.dim_v) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  double num, den, mx;
  ErrorSums(out, strides, p, AllRows(p.seq_q), ref, &num, &den, &mx);
  return mx;
}

// ---------------------------------------------------------------------------
// Random numbers.
// ---------------------------------------------------------------------------

Rng::Rng(uint64_t seed) : engine_(seed) {}

uint64_t Rng::NextU64() { return engine_(); }

double Rng::Uniform() {
  return static_cast<double>(NextU64() >> 11) * (1.0 / 9007199254740992.0);
}

double Rng::Normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  const double u1 = 1.0 - Uniform();  // (0, 1]: log is finite
  const double u2 = Uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double t = 6.283185307179586476925286766559 * u2;
  spare_ = r * std::sin(t);
  has_spare_ = true;
  return r * std::cos(t);
}

uint64_t Rng::UniformInt(uint64_t n) { return n == 0 ? 0 : NextU64() % n; }

uint64_t MixSeed(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t x = SplitMix64(seed);
  x = SplitMix64(x ^ a);
  x = SplitMix64(x ^ b);
  return SplitMix64(x ^ c);
}

// ---------------------------------------------------------------------------
// Families and layouts.
// ---------------------------------------------------------------------------

const char* FamilyName(Family f) {
  switch (f) {
    case kGaussian: return "gaussian";
    case kClustered: return "clustered";
    case kSmooth: return "smooth";
    case kZeros: return "zeros";
    case kHugeNorm: return "hugenorm";
    case kRandomV: return "randomv";
  }
  return "unknown";
}

std::vector<Family> AllFamilies() {
  return {kGaussian, kClustered, kSmooth, kZeros, kHugeNorm, kRandomV};
}

bool ParseFamily(const std::string& s, Family* f) {
  for (Family c : AllFamilies()) {
    if (s == FamilyName(c)) {
      *f = c;
      return true;
    }
  }
  return false;
}

const char* LayoutName(Layout l) {
  switch (l) {
    case kContiguous: return "contiguous";
    case kPadded: return "padded";
    case kBNHD: return "bnhd";
  }
  return "unknown";
}

std::vector<Layout> AllLayouts() { return {kContiguous, kPadded, kBNHD}; }

Strides LayoutStrides(Layout layout, int64_t heads, int64_t seq,
                      int64_t dim) {
  switch (layout) {
    case kContiguous:
      return Strides{heads * seq * dim, seq * dim, dim};
    case kPadded: {
      const int64_t row = dim + 3;
      const int64_t head = seq * row + 5;
      return Strides{heads * head + 7, head, row};
    }
    case kBNHD:
      return Strides{seq * heads * dim, dim, heads * dim};
  }
  Die("unknown layout");
}

int64_t LayoutSpan(Layout layout, int64_t batch, int64_t heads, int64_t seq,
                   int64_t dim) {
  return batch * LayoutStrides(layout, heads, seq, dim).batch;
}

void GenerateInputs(Family family, uint64_t seed, double logit_std,
                    const AttentionParams& shape, float* q, const Strides& qs,
                    float* k, const Strides& ks, float* v, const Strides& vs) {
  const int64_t B = shape.batch, H = shape.heads, Nq = shape.seq_q,
                Nk = shape.seq_k, d = shape.dim, dv = shape.dim_v;
  const double sigma = std::sqrt(std::max(logit_std, 0.0));
  ParallelFor(B * H, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t b = s / H, h = s % H;
      Rng rq(MixSeed(seed, static_cast<uint64_t>(s), 0));
      Rng rk(MixSeed(seed, static_cast<uint64_t>(s), 1));
      Rng rv(MixSeed(seed, static_cast<uint64_t>(s), 2));
      Rng raux(MixSeed(seed, static_cast<uint64_t>(s), 3));
      auto Qp = [&](int64_t i) { return q + Offset(qs, b, h, i, 0); };
      auto Kp = [&](int64_t j) { return k + Offset(ks, b, h, j, 0); };
      std::vector<double> tmp(static_cast<size_t>(d));

      // q and k.
      switch (family) {
        case kGaussian:
        case kRandomV:
          for (int64_t i = 0; i < Nq; ++i) {
            float* r = Qp(i);
            for (int64_t c = 0; c < d; ++c) r[c] = sigma * rq.Normal();
          }
          for (int64_t j = 0; j < Nk; ++j) {
            float* r = Kp(j);
            for (int64_t c = 0; c < d; ++c) r[c] = sigma * rk.Normal();
          }
          break;
        case kClustered: {
          const int64_t C = std::max<int64_t>(4, Nk / 64);
          const double radius = 3.0 * std::pow(static_cast<double>(d), 0.25);
          std::vector<double> centres(static_cast<size_t>(C * d));
          for (int64_t ci = 0; ci < C; ++ci) {
            double nrm = 0;
            for (int64_t c = 0; c < d; ++c) {
              tmp[c] = raux.Normal();
              nrm += tmp[c] * tmp[c];
            }
            nrm = std::sqrt(nrm);
            for (int64_t c = 0; c < d; ++c) {
              centres[ci * d + c] = nrm > 0 ? radius * tmp[c] / nrm : 0.0;
            }
          }
          for (int64_t i = 0; i < Nq; ++i) {
            const double* cen = centres.data() + rq.UniformInt(C) * d;
            float* r = Qp(i);
            for (int64_t c = 0; c < d; ++c) r[c] = cen[c] + 0.5 * rq.Normal();
          }
          for (int64_t j = 0; j < Nk; ++j) {
            const double* cen = centres.data() + rk.UniformInt(C) * d;
            float* r = Kp(j);
            for (int64_t c = 0; c < d; ++c) r[c] = cen[c] + 0.5 * rk.Normal();
          }
          break;
        }
        case kSmooth: {
          const int64_t L = std::max(Nq, Nk);
          const double rho = 0.98, innov = std::sqrt(1.0 - rho * rho);
          std::vector<double> x(static_cast<size_t>(L * d));
          for (int64_t t = 0; t < L; ++t) {
            for (int64_t c = 0; c < d; ++c) {
              const double e = raux.Normal();
              x[t * d + c] = t == 0 ? e : rho * x[(t - 1) * d + c] + innov * e;
            }
          }
          // Bottom-right alignment: query i and key j + off sit at the same
          // time step.
          for (int64_t i = 0; i < Nq; ++i) {
            const double* xt = x.data() + (i + L - Nq) * d;
            float* r = Qp(i);
            for (int64_t c = 0; c < d; ++c) {
              r[c] = 1.5 * xt[c] + 0.3 * rq.Normal();
            }
          }
          for (int64_t j = 0; j < Nk; ++j) {
            const double* xt = x.data() + (j + L - Nk) * d;
            float* r = Kp(j);
            for (int64_t c = 0; c < d; ++c) {
              r[c] = 1.5 * xt[c] + 0.3 * rk.Normal();
            }
          }
          break;
        }
        case kZeros:
          for (int64_t i = 0; i < Nq; ++i) std::fill(Qp(i), Qp(i) + d, 0.0f);
          for (int64_t j = 0; j < Nk; ++j) std::fill(Kp(j), Kp(j) + d, 0.0f);
          break;
        case kHugeNorm: {
          auto fill_dir = [&](Rng& rng, float* r) {
            double nrm = 0;
            for (int64_t c = 0; c < d; ++c) {
              tmp[c] = rng.Normal();
              nrm += tmp[c] * tmp[c];
            }
            nrm = std::sqrt(nrm);
            for (int64_t c = 0; c < d; ++c) {
              r[c] = nrm > 0 ? 1e3 * tmp[c] / nrm : 0.0;
            }
          };
          for (int64_t i = 0; i < Nq; ++i) fill_dir(rq, Qp(i));
          for (int64_t j = 0; j < Nk; ++j) fill_dir(rk, Kp(j));
          break;
        }
      }

      // v.
      if (family == kRandomV) {
        std::vector<double> mu(static_cast<size_t>(dv)), sc(mu.size());
        for (int64_t c = 0; c < dv; ++c) {
          mu[c] = 2.0 * raux.Normal();
          sc[c] = std::exp(0.5 * raux.Normal());
        }
        for (int64_t j = 0; j < Nk; ++j) {
          float* r = v + Offset(vs, b, h, j, 0);
          for (int64_t c = 0; c < dv; ++c) r[c] = mu[c] + sc[c] * rv.Normal();
        }
      } else {
        for (int64_t j = 0; j < Nk; ++j) {
          float* r = v + Offset(vs, b, h, j, 0);
          for (int64_t c = 0; c < dv; ++c) r[c] = rv.Normal();
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// TestTensors.
// ---------------------------------------------------------------------------
namespace {

// Marks the valid elements of a [B, H, N, D] tensor in a buffer that starts
// kGuard elements before element 0.
std::vector<uint8_t> ValidMask(size_t buffer_size, const Strides& s,
                               int64_t B, int64_t H, int64_t N, int64_t D) {
  std::vector<uint8_t> mask(buffer_size, 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < N; ++i) {
        const int64_t o = TestTensors::kGuard + Offset(s, b, h, i, 0);
        std::fill(mask.begin() + o, mask.begin() + o + D, 1);
      }
    }
  }
  return mask;
}

void ForEachValid(const Strides& s, int64_t B, int64_t H, int64_t N,
                  int64_t D, float* base, float value) {
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < N; ++i) {
        float* r = base + Offset(s, b, h, i, 0);
        std::fill(r, r + D, value);
      }
    }
  }
}

void AppendDamage(const char* name, const std::vector<float>& buf,
                  const std::vector<uint8_t>& mask, int max_items, int* count,
                  std::ostringstream* os) {
  for (size_t x = 0; x < buf.size(); ++x) {
    if (mask[x] || BitsOf(buf[x]) == TestTensors::kSentinelBits) continue;
    if (*count < max_items) {
      const int64_t rel = static_cast<int64_t>(x) - TestTensors::kGuard;
      *os << name << "[" << rel << "]=" << buf[x] << " ";
    }
    ++*count;
  }
}

}  // namespace

TestTensors::TestTensors(int64_t batch, int64_t heads, int64_t seq_q,
                         int64_t seq_k, int64_t dim, int64_t dim_v,
                         Layout layout)
    : layout_(layout) {
  if (batch < 0 || heads < 0 || seq_q < 0 || seq_k < 0 || dim < 0 ||
      dim_v < 0) {
    Die("TestTensors: negative shape");
  }
  params.batch = batch;
  params.heads = heads;
  params.seq_q = seq_q;
  params.seq_k = seq_k;
  params.dim = dim;
  params.dim_v = dim_v;
  params.q_strides = LayoutStrides(layout, heads, seq_q, dim);
  params.k_strides = LayoutStrides(layout, heads, seq_k, dim);
  params.v_strides = LayoutStrides(layout, heads, seq_k, dim_v);
  params.out_strides = LayoutStrides(layout, heads, seq_q, dim_v);
  InitBuffers();
}

void TestTensors::InitBuffers() {
  const float sentinel = FloatFromBits(kSentinelBits);
  const AttentionParams& p = params;
  auto alloc = [&](std::vector<float>& buf, int64_t seq, int64_t dim) {
    buf.assign(
        static_cast<size_t>(2 * kGuard +
                            LayoutSpan(layout_, p.batch, p.heads, seq, dim)),
        sentinel);
  };
  alloc(q_, p.seq_q, p.dim);
  alloc(k_, p.seq_k, p.dim);
  alloc(v_, p.seq_k, p.dim_v);
  alloc(out_, p.seq_q, p.dim_v);
  Rebind();
  FillQ(0.0f);
  FillK(0.0f);
  FillV(0.0f);
  ResetOut();
}

void TestTensors::Rebind() {
  params.q = q_.empty() ? nullptr : q_.data() + kGuard;
  params.k = k_.empty() ? nullptr : k_.data() + kGuard;
  params.v = v_.empty() ? nullptr : v_.data() + kGuard;
  params.out = out_.empty() ? nullptr : out_.data() + kGuard;
  if (!key_lengths_.empty()) params.key_lengths = key_lengths_.data();
}

TestTensors::TestTensors(TestTensors&& other) noexcept
    : params(other.params),
      layout_(other.layout_),
      q_(std::move(other.q_)),
      k_(std::move(other.k_)),
      v_(std::move(other.v_)),
      out_(std::move(other.out_)),
      key_lengths_(std::move(other.key_lengths_)) {
  Rebind();
  other.Rebind();
}

TestTensors& TestTensors::operator=(TestTensors&& other) noexcept {
  if (this != &other) {
    params = other.params;
    layout_ = other.layout_;
    q_ = std::move(other.q_);
    k_ = std::move(other.k_);
    v_ = std::move(other.v_);
    out_ = std::move(other.out_);
    key_lengths_ = std::move(other.key_lengths_);
    Rebind();
    other.Rebind();
  }
  return *this;
}

TestTensors TestTensors::Make(int64_t batch, int64_t heads, int64_t seq_q,
                              int64_t seq_k, int64_t dim, int64_t dim_v,
                              Family family, uint64_t seed, Layout layout,
                              double logit_std) {
  TestTensors t(batch, heads, seq_q, seq_k, dim, dim_v, layout);
  t.Fill(family, seed, logit_std);
  return t;
}

TestTensors Make(int64_t batch, int64_t heads, int64_t seq_q, int64_t seq_k,
                 int64_t dim, int64_t dim_v, Family family, uint64_t seed,
                 Layout layout, double logit_std) {
  return TestTensors::Make(batch, heads, seq_q, seq_k, dim, dim_v, family,
                           seed, layout, logit_std);
}

void TestTensors::Fill(Family family, uint64_t seed, double logit_std) {
  if (q_.empty()) return;
  GenerateInputs(family, seed, logit_std, params, q_.data() + kGuard,
                 params.q_strides, k_.data() + kGuard, params.k_strides,
                 v_.data() + kGuard, params.v_strides);
}

void TestTensors::FillQ(float value) {
  if (q_.empty()) return;
  ForEachValid(params.q_strides, params.batch, params.heads, params.seq_q,
               params.dim, q_.data() + kGuard, value);
}

void TestTensors::FillK(float value) {
  if (k_.empty()) return;
  ForEachValid(params.k_strides, params.batch, params.heads, params.seq_k,
               params.dim, k_.data() + kGuard, value);
}

void TestTensors::FillV(float value) {
  if (v_.empty()) return;
  ForEachValid(params.v_strides, params.batch, params.heads, params.seq_k,
               params.dim_v, v_.data() + kGuard, value);
}

void TestTensors::ResetOut() {
  if (out_.empty()) return;
  std::fill(out_.begin(), out_.end(), FloatFromBits(kSentinelBits));
  ForEachValid(params.out_strides, params.batch, params.heads, params.seq_q,
               params.dim_v, out_.data() + kGuard,
               FloatFromBits(kUnwrittenBits));
}

void TestTensors::SetKeyLengths(std::vector<int32_t> lengths) {
  if (!lengths.empty() && static_cast<int64_t>(lengths.size()) != params.batch) {
    Die("SetKeyLengths: size must equal batch");
  }
  key_lengths_ = std::move(lengths);
  params.key_lengths = key_lengths_.empty() ? nullptr : key_lengths_.data();
}

namespace {
int64_t CheckedIndex(const Strides& s, int64_t B, int64_t H, int64_t N,
                     int64_t D, int64_t b, int64_t h, int64_t i, int64_t c) {
  if (b < 0 || b >= B || h < 0 || h >= H || i < 0 || i >= N || c < 0 ||
      c >= D) {
    Die("TestTensors element index out of range");
  }
  return TestTensors::kGuard + Offset(s, b, h, i, c);
}
}  // namespace

float& TestTensors::Q(int64_t b, int64_t h, int64_t i, int64_t c) {
  return q_[CheckedIndex(params.q_strides, params.batch, params.heads,
                         params.seq_q, params.dim, b, h, i, c)];
}
float& TestTensors::K(int64_t b, int64_t h, int64_t j, int64_t c) {
  return k_[CheckedIndex(params.k_strides, params.batch, params.heads,
                         params.seq_k, params.dim, b, h, j, c)];
}
float& TestTensors::V(int64_t b, int64_t h, int64_t j, int64_t c) {
  return v_[CheckedIndex(params.v_strides, params.batch, params.heads,
                         params.seq_k, params.dim_v, b, h, j, c)];
}
float& TestTensors::Out(int64_t b, int64_t h, int64_t i, int64_t c) {
  return out_[CheckedIndex(params.out_strides, params.batch, params.heads,
                           params.seq_q, params.dim_v, b, h, i, c)];
}
float TestTensors::Q(int64_t b, int64_t h, int64_t i, int64_t c) const {
  return const_cast<TestTensors*>(this)->Q(b, h, i, c);
}
float TestTensors::K(int64_t b, int64_t h, int64_t j, int64_t c) const {
  return const_cast<TestTensors*>(this)->K(b, h, j, c);
}
float TestTensors::V(int64_t b, int64_t h, int64_t j, int64_t c) const {
  return const_cast<TestTensors*>(this)->V(b, h, j, c);
}
float TestTensors::Out(int64_t b, int64_t h, int64_t i, int64_t c) const {
  return const_cast<TestTensors*>(this)->Out(b, h, i, c);
}

std::string TestTensors::SentinelReport(int max_items) const {
  if (out_.empty()) return "";
  const AttentionParams& p = params;
  std::ostringstream os;
  int count = 0;
  AppendDamage("out", out_,
               ValidMask(out_.size(), p.out_strides, p.batch, p.heads,
                         p.seq_q, p.dim_v),
               max_items, &count, &os);
  AppendDamage("q", q_,
               ValidMask(q_.size(), p.q_strides, p.batch, p.heads, p.seq_q,
                         p.dim),
               max_items, &count, &os);
  AppendDamage("k", k_,
               ValidMask(k_.size(), p.k_strides, p.batch, p.heads, p.seq_k,
                         p.dim),
               max_items, &count, &os);
  AppendDamage("v", v_,
               ValidMask(v_.size(), p.v_strides, p.batch, p.heads, p.seq_k,
                         p.dim_v),
               max_items, &count, &os);
  if (count == 0) return "";
  std::ostringstream head;
  head << count << " guard/gap element(s) overwritten (index relative to "
       << "element 0): " << os.str();
  return head.str();
}

bool TestTensors::SentinelsIntact() const { return SentinelReport(1).empty(); }

int64_t TestTensors::UnwrittenOutputs() const {
  int64_t n = 0;
  for (int64_t b = 0; b < params.batch; ++b) {
    for (int64_t h = 0; h < params.heads; ++h) {
      for (int64_t i = 0; i < params.seq_q; ++i) {
        const float* r = params.out + Offset(params.out_strides, b, h, i, 0);
        for (int64_t c = 0; c < params.dim_v; ++c) {
          n += BitsOf(r[c]) == kUnwrittenBits;
        }
      }
    }
  }
  return n;
}

bool TestTensors::OutputFinite() const {
  for (int64_t b = 0; b < params.batch; ++b) {
    for (int64_t h = 0; h < params.heads; ++h) {
      for (int64_t i = 0; i < params.seq_q; ++i) {
        const float* r = params.out + Offset(params.out_strides, b, h, i, 0);
        for (int64_t c = 0; c < params.dim_v; ++c) {
          if (!std::isfinite(r[c])) return false;
        }
      }
    }
  }
  return true;
}

std::vector<float> TestTensors::OutContiguous() const {
  std::vector<float> o;
  o.reserve(static_cast<size_t>(params.batch * params.heads * params.seq_q *
                                params.dim_v));
  for (int64_t b = 0; b < params.batch; ++b) {
    for (int64_t h = 0; h < params.heads; ++h) {
      for (int64_t i = 0; i < params.seq_q; ++i) {
        const float* r = params.out + Offset(params.out_strides, b, h, i, 0);
        o.insert(o.end(), r, r + params.dim_v);
      }
    }
  }
  return o;
}

std::vector<double> TestTensors::Reference() const {
  return ExactAttentionDouble(params);
}

double TestTensors::RelativeError(const std::vector<double>& ref) const {
  return testing::RelativeError(params.out, params.out_strides, params, ref);
}

}  // namespace testing
}  // namespace scatterbrain
