// scatterbrain/kernels/session/lsh_index.h — one LSH round's index of a
// (sequence, head)'s keys for a session: the keys in hash order (k-means
// leaf or cross-polytope bucket, then the projection value), kept sorted as
// keys arrive, so a query finds its neighbourhood of bucket_size keys in
// O(log n + bucket_size) instead of re-hashing the context.
//
// k-means: the centroids are fitted with the one-shot code (FitKMeans) on
// the keys present, refitted when the keys have doubled since the last fit
// or a leaf has grown unbalanced; until the first fit every key sits in one
// bucket ordered by its projection. Cross-polytope: fixed projections, never
// refitted.
#ifndef SCATTERBRAIN_KERNELS_SESSION_LSH_INDEX_H_
#define SCATTERBRAIN_KERNELS_SESSION_LSH_INDEX_H_

#include <cstdint>
#include <map>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/draw_rng.h"
#include "kernels/params.h"
#include "kernels/session/paged_kv.h"

namespace scatterbrain {
namespace session {

class LshIndex {
 public:
  LshIndex(const AttentionParams& settings, int64_t head, int round,
           int64_t dim);

  // Keys [old_len, new_len) of (b, head) are in kv: index them. Returns
  // true when this call refitted the centroids (all keys re-ordered).
  bool Append(const PagedKv& kv, int64_t b, int64_t old_len, int64_t new_len);
  // Up to `want` key positions < lim and outside [skip_lo, skip_hi] (the
  // row's local window, already in its support) nearest the query's order
  // key (its place in hash order, then outwards on both sides), appended
  // to out.
  void Neighbours(const float* q, int64_t lim, int64_t skip_lo, int64_t skip_hi,
                  int64_t want, std::vector<int64_t>* out) const;
  int64_t bytes() const;
  // Most bytes one more key can add (entry, slack, centroid share).
  int64_t BytesPerKey() const;
  int64_t fitted_length() const { return fitted_length_; }

 private:
  struct Entry {
    float value;
    int32_t pos;
    bool operator<(const Entry& o) const {
      return value != o.value ? value < o.value : pos < o.pos;
    }
  };
  cpu::HashKey Key(const float* x) const;
  void Insert(cpu::HashKey key, int64_t pos);
  void Refit(const PagedKv& kv, int64_t b, int64_t length);
  bool RefitDue(int64_t length) const;

  const AttentionParams settings_;
  const int64_t head_;
  const int round_;
  const int64_t dim_;
  const bool kmeans_;
  std::map<uint32_t, std::vector<Entry>> buckets_;
  size_t largest_ = 0;
  // Bytes of the buckets' nodes and entry arrays (capacity), kept current.
  int64_t entry_bytes_ = 0;
  int64_t count_ = 0;
  // k-means: the model (empty until the first fit) and when it was fitted.
  cpu::KMeansModel model_;
  std::vector<float> dir_;
  int64_t fitted_length_ = 0;
  // cross-polytope: the round's (2P) x dim projections.
  std::vector<float> proj_;
};

}  // namespace session
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_SESSION_LSH_INDEX_H_
