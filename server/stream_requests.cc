// scatterbrain/server/stream_requests.cc — see stream_requests.h.
#include "server/stream_requests.h"

#include <algorithm>
#include <vector>

namespace scatterbrain {
namespace server {

void Uploads::MarkDead(const std::string& id) {
  if (id.size() > kMaxIdBytes || !dead_ids_.insert(id).second) return;
  dead_order_.push_back(id);
  if (dead_order_.size() > kMaxDeadIds) {
    dead_ids_.erase(dead_order_.front());
    dead_order_.pop_front();
  }
}

void Uploads::DropCancelled() {
  std::vector<std::string> gone;
  for (const auto& [id, upload] : uploads_) {
    if (upload->job->cancelled.load()) gone.push_back(id);
  }
  for (const std::string& id : gone) {
    uploads_.erase(id);
    MarkDead(id);
  }
}

void Uploads::ForgetDead(const std::string& id) {
  if (dead_ids_.erase(id) == 0) return;
  dead_order_.erase(std::find(dead_order_.begin(), dead_order_.end(), id));
}

}  // namespace server
}  // namespace scatterbrain
