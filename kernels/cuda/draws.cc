// scatterbrain/kernels/cuda/draws.cc — see draws.h. Layouts (launch.h's
// DeviceDraws): features [heads][r][dim]; hash projections for head h,
// round t at hash + (h * num_hashes + t) * hash_rows * hash_cols, each
// [hash_rows][hash_cols] as kernels/cpu/sparse.cc draws them:
// cross-polytope 2P rows of dim (+2 with the SMYRF transform), k-means one
// row of dim (the round's ordering direction).
#include "kernels/cuda/draws.h"

#include <cuda_runtime_api.h>

#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/random_draws.h"

namespace scatterbrain {
namespace cuda {
namespace {

bool UsesFeatures(const AttentionParams& p) {
  return p.method == Method::kPerformer || p.method == Method::kScatterbrain;
}
bool UsesLsh(const AttentionParams& p) {
  return p.method == Method::kLsh || (p.method == Method::kScatterbrain &&
                                      p.sparse != SparseSupport::kLocal);
}

}  // namespace

DeviceDrawSet::~DeviceDrawSet() {
  if (block_ != nullptr) cudaFree(block_);
}

bool DrawKey::operator==(const DrawKey& o) const {
  return seed == o.seed && dim == o.dim && heads == o.heads &&
         feature_rows == o.feature_rows && hash_kind == o.hash_kind &&
         hash_rows == o.hash_rows && hash_cols == o.hash_cols &&
         num_hashes == o.num_hashes;
}

DrawKey MakeDrawKey(const AttentionParams& p, int heads) {
  DrawKey k;
  k.seed = p.seed;
  k.dim = p.dim;
  k.heads = heads;
  if (UsesFeatures(p)) k.feature_rows = p.num_features / 2;
  if (UsesLsh(p)) {
    k.num_hashes = p.num_hashes;
    if (p.lsh_hash == LshHash::kCrossPolytope) {
      k.hash_kind = 1;
      k.hash_rows = 2 * p.hash_projections;
      k.hash_cols = static_cast<int>(
          p.dim + (p.lsh_transform == LshTransform::kSmyrf ? 2 : 0));
    } else {
      k.hash_kind = 2;
      k.hash_rows = 1;
      k.hash_cols = static_cast<int>(p.dim);
    }
  }
  return k;
}

absl::StatusOr<std::shared_ptr<const DeviceDrawSet>> DrawCache::Get(
    const AttentionParams& settings, int heads, cudaStream_t stream) {
  const DrawKey key = MakeDrawKey(settings, heads);
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = lru_.begin(); it != lru_.end(); ++it) {
    if (it->key == key) {
      lru_.splice(lru_.begin(), lru_, it);
      return lru_.front().set;
    }
  }
  auto set = std::make_shared<DeviceDrawSet>();
  const int64_t feat = int64_t{key.heads} * key.feature_rows * key.dim;
  const int64_t hash =
      int64_t{key.heads} * key.num_hashes * key.hash_rows * key.hash_cols;
  if (feat + hash == 0) return std::shared_ptr<const DeviceDrawSet>(set);
  // Drawn on the host, exactly as the CPU backend draws them.
  std::vector<float> host(static_cast<size_t>(feat + hash));
  for (int h = 0; h < key.heads && key.feature_rows > 0; ++h) {
    const std::vector<float> w =
        DrawFeatureProjections(key.seed, h, key.feature_rows, key.dim);
    std::copy(w.begin(), w.end(),
              host.begin() + int64_t{h} * key.feature_rows * key.dim);
  }
  for (int h = 0; h < key.heads && key.hash_kind != 0; ++h) {
    for (int t = 0; t < key.num_hashes; ++t) {
      const std::vector<float> w =
          DrawHashProjections(key.seed, h, t, key.hash_rows, key.hash_cols);
      std::copy(w.begin(), w.end(),
                host.begin() + feat +
                    (int64_t{h} * key.num_hashes + t) * key.hash_rows *
                        key.hash_cols);
    }
  }
  const size_t bytes = host.size() * sizeof(float);
  SB_CUDA_RETURN_IF_ERROR(cudaMalloc(&set->block_, bytes));
  set->bytes_ = static_cast<int64_t>(bytes);
  // Stream-ordered, then waited for: a pageable copy may otherwise return
  // before its transfer is done.
  SB_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(set->block_, host.data(), bytes,
                                          cudaMemcpyHostToDevice, stream));
  SB_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  float* base = static_cast<float*>(set->block_);
  set->draws_.heads = key.heads;
  if (feat > 0) set->draws_.features = base;
  if (hash > 0) {
    set->draws_.hash = base + feat;
    set->draws_.hash_rows = key.hash_rows;
    set->draws_.hash_cols = key.hash_cols;
  }
  lru_.push_front(Entry{key, set});
  while (lru_.size() > capacity_) lru_.pop_back();
  return std::shared_ptr<const DeviceDrawSet>(set);
}

int64_t DrawCache::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t total = 0;
  for (const Entry& e : lru_) total += e.set->bytes();
  return total;
}

}  // namespace cuda
}  // namespace scatterbrain
