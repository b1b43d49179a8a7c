// scatterbrain/server/batcher.h — cross-client batching, TF-Serving style.
//
// Items go into one queue per compatible class (the caller's key: same head
// dims, method and settings); a queue's batch closes when it reaches
// max_batch_requests items or max_batch_tokens tokens, or when its oldest
// item has waited max_queue_delay_us. The batcher holds no thread: the
// owner calls TakeReadyBatches() (non-blocking, exact under a FakeClock) and
// sleeps until NextDeadlineMicros() or a Notify. Thread-safe.
#ifndef SCATTERBRAIN_SERVER_BATCHER_H_
#define SCATTERBRAIN_SERVER_BATCHER_H_

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/clock.h"

namespace scatterbrain {
namespace server {

struct BatcherOptions {
  // A batch closes when it holds this many items...
  int max_batch_requests = 8;
  // ...or this many tokens (the caller's measure: seq_q + seq_k summed
  // over batch * heads of each request). An item larger than this on its
  // own forms a batch alone.
  int64_t max_batch_tokens = 1 << 20;
  // ...or when its oldest item has waited this long. 0: no waiting.
  int64_t max_queue_delay_us = 2000;
  // Items waiting in all queues together; beyond: UNAVAILABLE.
  int max_queue_requests = 256;
};

template <typename T>
struct Batch {
  std::string key;
  // (item, enqueue time in microseconds), oldest first.
  std::vector<std::pair<T, int64_t>> items;
  int64_t tokens = 0;
};

template <typename T>
class Batcher {
 public:
  Batcher(BatcherOptions options, const Clock* clock);

  // Queues `item` under `key`. UNAVAILABLE when max_queue_requests items
  // are waiting or after Drain(); INVALID_ARGUMENT for tokens < 0.
  // `max_delay_us` >= 0 replaces max_queue_delay_us for this item (a queue
  // is due when its oldest item has waited its own delay): decode steps use
  // 0, so a lone step never waits and steps that arrive while a batch runs
  // form the next one (continuous batching).
  absl::Status Enqueue(const std::string& key, T item, int64_t tokens,
                       int64_t max_delay_us = -1);

  // Removes and returns every batch that is ready now: full queues (by
  // requests or tokens, possibly several batches from one queue) and queues
  // whose oldest item is due. After Drain(), every waiting item is ready.
  std::vector<Batch<T>> TakeReadyBatches();

  // Earliest time (microseconds) a waiting queue becomes due; nullopt when
  // nothing waits.
  std::optional<int64_t> NextDeadlineMicros() const;

  // Removes waiting items for which pred(item) is true (e.g. cancelled);
  // returns them.
  template <typename Pred>
  std::vector<T> RemoveIf(Pred pred);

  // Refuse new items from now on; waiting items become ready immediately.
  void Drain();
  bool draining() const;

  int queued() const;  // items waiting in all queues

 private:
  struct Entry {
    T item;
    int64_t enqueue_us;
    int64_t tokens;
    int64_t delay_us;  // how long it may wait for its batch to fill
  };
  struct Queue {
    std::deque<Entry> entries;  // oldest first
  };

  // Whether the front of `q` may be taken now: draining, or its oldest item
  // has waited its delay (max_queue_delay_us unless Enqueue gave one).
  bool DueLocked(const Queue& q, int64_t now_us) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // How many items from the front of `q` form the next batch under the
  // size limits; *full is set when that batch cannot grow any further.
  size_t NextBatchSizeLocked(const Queue& q, bool* full) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const BatcherOptions options_;
  const Clock* const clock_;
  mutable absl::Mutex mu_;
  // std::map: empty queues are erased, so it holds only live keys.
  std::map<std::string, Queue> queues_ ABSL_GUARDED_BY(mu_);
  int queued_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace server
}  // namespace scatterbrain

// Template definitions.
#include "server/batcher_impl.h"  // IWYU pragma: export

#endif  // SCATTERBRAIN_SERVER_BATCHER_H_
