// scatterbrain/server/shm_registry.h — the system shared-memory regions
// that KServe v2 / Triton clients register (the "system_shared_memory"
// extension): a named range [offset, offset + byte_size) of a POSIX
// shared-memory object (shm_open key), mapped once at registration, from
// which ModelInfer reads inputs and into which it writes outputs in place.
//
// Behaviour follows Triton's where the protocol leaves it open: a second
// region of the same name is ALREADY_EXISTS; unregistering a name that is
// not registered is OK (a no-op); the status of an unknown name is
// NOT_FOUND. Unlike Triton, a region that cannot be opened or does not fit
// its object is INVALID_ARGUMENT (the caller's mistake, not the server's),
// and every region is scoped by its owner (server/auth.h's Identity):
// another owner's region is exactly as invisible as one never registered,
// so names never leak between callers.
//
// Safety: Resolve() never hands out a pointer outside the mapping (offsets
// and sizes are checked with overflow-safe arithmetic), and the span it
// returns keeps the mapping alive, so an Unregister while an inference
// still reads or writes the region unmaps it only when that inference
// lets go. The object's descriptor stays open so that Resolve() can
// re-check its size: a client that shrinks the object after registering
// would make the server's next access fault (SIGBUS), so a region whose
// object no longer covers it is refused. The window between that check and
// the access remains (POSIX offers no way to pin another process's object
// size); clients are expected not to truncate registered regions, as with
// Triton. Core types only: no protobuf or gRPC.
#ifndef SCATTERBRAIN_SERVER_SHM_REGISTRY_H_
#define SCATTERBRAIN_SERVER_SHM_REGISTRY_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace scatterbrain {
namespace server {

struct ShmRegistryOptions {
  // Regions registered at once, all owners together (each holds one file
  // descriptor and one mapping).
  int max_regions = 1024;
  // Regions one owner may hold at once, so that one caller cannot use up
  // max_regions for everyone.
  int max_regions_per_owner = 128;
};

// INVALID_ARGUMENT naming the field for out-of-range values.
absl::Status ValidateShmRegistryOptions(const ShmRegistryOptions& options);

// What SystemSharedMemoryStatus reports of one region.
struct ShmRegionInfo {
  std::string name;
  std::string key;
  uint64_t offset = 0;
  uint64_t byte_size = 0;
};

// One registered region's mapping: unmapped (and its descriptor closed)
// when the last holder lets go.
class ShmMapping {
 public:
  ~ShmMapping();
  ShmMapping(const ShmMapping&) = delete;
  ShmMapping& operator=(const ShmMapping&) = delete;

  // The region's first byte and its size (byte_size at registration).
  char* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  friend class SystemShmRegistry;
  ShmMapping() = default;

  void* base_ = nullptr;     // what mmap returned (page aligned)
  uint64_t length_ = 0;      // bytes mapped from base_
  char* data_ = nullptr;     // base_ + (offset % page size)
  uint64_t size_ = 0;        // the region's byte_size
  uint64_t object_end_ = 0;  // offset + byte_size: the object must reach it
  int fd_ = -1;
};

// Bytes of a registered region an inference reads or writes.
struct ShmSpan {
  std::shared_ptr<const ShmMapping> keep_alive;  // hold while using `data`
  char* data = nullptr;
  uint64_t size = 0;
};

class SystemShmRegistry {
 public:
  explicit SystemShmRegistry(const ShmRegistryOptions& options = {});
  ~SystemShmRegistry();

  SystemShmRegistry(const SystemShmRegistry&) = delete;
  SystemShmRegistry& operator=(const SystemShmRegistry&) = delete;

  // Opens the object `key` (shm_open, read-write), checks that
  // [offset, offset + byte_size) lies within it and maps that range, as
  // region `name` of `owner`. Errors: INVALID_ARGUMENT (empty name or key,
  // byte_size 0, an object that cannot be opened, a range past its end:
  // the message names which), ALREADY_EXISTS (the owner has a region of
  // that name), RESOURCE_EXHAUSTED (max_regions, max_regions_per_owner),
  // INTERNAL (mmap failed).
  absl::Status Register(const std::string& name, const std::string& key,
                        uint64_t offset, uint64_t byte_size,
                        const std::string& owner);

  // Removes `owner`'s region `name`, or every region of `owner` when
  // `name` is "". A name not registered is OK (Triton's behaviour). The
  // mapping goes when no span of it is held any more.
  absl::Status Unregister(const std::string& name, const std::string& owner);

  // `owner`'s region `name`, or all of `owner`'s regions (sorted by name)
  // when `name` is "". NOT_FOUND for a name `owner` has not registered.
  absl::StatusOr<std::vector<ShmRegionInfo>> Status(
      const std::string& name, const std::string& owner) const;

  // The bytes [offset, offset + byte_size) of `owner`'s region `name`, for
  // the tensor `what` (e.g. "input 'Q'", which starts every error
  // message). INVALID_ARGUMENT when the region is not registered (for this
  // owner), when the range does not lie within it, or when its object has
  // shrunk below it since registration. byte_size 0 is a valid empty span.
  absl::StatusOr<ShmSpan> Resolve(const std::string& name, uint64_t offset,
                                  uint64_t byte_size, const std::string& owner,
                                  absl::string_view what) const;

  // Regions registered, all owners together.
  int region_count() const;
  const ShmRegistryOptions& options() const { return options_; }

 private:
  struct Entry {
    ShmRegionInfo info;
    std::shared_ptr<const ShmMapping> mapping;
  };
  // (owner, name): one flat namespace per owner.
  using Key = std::pair<std::string, std::string>;

  const ShmRegistryOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<Key, Entry> entries_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int> per_owner_ ABSL_GUARDED_BY(mu_);
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_SHM_REGISTRY_H_
