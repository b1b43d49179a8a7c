// scatterbrain/kernels/random_draws.h — every random draw of the library,
// made on the host from the request seed with a portable generator, so that
// each backend (CPU now, CUDA later) computes the same function for the same
// seed. Streams are keyed (seed, purpose, head, round) and independent, so
// e.g. feature draws and hash draws never share randomness.
#ifndef SCATTERBRAIN_KERNELS_RANDOM_DRAWS_H_
#define SCATTERBRAIN_KERNELS_RANDOM_DRAWS_H_

#include <cstdint>
#include <list>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "kernels/draw_rng.h"

namespace scatterbrain {

enum class DrawPurpose : uint64_t {
  kFeatures = 1,
  kHash = 2,
  kCalibration = 3,
  kErrorSample = 4,
  kValidation = 5,  // the held-out rows an error target is checked on
};

// draw_rng.h's generator (SplitMix64-seeded xoshiro256**, shared with the
// device) with Box–Muller normals: identical on every compiler and platform
// (unlike std::normal_distribution).
class Rng {
 public:
  Rng(uint64_t seed, DrawPurpose purpose, uint64_t a = 0, uint64_t b = 0);
  uint64_t NextU64();
  double Uniform();  // in [0, 1)
  double Normal();
  // Uniform integer in [0, n).
  uint64_t Below(uint64_t n);

 private:
  DrawRng core_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

// r x d projection matrix (row-major, float) for positive random features:
// rows drawn in orthogonal blocks of d (Gram–Schmidt on Gaussian matrices),
// each row rescaled to a chi_d-distributed norm so that every row is
// marginally N(0, I). Keyed by (seed, head).
std::vector<float> DrawFeatureProjections(uint64_t seed, int64_t head, int r,
                                          int64_t d);

// n x d iid N(0, 1) matrix (row-major) for hash round `round` of `head`.
std::vector<float> DrawHashProjections(uint64_t seed, int64_t head, int round,
                                       int n, int64_t d);

// A process-wide cache of the projection draws above, keyed by everything
// that defines them ((purpose, seed, head, round, rows, dim)), so a request
// does not redraw (and re-orthogonalise) what an earlier one with the same
// seed drew. Shared by every backend: the CUDA backend uploads these very
// vectors. Thread-safe; bounded (least recently used entries go first); a
// returned draw stays valid while its holder keeps it.
class DrawCache {
 public:
  using Draw = std::shared_ptr<const std::vector<float>>;
  explicit DrawCache(size_t max_entries = 512) : max_entries_(max_entries) {}
  static DrawCache& Global();

  Draw FeatureProjections(uint64_t seed, int64_t head, int r, int64_t d);
  Draw HashProjections(uint64_t seed, int64_t head, int round, int n,
                       int64_t d);

  int64_t hits() const;
  int64_t misses() const;
  size_t size() const;

 private:
  struct Key {
    uint64_t purpose, seed, head, round, rows, dim;
    bool operator==(const Key& o) const {
      return purpose == o.purpose && seed == o.seed && head == o.head &&
             round == o.round && rows == o.rows && dim == o.dim;
    }
    template <typename H>
    friend H AbslHashValue(H h, const Key& k) {
      return H::combine(std::move(h), k.purpose, k.seed, k.head, k.round,
                        k.rows, k.dim);
    }
  };
  template <typename F>
  Draw GetOrDraw(const Key& key, F draw);

  const size_t max_entries_;
  mutable absl::Mutex mu_;
  // Most recently used at the front.
  std::list<std::pair<Key, Draw>> lru_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<Key, std::list<std::pair<Key, Draw>>::iterator> index_
      ABSL_GUARDED_BY(mu_);
  int64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t misses_ ABSL_GUARDED_BY(mu_) = 0;
};

// `count` distinct indices from [0, n) (all of them if count >= n), sorted.
std::vector<int64_t> SampleRows(uint64_t seed, DrawPurpose purpose,
                                int64_t batch_index, int64_t head, int64_t n,
                                int64_t count);

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_RANDOM_DRAWS_H_
