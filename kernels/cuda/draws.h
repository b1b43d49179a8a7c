// scatterbrain/kernels/cuda/draws.h — the random draws on the device: made
// on the host by kernels/random_draws.h from the seed (so CPU and GPU
// compute the same function), uploaded once per (seed, settings, heads) and
// cached. An entry is shared by every stream and stays alive while a batch
// in flight holds it, even after the cache drops it.
#ifndef SCATTERBRAIN_KERNELS_CUDA_DRAWS_H_
#define SCATTERBRAIN_KERNELS_CUDA_DRAWS_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "kernels/cuda/launch.h"
#include "kernels/params.h"

namespace scatterbrain {
namespace cuda {

// One upload: DeviceDraws' pointers into a single device block.
class DeviceDrawSet {
 public:
  DeviceDrawSet() = default;
  ~DeviceDrawSet();
  DeviceDrawSet(const DeviceDrawSet&) = delete;
  DeviceDrawSet& operator=(const DeviceDrawSet&) = delete;
  const DeviceDraws& draws() const { return draws_; }
  int64_t bytes() const { return bytes_; }

 private:
  friend class DrawCache;
  void* block_ = nullptr;
  int64_t bytes_ = 0;
  DeviceDraws draws_;
};

// The draw settings an upload depends on (fields a method does not use are
// left zero, so they never split the cache).
struct DrawKey {
  uint64_t seed = 0;
  int64_t dim = 0;
  int heads = 0;
  int feature_rows = 0;  // r = num_features / 2; 0 without features
  int hash_kind = 0;     // 0 none, 1 cross-polytope, 2 k-means direction
  int hash_rows = 0;
  int hash_cols = 0;
  int num_hashes = 0;
  bool operator==(const DrawKey& o) const;
};
DrawKey MakeDrawKey(const AttentionParams& settings, int heads);

class DrawCache {
 public:
  explicit DrawCache(size_t capacity = 16) : capacity_(capacity) {}
  // The draws of `settings` for heads [0, heads) on the calling thread's
  // current device; null draws (all pointers null) for methods that use
  // none. A new entry is copied on `stream` and waited for, so any stream
  // may read it at once. Thread-safe.
  absl::StatusOr<std::shared_ptr<const DeviceDrawSet>> Get(
      const AttentionParams& settings, int heads, cudaStream_t stream);
  // Device bytes the cache holds now.
  int64_t bytes() const;

 private:
  struct Entry {
    DrawKey key;
    std::shared_ptr<const DeviceDrawSet> set;
  };
  const size_t capacity_;
  mutable std::mutex mu_;
  std::list<Entry> lru_;  // most recent first
};

}  // namespace cuda
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_DRAWS_H_
