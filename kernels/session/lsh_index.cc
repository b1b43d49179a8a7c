// scatterbrain/kernels/session/lsh_index.cc — see lsh_index.h.
#include "kernels/session/lsh_index.h"

#include <algorithm>
#include <limits>

#include "kernels/cuda/sparse_math.h"
#include "kernels/random_draws.h"

namespace scatterbrain {
namespace session {

namespace {
// A leaf this many times the mean leaf size (once the keys have grown by a
// quarter since the fit) makes the index refit: its queries would meet only
// a sliver of their cluster.
constexpr int64_t kUnbalancedFactor = 8;
// What a bucket's map node costs besides its entries (an estimate).
constexpr int64_t kNodeBytes = 64;
}  // namespace

LshIndex::LshIndex(const AttentionParams& settings, int64_t head, int round,
                   int64_t dim)
    : settings_(settings),
      head_(head),
      round_(round),
      dim_(dim),
      kmeans_(settings.lsh_hash == LshHash::kKMeans) {
  if (kmeans_) {
    dir_ = *DrawCache::Global().HashProjections(settings.seed, head, round, 1,
                                                dim);
  } else {
    proj_ = *DrawCache::Global().HashProjections(
        settings.seed, head, round, 2 * settings.hash_projections, dim);
  }
}

cpu::HashKey LshIndex::Key(const float* x) const {
  cpu::HashKey key{0, 0.0f};
  if (!kmeans_) {
    cpu::CrossPolytopeOrderKeys(x, dim_, 1, dim_, proj_,
                                settings_.hash_projections, nullptr, &key);
  } else if (fitted_length_ > 0) {
    cpu::KMeansOrderKeys(model_, x, dim_, 1, nullptr, nullptr, &key);
  } else {
    float v = 0;
    for (int64_t c = 0; c < dim_; ++c) v += dir_[c] * x[c];
    key.value = v;
  }
  return key;
}

void LshIndex::Insert(cpu::HashKey key, int64_t pos) {
  const size_t before = buckets_.size();
  std::vector<Entry>& bucket = buckets_[key.bucket];
  const size_t capacity = bucket.capacity();
  const Entry e{key.value, static_cast<int32_t>(pos)};
  bucket.insert(std::upper_bound(bucket.begin(), bucket.end(), e), e);
  entry_bytes_ +=
      static_cast<int64_t>((bucket.capacity() - capacity) * sizeof(Entry)) +
      static_cast<int64_t>(buckets_.size() - before) * kNodeBytes;
  largest_ = std::max(largest_, bucket.size());
  ++count_;
}

bool LshIndex::RefitDue(int64_t length) const {
  if (!kmeans_) return false;
  const int64_t bucket = settings_.bucket_size;
  if (length < 2 * bucket) return false;
  if (fitted_length_ == 0 || 8 * length >= 9 * fitted_length_) return true;
  const int64_t mean_leaf = std::max<int64_t>(
      1, bucket * length / std::max<int64_t>(fitted_length_, 1));
  return static_cast<int64_t>(largest_) > kUnbalancedFactor * mean_leaf &&
         4 * length >= 5 * fitted_length_;
}

void LshIndex::Refit(const PagedKv& kv, int64_t b, int64_t length) {
  std::vector<float> keys(static_cast<size_t>(length * dim_));
  kv.GatherKeys(b, head_, length, keys.data());
  cpu::Slice s{};
  s.k = keys.data();
  s.k_row = dim_;
  s.nk = length;
  s.d = dim_;
  s.h = head_;
  s.cancel = nullptr;
  cpu::FitKMeans(s, cuda::sparse::NumChunks(length, settings_.bucket_size),
                 settings_.kmeans_iterations, settings_.seed, round_, nullptr,
                 &model_);
  std::vector<cpu::HashKey> hk(static_cast<size_t>(length));
  cpu::KMeansOrderKeys(model_, keys.data(), dim_, length, nullptr, nullptr,
                       hk.data());
  buckets_.clear();
  for (int64_t j = 0; j < length; ++j)
    buckets_[hk[j].bucket].push_back(
        Entry{hk[j].value, static_cast<int32_t>(j)});
  largest_ = 0;
  entry_bytes_ = static_cast<int64_t>(buckets_.size()) * kNodeBytes;
  for (auto& [id, entries] : buckets_) {
    std::sort(entries.begin(), entries.end());
    largest_ = std::max(largest_, entries.size());
    entry_bytes_ += static_cast<int64_t>(entries.capacity() * sizeof(Entry));
  }
  count_ = length;
  fitted_length_ = length;
}

bool LshIndex::Append(const PagedKv& kv, int64_t b, int64_t old_len,
                      int64_t new_len) {
  if (RefitDue(new_len)) {
    Refit(kv, b, new_len);
    return true;
  }
  std::vector<float> row(static_cast<size_t>(dim_));
  for (int64_t j = old_len; j < new_len; ++j) {
    kv.ReadKey(b, head_, j, row.data());
    Insert(Key(row.data()), j);
  }
  return false;
}

void LshIndex::Neighbours(const float* q, int64_t lim, int64_t skip_lo,
                          int64_t skip_hi, int64_t want,
                          std::vector<int64_t>* out) const {
  if (buckets_.empty() || want <= 0) return;
  const cpu::HashKey key = Key(q);
  using It = std::map<uint32_t, std::vector<Entry>>::const_iterator;
  // The query's place in hash order: before entry `ri` of bucket `rit`.
  It rit = buckets_.lower_bound(key.bucket);
  size_t ri = 0;
  if (rit != buckets_.end() && rit->first == key.bucket) {
    const Entry probe{key.value, std::numeric_limits<int32_t>::min()};
    ri = std::lower_bound(rit->second.begin(), rit->second.end(), probe) -
         rit->second.begin();
  }
  It lit = rit;
  size_t li = ri;  // the left cursor takes entry li - 1
  bool right_done = false, left_done = false;
  int64_t taken = 0;
  auto take_right = [&]() {
    while (rit != buckets_.end()) {
      if (ri < rit->second.size()) {
        const int32_t pos = rit->second[ri++].pos;
        if (pos < lim && (pos < skip_lo || pos > skip_hi))
          return static_cast<int64_t>(pos);
        continue;
      }
      ++rit;
      ri = 0;
    }
    right_done = true;
    return int64_t{-1};
  };
  auto take_left = [&]() {
    while (true) {
      if (li > 0) {
        const int32_t pos = lit->second[--li].pos;
        if (pos < lim && (pos < skip_lo || pos > skip_hi))
          return static_cast<int64_t>(pos);
        continue;
      }
      if (lit == buckets_.begin()) break;
      --lit;
      li = lit->second.size();
    }
    left_done = true;
    return int64_t{-1};
  };
  // Outwards from the query's place, alternately right and left.
  while (taken < want && !(right_done && left_done)) {
    if (!right_done) {
      const int64_t p = take_right();
      if (p >= 0) {
        out->push_back(p);
        if (++taken == want) break;
      }
    }
    if (!left_done) {
      const int64_t p = take_left();
      if (p >= 0) {
        out->push_back(p);
        ++taken;
      }
    }
  }
}

int64_t LshIndex::bytes() const {
  // Kept as entries arrive: Info() asks after every step.
  int64_t n = entry_bytes_;
  n += static_cast<int64_t>((model_.top.size() + model_.leaves.size() +
                             model_.dir.size() + dir_.size() + proj_.size()) *
                            sizeof(float));
  return n;
}

int64_t LshIndex::BytesPerKey() const {
  // An entry with the vectors' growth slack, and the key's share of the
  // centroids and bucket nodes (about one centroid per bucket_size keys).
  return 2 * static_cast<int64_t>(sizeof(Entry)) +
         (4 * dim_ + 64) / std::max(1, settings_.bucket_size) + 1;
}

}  // namespace session
}  // namespace scatterbrain
