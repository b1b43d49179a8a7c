// scatterbrain/kernels/tensor.h — how a backend is handed tensors and host
// memory: references that carry their element type and memory space (so a
// device backend uploads the wire dtype and converts on the device), and
// host buffers allocated by the backend (pinned on CUDA, so received bytes
// land where the copy engine reads them without a staging copy).
#ifndef SCATTERBRAIN_KERNELS_TENSOR_H_
#define SCATTERBRAIN_KERNELS_TENSOR_H_

#include <cstdint>
#include <functional>
#include <utility>

#include "common/dtype.h"

namespace scatterbrain {

enum class MemorySpace {
  kHost,        // pageable host memory
  kPinnedHost,  // page-locked host memory (cudaHostAlloc)
  kDevice,      // memory of the backend's device
};
const char* MemorySpaceName(MemorySpace space);

// A tensor's bytes, read-only: contiguous [batch, heads, seq, dim] in
// `dtype`, in `space`.
struct TensorRef {
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
  MemorySpace space = MemorySpace::kHost;
};

// A tensor the backend writes.
struct MutableTensorRef {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  MemorySpace space = MemorySpace::kHost;
};

// Host memory owned by whoever holds it; freed by the allocator that made
// it (plain delete[] on the CPU backend, cudaFreeHost on CUDA).
class HostBuffer {
 public:
  HostBuffer() = default;
  HostBuffer(void* data, int64_t bytes, MemorySpace space,
             std::function<void(void*)> free)
      : data_(data), bytes_(bytes), space_(space), free_(std::move(free)) {}
  ~HostBuffer() { Reset(); }
  HostBuffer(HostBuffer&& o) noexcept { *this = std::move(o); }
  HostBuffer& operator=(HostBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      data_ = std::exchange(o.data_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
      space_ = o.space_;
      free_ = std::move(o.free_);
    }
    return *this;
  }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  int64_t bytes() const { return bytes_; }
  MemorySpace space() const { return space_; }
  explicit operator bool() const { return data_ != nullptr; }
  void Reset() {
    if (data_ != nullptr && free_) free_(data_);
    data_ = nullptr;
    bytes_ = 0;
  }

 private:
  void* data_ = nullptr;
  int64_t bytes_ = 0;
  MemorySpace space_ = MemorySpace::kHost;
  std::function<void(void*)> free_;
};

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_TENSOR_H_
