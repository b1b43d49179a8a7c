// scatterbrain/server/memory_budget.cc — see memory_budget.h.
#include "server/memory_budget.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace scatterbrain {
namespace server {
namespace {

// The first line of `path`, trimmed; "" when unreadable.
std::string FirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return "";
  return std::string(absl::StripAsciiWhitespace(line));
}

// The cgroup (v2 or v1) this process is in, relative to its hierarchy's
// root, from /proc/self/cgroup; "/" when unknown.
std::string OwnCgroup(const std::string& proc_root, bool v2) {
  std::ifstream in(proc_root + "/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    // v2: "0::/path"; v1: "N:memory[,...]:/path".
    std::vector<std::string> parts =
        absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (parts.size() != 3) continue;
    if (v2 && parts[0] == "0" && parts[1].empty()) return parts[2];
    if (!v2) {
      for (absl::string_view c : absl::StrSplit(parts[1], ',')) {
        if (c == "memory") return parts[2];
      }
    }
  }
  return "/";
}

// A limit file's value; 0 for "max", absurd values (v1's "unlimited" is
// near 2^63) and unreadable files.
int64_t LimitFrom(const std::string& path) {
  const std::string s = FirstLine(path);
  int64_t v = 0;
  if (s.empty() || s == "max" || !absl::SimpleAtoi(s, &v)) return 0;
  if (v <= 0 || v >= (int64_t{1} << 60)) return 0;
  return v;
}

int64_t MinPositive(int64_t a, int64_t b) {
  if (a <= 0) return b;
  if (b <= 0) return a;
  return std::min(a, b);
}

}  // namespace

MemoryReservation& MemoryReservation::operator=(
    MemoryReservation&& o) noexcept {
  if (this != &o) {
    Release();
    budget_ = std::exchange(o.budget_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

absl::Status MemoryReservation::Grow(int64_t bytes, const std::string& what) {
  if (budget_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": an empty reservation cannot grow"));
  }
  absl::StatusOr<MemoryReservation> more = budget_->Reserve(bytes, what);
  if (!more.ok()) return more.status();
  bytes_ += std::exchange(more->bytes_, 0);
  more->budget_ = nullptr;
  return absl::OkStatus();
}

void MemoryReservation::Shrink(int64_t bytes) {
  bytes = std::min(std::max<int64_t>(bytes, 0), bytes_);
  if (budget_ == nullptr || bytes == 0) return;
  budget_->Give(bytes);
  bytes_ -= bytes;
}

void MemoryReservation::Release() {
  if (budget_ != nullptr) budget_->Give(bytes_);
  budget_ = nullptr;
  bytes_ = 0;
}

absl::StatusOr<MemoryReservation> MemoryBudget::Reserve(
    int64_t bytes, const std::string& what) {
  bytes = std::max<int64_t>(bytes, 0);
  absl::MutexLock lock(&mu_);
  if (bytes > limit_bytes_ - reserved_) {
    if (bytes > limit_bytes_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          what, ": needs ", bytes,
          " bytes of server memory, more than the whole budget of ",
          limit_bytes_, " bytes (max_memory_bytes); send a smaller request"));
    }
    return absl::ResourceExhaustedError(absl::StrCat(
        what, ": needs ", bytes, " bytes of server memory; ", reserved_,
        " of the budget of ", limit_bytes_,
        " bytes (max_memory_bytes) are held by requests in flight and "
        "sessions; retry later"));
  }
  reserved_ += bytes;
  high_water_ = std::max(high_water_, reserved_);
  if (on_change_) on_change_(reserved_);
  return MemoryReservation(this, bytes);
}

int64_t MemoryBudget::reserved_bytes() const {
  absl::MutexLock lock(&mu_);
  return reserved_;
}

int64_t MemoryBudget::high_water_bytes() const {
  absl::MutexLock lock(&mu_);
  return high_water_;
}

void MemoryBudget::Give(int64_t bytes) {
  absl::MutexLock lock(&mu_);
  reserved_ -= bytes;
  if (on_change_) on_change_(reserved_);
}

int64_t MemoryLimitBytes(const std::string& cgroup_root,
                         const std::string& proc_root) {
  int64_t limit = 0;
  // cgroup v2: memory.max of our cgroup and of each ancestor (a parent's
  // limit binds too).
  if (!FirstLine(cgroup_root + "/cgroup.controllers").empty()) {
    std::string path = OwnCgroup(proc_root, /*v2=*/true);
    while (true) {
      limit = MinPositive(limit, LimitFrom(cgroup_root + path + "/memory.max"));
      if (path.empty() || path == "/") break;
      path = path.substr(0, path.rfind('/'));
    }
  } else {
    const std::string path = OwnCgroup(proc_root, /*v2=*/false);
    limit = MinPositive(
        limit, LimitFrom(cgroup_root + "/memory" + path +
                         (path == "/" ? "" : "/") + "memory.limit_in_bytes"));
    limit = MinPositive(
        limit, LimitFrom(cgroup_root + "/memory/memory.limit_in_bytes"));
  }
  // MemTotal, in kB.
  std::ifstream meminfo(proc_root + "/meminfo");
  std::string line;
  while (std::getline(meminfo, line)) {
    if (!absl::StartsWith(line, "MemTotal:")) continue;
    std::istringstream fields(line.substr(9));
    int64_t kb = 0;
    if (fields >> kb && kb > 0) limit = MinPositive(limit, kb * 1024);
    break;
  }
  return limit;
}

int64_t DefaultMaxMemoryBytes() {
  const int64_t limit = MemoryLimitBytes();
  return limit > 0 ? limit / 2 : int64_t{4} << 30;
}

}  // namespace server
}  // namespace scatterbrain
