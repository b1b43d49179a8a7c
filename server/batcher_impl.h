// scatterbrain/server/batcher_impl.h — template definitions of Batcher
// (included by batcher.h only).
#ifndef SCATTERBRAIN_SERVER_BATCHER_IMPL_H_
#define SCATTERBRAIN_SERVER_BATCHER_IMPL_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/batcher.h"  // IWYU pragma: keep

namespace scatterbrain {
namespace server {

template <typename T>
Batcher<T>::Batcher(BatcherOptions options, const Clock* clock)
    : options_(std::move(options)), clock_(clock) {}

template <typename T>
absl::Status Batcher<T>::Enqueue(const std::string& key, T item,
                                 int64_t tokens, int64_t max_delay_us) {
  if (tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokens must be >= 0, got ", tokens));
  }
  // Read the clock outside the lock: it is the caller's object and may be
  // slow (a syscall); the order of enqueue times across threads does not
  // matter, only each queue's FIFO order, which push_back under mu_ keeps.
  const int64_t now_us = clock_->NowMicros();
  absl::MutexLock lock(&mu_);
  if (draining_) return absl::UnavailableError("draining");
  if (queued_ >= options_.max_queue_requests) {
    return absl::UnavailableError(
        absl::StrCat("queue full: ", queued_, " requests waiting"));
  }
  Queue& q = queues_[key];
  // A later-enqueued item never carries an earlier time than the one ahead
  // of it, so "the front is the oldest" holds even if threads raced above.
  const int64_t t = q.entries.empty()
                        ? now_us
                        : std::max(now_us, q.entries.back().enqueue_us);
  q.entries.push_back(Entry{std::move(item), t, tokens,
                            max_delay_us >= 0 ? max_delay_us
                                              : options_.max_queue_delay_us});
  ++queued_;
  return absl::OkStatus();
}

template <typename T>
bool Batcher<T>::DueLocked(const Queue& q, int64_t now_us) const {
  if (q.entries.empty()) return false;
  if (draining_) return true;
  return now_us - q.entries.front().enqueue_us >= q.entries.front().delay_us;
}

template <typename T>
size_t Batcher<T>::NextBatchSizeLocked(const Queue& q, bool* full) const {
  // Non-positive limits are treated as "one item per batch" rather than as
  // "never close", which would stall the queue.
  const size_t max_requests =
      static_cast<size_t>(std::max(1, options_.max_batch_requests));
  const int64_t max_tokens = options_.max_batch_tokens;
  size_t n = 0;
  int64_t tokens = 0;
  *full = false;
  while (n < q.entries.size()) {
    if (n == max_requests) {
      *full = true;
      break;
    }
    const int64_t next = q.entries[n].tokens;
    // The first item always goes in, even when it alone exceeds the limit.
    if (n > 0 && tokens + next > max_tokens) {
      *full = true;  // the next waiting item does not fit: close before it
      break;
    }
    tokens += next;
    ++n;
  }
  if (n == max_requests || tokens >= max_tokens) *full = true;
  return n;
}

template <typename T>
std::vector<Batch<T>> Batcher<T>::TakeReadyBatches() {
  const int64_t now_us = clock_->NowMicros();
  std::vector<Batch<T>> out;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = queues_.begin(); it != queues_.end();) {
      Queue& q = it->second;
      while (!q.entries.empty()) {
        bool full = false;
        const size_t n = NextBatchSizeLocked(q, &full);
        // Due-ness is re-evaluated per batch: once the front batch is taken
        // the next one's oldest item is younger and may not be due yet.
        if (!full && !DueLocked(q, now_us)) break;
        Batch<T> batch;
        batch.key = it->first;
        batch.items.reserve(n);
        for (size_t i = 0; i < n; ++i) {
          Entry& e = q.entries.front();
          batch.tokens += e.tokens;
          batch.items.emplace_back(std::move(e.item), e.enqueue_us);
          q.entries.pop_front();
        }
        queued_ -= static_cast<int>(n);
        out.push_back(std::move(batch));
      }
      if (q.entries.empty()) {
        it = queues_.erase(it);
      } else {
        ++it;
      }
    }
  }
  // Oldest work first across keys, so the executor serves long waiters
  // before queues that merely sort earlier by key.
  std::stable_sort(out.begin(), out.end(),
                   [](const Batch<T>& a, const Batch<T>& b) {
                     return a.items.front().second < b.items.front().second;
                   });
  return out;
}

template <typename T>
std::optional<int64_t> Batcher<T>::NextDeadlineMicros() const {
  absl::MutexLock lock(&mu_);
  std::optional<int64_t> deadline;
  for (const auto& [key, q] : queues_) {
    if (q.entries.empty()) continue;
    // While draining, a queue is due as soon as its oldest item arrived
    // (a time <= now), so the owner does not sleep on it.
    const int64_t due =
        draining_ ? q.entries.front().enqueue_us
                  : q.entries.front().enqueue_us + q.entries.front().delay_us;
    if (!deadline || due < *deadline) deadline = due;
  }
  return deadline;
}

template <typename T>
template <typename Pred>
std::vector<T> Batcher<T>::RemoveIf(Pred pred) {
  std::vector<T> removed;
  absl::MutexLock lock(&mu_);
  for (auto it = queues_.begin(); it != queues_.end();) {
    Queue& q = it->second;
    // By hand rather than std::remove_if: the removed items must be moved
    // out to the caller, and survivors keep FIFO order and enqueue times.
    std::deque<Entry> kept;
    for (Entry& e : q.entries) {
      if (pred(static_cast<const T&>(e.item))) {
        --queued_;
        removed.push_back(std::move(e.item));
      } else {
        kept.push_back(std::move(e));
      }
    }
    q.entries = std::move(kept);
    if (q.entries.empty()) {
      it = queues_.erase(it);
    } else {
      ++it;
    }
  }
  return removed;
}

template <typename T>
void Batcher<T>::Drain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

template <typename T>
bool Batcher<T>::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

template <typename T>
int Batcher<T>::queued() const {
  absl::MutexLock lock(&mu_);
  return queued_;
}

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_BATCHER_IMPL_H_
