// tests/testutil/shm.h — a POSIX shared-memory object for a test, as a
// Triton client makes one (shm_open + ftruncate + mmap): a unique key, the
// bytes mapped in this process, unlinked and unmapped on destruction.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_SHM_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_SHM_H_

#include <cstdint>
#include <string>

namespace scatterbrain {
namespace testutil {

class ShmObject {
 public:
  // Creates "/sb_test_<pid>_<counter>" of `byte_size` bytes (zeros). When
  // that fails the constructor records a test failure (ADD_FAILURE) and
  // ok() is false.
  explicit ShmObject(uint64_t byte_size);
  ~ShmObject();
  ShmObject(const ShmObject&) = delete;
  ShmObject& operator=(const ShmObject&) = delete;

  bool ok() const { return data_ != nullptr; }
  const std::string& key() const { return key_; }
  char* data() const { return data_; }
  uint64_t size() const { return size_; }

  // ftruncate to `byte_size` (what a misbehaving client might do after
  // registering); false on failure. The local mapping is left as it was:
  // touch only the bytes still inside the object.
  bool Resize(uint64_t byte_size);

 private:
  std::string key_;
  char* data_ = nullptr;
  uint64_t size_ = 0;
  int fd_ = -1;
};

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_SHM_H_
