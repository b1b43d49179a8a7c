// scatterbrain/kernels/random_draws.cc
#include "kernels/random_draws.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/container/flat_hash_set.h"

namespace scatterbrain {

Rng::Rng(uint64_t seed, DrawPurpose purpose, uint64_t a, uint64_t b)
    : core_(seed, static_cast<uint64_t>(purpose), a, b) {}

uint64_t Rng::NextU64() { return core_.Next(); }

double Rng::Uniform() { return (NextU64() >> 11) * 0x1.0p-53; }

double Rng::Normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u1;
  do {
    u1 = Uniform();
  } while (u1 <= 0.0);
  const double u2 = Uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  spare_ = r * std::sin(2.0 * M_PI * u2);
  has_spare_ = true;
  return r * std::cos(2.0 * M_PI * u2);
}

uint64_t Rng::Below(uint64_t n) { return core_.Below(n); }

std::vector<float> DrawFeatureProjections(uint64_t seed, int64_t head, int r,
                                          int64_t d) {
  Rng rng(seed, DrawPurpose::kFeatures, static_cast<uint64_t>(head));
  std::vector<float> w(static_cast<size_t>(r) * d);
  std::vector<double> block(static_cast<size_t>(d) * d);
  for (int start = 0; start < r; start += static_cast<int>(d)) {
    for (auto& x : block) x = rng.Normal();
    // Modified Gram–Schmidt on the rows.
    for (int64_t i = 0; i < d; ++i) {
      double* ri = &block[i * d];
      for (int64_t j = 0; j < i; ++j) {
        const double* rj = &block[j * d];
        double dot = 0;
        for (int64_t c = 0; c < d; ++c) dot += ri[c] * rj[c];
        for (int64_t c = 0; c < d; ++c) ri[c] -= dot * rj[c];
      }
      double n2 = 0;
      for (int64_t c = 0; c < d; ++c) n2 += ri[c] * ri[c];
      const double inv = n2 > 0 ? 1.0 / std::sqrt(n2) : 0.0;
      for (int64_t c = 0; c < d; ++c) ri[c] *= inv;
    }
    const int rows = std::min<int64_t>(d, r - start);
    for (int i = 0; i < rows; ++i) {
      double chi2 = 0;
      for (int64_t c = 0; c < d; ++c) {
        const double z = rng.Normal();
        chi2 += z * z;
      }
      const double norm = std::sqrt(chi2);
      for (int64_t c = 0; c < d; ++c)
        w[(start + i) * d + c] = static_cast<float>(block[i * d + c] * norm);
    }
  }
  return w;
}

std::vector<float> DrawHashProjections(uint64_t seed, int64_t head, int round,
                                       int n, int64_t d) {
  Rng rng(seed, DrawPurpose::kHash, static_cast<uint64_t>(head),
          static_cast<uint64_t>(round));
  std::vector<float> w(static_cast<size_t>(n) * d);
  for (auto& x : w) x = static_cast<float>(rng.Normal());
  return w;
}

std::vector<int64_t> SampleRows(uint64_t seed, DrawPurpose purpose,
                                int64_t batch_index, int64_t head, int64_t n,
                                int64_t count) {
  std::vector<int64_t> out;
  if (count >= n) {
    out.resize(n);
    std::iota(out.begin(), out.end(), 0);
    return out;
  }
  Rng rng(seed, purpose, static_cast<uint64_t>(batch_index),
          static_cast<uint64_t>(head));
  // Floyd's algorithm: `count` distinct values without an O(n) buffer. The
  // set answers "chosen already?" (a linear search made this quadratic:
  // ~0.1 s, uninterruptible, for k-means' 16384-row sample at N = 65536).
  std::vector<int64_t> chosen;
  chosen.reserve(static_cast<size_t>(count));
  absl::flat_hash_set<int64_t> seen;
  seen.reserve(static_cast<size_t>(count));
  for (int64_t j = n - count; j < n; ++j) {
    const int64_t t = static_cast<int64_t>(rng.Below(j + 1));
    // j itself is new: every earlier pick is below it.
    const int64_t pick = seen.insert(t).second ? t : j;
    if (pick == j) seen.insert(j);
    chosen.push_back(pick);
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

DrawCache& DrawCache::Global() {
  static DrawCache* cache = new DrawCache();
  return *cache;
}

template <typename F>
DrawCache::Draw DrawCache::GetOrDraw(const Key& key, F draw) {
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      ++hits_;
      return it->second->second;
    }
    ++misses_;
  }
  // Drawn outside the lock: two threads may draw the same key at once; both
  // get equal vectors and the second insert is dropped.
  Draw fresh = std::make_shared<const std::vector<float>>(draw());
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it != index_.end()) return it->second->second;
  lru_.emplace_front(key, fresh);
  index_[key] = lru_.begin();
  while (lru_.size() > max_entries_) {
    index_.erase(lru_.back().first);
    lru_.pop_back();
  }
  return fresh;
}

DrawCache::Draw DrawCache::FeatureProjections(uint64_t seed, int64_t head,
                                              int r, int64_t d) {
  const Key key{static_cast<uint64_t>(DrawPurpose::kFeatures),
                seed,
                static_cast<uint64_t>(head),
                0,
                static_cast<uint64_t>(r),
                static_cast<uint64_t>(d)};
  return GetOrDraw(key,
                   [&] { return DrawFeatureProjections(seed, head, r, d); });
}

DrawCache::Draw DrawCache::HashProjections(uint64_t seed, int64_t head,
                                           int round, int n, int64_t d) {
  const Key key{static_cast<uint64_t>(DrawPurpose::kHash),
                seed,
                static_cast<uint64_t>(head),
                static_cast<uint64_t>(round),
                static_cast<uint64_t>(n),
                static_cast<uint64_t>(d)};
  return GetOrDraw(
      key, [&] { return DrawHashProjections(seed, head, round, n, d); });
}

int64_t DrawCache::hits() const {
  absl::MutexLock lock(&mu_);
  return hits_;
}

int64_t DrawCache::misses() const {
  absl::MutexLock lock(&mu_);
  return misses_;
}

size_t DrawCache::size() const {
  absl::MutexLock lock(&mu_);
  return lru_.size();
}

}  // namespace scatterbrain
