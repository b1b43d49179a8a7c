// scatterbrain/server/memory_budget.h — the server's memory admission: one
// byte budget shared by every request's buffers (inputs, output, the unary
// response), reserved when a request is accepted and released when its
// answer is gone. A header alone used to make the server allocate the whole
// request: a few half-uploaded requests took it from 21 MB to 4.4 GB, and
// nothing bounded the sum across streams. Now a request that does not fit is
// refused (RESOURCE_EXHAUSTED naming the budget) before anything is
// allocated, and buffers are only touched as their bytes arrive.
#ifndef SCATTERBRAIN_SERVER_MEMORY_BUDGET_H_
#define SCATTERBRAIN_SERVER_MEMORY_BUDGET_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace scatterbrain {
namespace server {

class MemoryBudget;

// Bytes held against a MemoryBudget; given back when destroyed (or
// Release()d). Movable; empty when default-constructed.
class MemoryReservation {
 public:
  MemoryReservation() = default;
  ~MemoryReservation() { Release(); }
  MemoryReservation(MemoryReservation&& o) noexcept { *this = std::move(o); }
  MemoryReservation& operator=(MemoryReservation&& o) noexcept;
  MemoryReservation(const MemoryReservation&) = delete;
  MemoryReservation& operator=(const MemoryReservation&) = delete;

  int64_t bytes() const { return bytes_; }
  void Release();
  // Adds `bytes` (>= 0) more to this reservation, or fails as
  // MemoryBudget::Reserve does and nothing changes. A session's memory grows
  // and shrinks with it: one reservation, not one per block. An empty
  // (default-constructed) reservation cannot grow: start from Reserve(0).
  absl::Status Grow(int64_t bytes, const std::string& what);
  // Gives back `bytes` (at most what is held) now.
  void Shrink(int64_t bytes);

 private:
  friend class MemoryBudget;
  MemoryReservation(MemoryBudget* budget, int64_t bytes)
      : budget_(budget), bytes_(bytes) {}
  MemoryBudget* budget_ = nullptr;
  int64_t bytes_ = 0;
};

class MemoryBudget {
 public:
  // `limit_bytes` > 0. `on_change`, if set, sees every new reserved total
  // (under the budget's lock, so in order: it must be cheap, e.g. a gauge).
  // Thread-safe; must outlive its reservations.
  explicit MemoryBudget(int64_t limit_bytes,
                        std::function<void(int64_t)> on_change = nullptr)
      : limit_bytes_(limit_bytes), on_change_(std::move(on_change)) {}

  // Reserves `bytes` (>= 0) or fails without waiting: RESOURCE_EXHAUSTED
  // saying what `what` needs, what is reserved and the limit, and whether it
  // could ever fit. Never blocks: gRPC reactions call it.
  absl::StatusOr<MemoryReservation> Reserve(int64_t bytes,
                                            const std::string& what);

  int64_t limit_bytes() const { return limit_bytes_; }
  int64_t reserved_bytes() const;
  // The most ever reserved at once.
  int64_t high_water_bytes() const;

 private:
  friend class MemoryReservation;
  void Give(int64_t bytes);

  const int64_t limit_bytes_;
  const std::function<void(int64_t)> on_change_;
  mutable absl::Mutex mu_;
  int64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t high_water_ ABSL_GUARDED_BY(mu_) = 0;
};

// The memory this process may use: the smallest of the cgroup limit (v2
// memory.max, or v1 memory.limit_in_bytes, when set) and the machine's
// MemTotal. 0 when none can be read. The roots are parameters for tests.
int64_t MemoryLimitBytes(const std::string& cgroup_root = "/sys/fs/cgroup",
                         const std::string& proc_root = "/proc");

// The default --max_memory_bytes: half of MemoryLimitBytes(), leaving the
// rest to the backend's workspace, gRPC's transport buffers and the
// allocator; 4 GiB when no limit can be read.
int64_t DefaultMaxMemoryBytes();

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_MEMORY_BUDGET_H_
