// tests/testutil/shm.cc — see shm.h.
#include "tests/testutil/shm.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "gtest/gtest.h"

namespace scatterbrain {
namespace testutil {

ShmObject::ShmObject(uint64_t byte_size) : size_(byte_size) {
  static std::atomic<int> counter{0};
  key_ = "/sb_test_" + std::to_string(getpid()) + "_" +
         std::to_string(counter.fetch_add(1));
  fd_ = shm_open(key_.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd_ < 0) {
    ADD_FAILURE() << "shm_open " << key_ << ": " << std::strerror(errno);
    return;
  }
  if (ftruncate(fd_, static_cast<off_t>(byte_size)) != 0) {
    ADD_FAILURE() << "ftruncate " << key_ << ": " << std::strerror(errno);
    return;
  }
  void* p =
      mmap(nullptr, byte_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) {
    ADD_FAILURE() << "mmap " << key_ << ": " << std::strerror(errno);
    return;
  }
  data_ = static_cast<char*>(p);
}

ShmObject::~ShmObject() {
  if (data_ != nullptr) munmap(data_, size_);
  if (fd_ >= 0) {
    close(fd_);
    shm_unlink(key_.c_str());
  }
}

bool ShmObject::Resize(uint64_t byte_size) {
  return fd_ >= 0 && ftruncate(fd_, static_cast<off_t>(byte_size)) == 0;
}

}  // namespace testutil
}  // namespace scatterbrain
