// scatterbrain/server/stream_requests.h — the requests of one Attend stream
// by id: those accepted and not yet answered (LiveRequests), those still
// uploading, and the ids whose late chunks are dropped (Uploads).
//
// Transport-free bookkeeping. A request id moves header -> uploading ->
// with the executor -> answered, and can be failed, cancelled or duplicated
// at every step; these tables make each of those one call (Take with the
// job it must still be, so that a reused id never answers for an older
// request) instead of a find/compare/erase at each site.
#ifndef SCATTERBRAIN_SERVER_STREAM_REQUESTS_H_
#define SCATTERBRAIN_SERVER_STREAM_REQUESTS_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "server/executor.h"
#include "server/tensor_assembler.h"

namespace scatterbrain {
namespace server {

// An accepted request not yet answered.
struct LiveRequest {
  JobPtr job;
  int64_t start_us = 0;  // when its header arrived (the latency metric)
  // Its tensors are still arriving (the upload timeout applies).
  bool uploading = true;
};

// The stream's accepted, unanswered requests (uploading or with the
// executor). Not thread-safe: the reactor guards it with its mutex, since
// removing a request and queueing its answer must be one step for the
// stream's end-of-work check.
class LiveRequests {
 public:
  bool contains(const std::string& id) const { return map_.contains(id); }
  size_t size() const { return map_.size(); }
  bool empty() const { return map_.empty(); }

  void Add(const std::string& id, LiveRequest request) {
    map_[id] = std::move(request);
  }
  // The job under `id`, or null.
  JobPtr Find(const std::string& id) const {
    auto it = map_.find(id);
    return it == map_.end() ? nullptr : it->second.job;
  }
  // Removes and returns the request under `id` — only if it is `job`'s when
  // `job` is given (the id may have been answered and reused meanwhile).
  std::optional<LiveRequest> Take(const std::string& id,
                                  const JobPtr& job = nullptr) {
    auto it = map_.find(id);
    if (it == map_.end() || (job != nullptr && it->second.job != job)) {
      return std::nullopt;
    }
    LiveRequest r = std::move(it->second);
    map_.erase(it);
    return r;
  }
  // Removes every request, calling f(id, request) for each.
  template <typename F>
  void TakeAll(F f) {
    for (auto& [id, request] : map_) f(id, request);
    map_.clear();
  }
  // The request under `id`, or null.
  LiveRequest* Get(const std::string& id) {
    auto it = map_.find(id);
    return it == map_.end() ? nullptr : &it->second;
  }
  // Ids of the requests for which pred(request) holds.
  template <typename P>
  std::vector<std::string> IdsWhere(P pred) const {
    std::vector<std::string> ids;
    for (const auto& [id, request] : map_) {
      if (pred(request)) ids.push_back(id);
    }
    return ids;
  }

 private:
  absl::flat_hash_map<std::string, LiveRequest> map_;
};

// A request whose tensors are still arriving.
struct Upload {
  JobPtr job;
  TensorAssembler q, k, v;

  bool complete() const { return q.complete() && k.complete() && v.complete(); }
  // The first tensor still short of bytes (for the "stream ended" error).
  const TensorAssembler& FirstIncomplete() const {
    return !q.complete() ? q : !k.complete() ? k : v;
  }
};

// The read path's state: uploads in progress and the "dead" ids (failed or
// cancelled) whose chunks still on their way are dropped silently, one error
// per request rather than one per chunk. Only the read path touches it
// (gRPC runs one OnReadDone at a time), so it needs no lock: chunks are
// decoded outside the reactor's mutex.
class Uploads {
 public:
  // At most this many dead ids are remembered; the oldest go first.
  static constexpr size_t kMaxDeadIds = 1024;
  // Longer ids are never remembered (the contract allows 128 bytes; a longer
  // one is an error and must not cost memory).
  static constexpr size_t kMaxIdBytes = 128;

  Upload* Find(const std::string& id) {
    auto it = uploads_.find(id);
    return it == uploads_.end() ? nullptr : it->second.get();
  }
  bool contains(const std::string& id) const { return uploads_.contains(id); }
  void Add(const std::string& id, std::unique_ptr<Upload> upload) {
    uploads_[id] = std::move(upload);
  }
  // Removes and returns the upload under `id` (null if none).
  std::unique_ptr<Upload> Take(const std::string& id) {
    auto node = uploads_.extract(id);
    return node.empty() ? nullptr : std::move(node.mapped());
  }
  // Removes every upload, calling f(id, upload) for each.
  template <typename F>
  void TakeAll(F f) {
    for (auto& [id, upload] : uploads_) f(id, *upload);
    uploads_.clear();
  }

  // Frees the uploads whose job was cancelled from outside the read path
  // (the upload timeout): they are answered already; their late chunks are
  // dropped.
  void DropCancelled();

  // Late chunks for `id` are dropped from now on.
  void MarkDead(const std::string& id);
  // A new header starts the id afresh.
  void ForgetDead(const std::string& id);
  bool IsDead(const std::string& id) const { return dead_ids_.contains(id); }

 private:
  absl::flat_hash_map<std::string, std::unique_ptr<Upload>> uploads_;
  absl::flat_hash_set<std::string> dead_ids_;
  std::deque<std::string> dead_order_;
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_STREAM_REQUESTS_H_
