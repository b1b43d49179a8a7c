// scatterbrain/server/shm_registry.cc — see shm_registry.h.
#include "server/shm_registry.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace scatterbrain {
namespace server {
namespace {

// shm_open's names are one path component under /dev/shm: a leading '/'
// and no other. glibc refuses the rest too; checking here keeps a key like
// "/../x" from ever reaching the file system, whatever the libc.
absl::Status ValidateKey(const std::string& key) {
  if (key.empty()) {
    return absl::InvalidArgumentError("shared memory key is empty");
  }
  const absl::string_view rest =
      key[0] == '/' ? absl::string_view(key).substr(1) : key;
  if (rest.empty() || rest == "." || rest == ".." ||
      rest.find('/') != absl::string_view::npos || rest.size() > 255 ||
      rest.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared memory key '", key,
                     "' is not a POSIX shared memory name (\"/name\")"));
  }
  return absl::OkStatus();
}

// The object's size now, or -1 when fstat fails.
int64_t ObjectSize(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return -1;
  return static_cast<int64_t>(st.st_size);
}

}  // namespace

absl::Status ValidateShmRegistryOptions(const ShmRegistryOptions& options) {
  if (options.max_regions < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_shm_regions must be at least 1, got ", options.max_regions));
  }
  if (options.max_regions_per_owner < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_shm_regions_per_owner must be at least 1, got ",
                     options.max_regions_per_owner));
  }
  return absl::OkStatus();
}

ShmMapping::~ShmMapping() {
  if (base_ != nullptr) munmap(base_, length_);
  if (fd_ >= 0) close(fd_);
}

SystemShmRegistry::SystemShmRegistry(const ShmRegistryOptions& options)
    : options_(options) {}

SystemShmRegistry::~SystemShmRegistry() = default;

absl::Status SystemShmRegistry::Register(const std::string& name,
                                         const std::string& key,
                                         uint64_t offset, uint64_t byte_size,
                                         const std::string& owner) {
  const std::string region = absl::StrCat("shared memory region '", name, "'");
  if (name.empty()) {
    return absl::InvalidArgumentError("shared memory region name is empty");
  }
  if (absl::Status st = ValidateKey(key); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(region, ": ", st.message()));
  }
  if (byte_size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(region, ": byte_size must be positive"));
  }
  // Within int64 so that off_t and the size arithmetic below cannot wrap.
  constexpr uint64_t kMax =
      static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  if (offset > kMax || byte_size > kMax - offset) {
    return absl::InvalidArgumentError(absl::StrCat(region, ": offset ", offset,
                                                   " + byte_size ", byte_size,
                                                   " is out of range"));
  }
  // Refuse cheaply before touching the file system; checked again below,
  // under the lock, since another call may register meanwhile.
  {
    absl::MutexLock lock(&mu_);
    if (entries_.contains(Key(owner, name))) {
      return absl::AlreadyExistsError(
          absl::StrCat(region, " is already registered"));
    }
  }

  auto mapping = std::shared_ptr<ShmMapping>(new ShmMapping());
  mapping->fd_ = shm_open(key.c_str(), O_RDWR, 0);
  if (mapping->fd_ < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(region, ": cannot open shared memory key '", key,
                     "': ", std::strerror(errno)));
  }
  const int64_t object_size = ObjectSize(mapping->fd_);
  if (object_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        region, ": cannot stat key '", key, "': ", std::strerror(errno)));
  }
  if (offset + byte_size > static_cast<uint64_t>(object_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        region, ": offset ", offset, " + byte_size ", byte_size,
        " is past the end of key '", key, "' (", object_size, " bytes)"));
  }
  // mmap wants a page-aligned file offset: map from the page holding
  // `offset` and point data_ at the region's first byte inside it.
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t aligned = offset - offset % page;
  mapping->length_ = byte_size + (offset - aligned);
  void* base = mmap(nullptr, mapping->length_, PROT_READ | PROT_WRITE,
                    MAP_SHARED, mapping->fd_, static_cast<off_t>(aligned));
  if (base == MAP_FAILED) {
    return absl::InternalError(absl::StrCat(region, ": cannot map key '", key,
                                            "': ", std::strerror(errno)));
  }
  mapping->base_ = base;
  mapping->data_ = static_cast<char*>(base) + (offset - aligned);
  mapping->size_ = byte_size;
  mapping->object_end_ = offset + byte_size;

  std::shared_ptr<const ShmMapping> loser;  // unmapped outside the lock
  {
    absl::MutexLock lock(&mu_);
    const Key k(owner, name);
    if (entries_.contains(k)) {
      loser = std::move(mapping);
      return absl::AlreadyExistsError(
          absl::StrCat(region, " is already registered"));
    }
    if (static_cast<int>(entries_.size()) >= options_.max_regions) {
      loser = std::move(mapping);
      return absl::ResourceExhaustedError(
          absl::StrCat(region, ": the server holds max_shm_regions (",
                       options_.max_regions, ") regions already"));
    }
    int& count = per_owner_[owner];
    if (count >= options_.max_regions_per_owner) {
      loser = std::move(mapping);
      return absl::ResourceExhaustedError(absl::StrCat(
          region, ": this caller holds max_shm_regions_per_owner (",
          options_.max_regions_per_owner, ") regions already"));
    }
    ++count;
    entries_.emplace(k, Entry{ShmRegionInfo{name, key, offset, byte_size},
                              std::move(mapping)});
  }
  return absl::OkStatus();
}

