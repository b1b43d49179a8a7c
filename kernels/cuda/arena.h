// scatterbrain/kernels/cuda/arena.h — per-stream device scratch: one
// allocation grown on demand (never per request), handed out by a bump
// pointer and reset between batches. Its high-water mark feeds the memory
// accounting; growing past the limit or the device's free memory is
// RESOURCE_EXHAUSTED for that batch, never a crash.
#ifndef SCATTERBRAIN_KERNELS_CUDA_ARENA_H_
#define SCATTERBRAIN_KERNELS_CUDA_ARENA_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"

namespace scatterbrain {
namespace cuda {

class DeviceArena {
 public:
  // `limit_bytes` 0: bounded by the device only.
  explicit DeviceArena(int64_t limit_bytes) : limit_(limit_bytes) {}
  ~DeviceArena();
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;

  // Makes sure `bytes` are available from now until Reset (reallocating
  // the block, which must not be in use: call between batches).
  absl::Status Reserve(int64_t bytes);
  // `bytes` (rounded up to 256) from the block; RESOURCE_EXHAUSTED past
  // the reservation.
  absl::StatusOr<void*> Allocate(int64_t bytes);
  template <typename T>
  absl::StatusOr<T*> AllocateArray(int64_t n) {
    absl::StatusOr<void*> p = Allocate(n * static_cast<int64_t>(sizeof(T)));
    if (!p.ok()) return p.status();
    return static_cast<T*>(*p);
  }
  // Everything handed out is free again.
  void Reset() { used_ = 0; }

  int64_t capacity() const { return capacity_; }
  int64_t used() const { return used_; }
  int64_t high_water() const { return high_water_; }

 private:
  const int64_t limit_;
  void* block_ = nullptr;
  int64_t capacity_ = 0;
  int64_t used_ = 0;
  int64_t high_water_ = 0;
};

// Leaves *p alone when the caller already set it, else points it at `n`
// elements from the arena (the launchers' "buffers left null are taken from
// ctx.arena" contract, launch.h).
template <typename T>
absl::Status AllocateIfNull(DeviceArena* arena, int64_t n, T** p) {
  if (*p != nullptr) return absl::OkStatus();
  absl::StatusOr<T*> got = arena->AllocateArray<T>(n);
  if (!got.ok()) return got.status();
  *p = *got;
  return absl::OkStatus();
}

}  // namespace cuda
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_ARENA_H_