absl::Status SystemShmRegistry::Unregister(const std::string& name,
                                           const std::string& owner) {
  // Released after the lock: the last reference unmaps.
  std::vector<std::shared_ptr<const ShmMapping>> released;
  absl::MutexLock lock(&mu_);
  auto drop = [&](decltype(entries_)::iterator it) {
    released.push_back(std::move(it->second.mapping));
    entries_.erase(it);
    auto c = per_owner_.find(owner);
    if (c != per_owner_.end() && --c->second <= 0) per_owner_.erase(c);
  };
  if (!name.empty()) {
    auto it = entries_.find(Key(owner, name));
    if (it != entries_.end()) drop(it);
    return absl::OkStatus();
  }
  for (auto it = entries_.begin(); it != entries_.end();) {
    auto next = std::next(it);
    if (it->first.first == owner) drop(it);
    it = next;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ShmRegionInfo>> SystemShmRegistry::Status(
    const std::string& name, const std::string& owner) const {
  std::vector<ShmRegionInfo> out;
  absl::MutexLock lock(&mu_);
  if (!name.empty()) {
    auto it = entries_.find(Key(owner, name));
    if (it == entries_.end()) {
      return absl::NotFoundError(absl::StrCat("system shared memory region '",
                                              name, "' is not registered"));
    }
    out.push_back(it->second.info);
    return out;
  }
  for (const auto& [k, e] : entries_) {
    if (k.first == owner) out.push_back(e.info);
  }
  std::sort(out.begin(), out.end(),
            [](const ShmRegionInfo& a, const ShmRegionInfo& b) {
              return a.name < b.name;
            });
  return out;
}

absl::StatusOr<ShmSpan> SystemShmRegistry::Resolve(
    const std::string& name, uint64_t offset, uint64_t byte_size,
    const std::string& owner, absl::string_view what) const {
  std::shared_ptr<const ShmMapping> mapping;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(Key(owner, name));
    if (it == entries_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": shared memory region '", name, "' is not registered"));
    }
    mapping = it->second.mapping;
  }
  // offset <= size first, so that size - offset cannot wrap.
  if (offset > mapping->size() || byte_size > mapping->size() - offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": shared memory region '", name, "': offset ", offset, " + ",
        byte_size, " bytes past the region's ", mapping->size()));
  }
  // The object may have been truncated since registration; touching pages
  // past its end would fault the server (see the header).
  const int64_t object_size = ObjectSize(mapping->fd_);
  if (object_size < 0 ||
      static_cast<uint64_t>(object_size) < mapping->object_end_) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": shared memory region '", name, "': its object has shrunk to ",
        object_size, " bytes since it was registered"));
  }
  ShmSpan span;
  span.data = mapping->data() + offset;
  span.size = byte_size;
  span.keep_alive = std::move(mapping);
  return span;
}

int SystemShmRegistry::region_count() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(entries_.size());
}

}  // namespace server
}  // namespace scatterbrain
