// scatterbrain/server/tensor_assembler.h — a request's tensors, received in
// chunks and converted to float32 as the bytes arrive (the one copy of the
// data out of the transport's messages), and the float32 buffers they land
// in. Transport-free: any front end feeds it (offset, bytes) pairs.
#ifndef SCATTERBRAIN_SERVER_TENSOR_ASSEMBLER_H_
#define SCATTERBRAIN_SERVER_TENSOR_ASSEMBLER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"
#include "kernels/tensor.h"

namespace scatterbrain {
namespace server {

// Where request buffers come from: the backend's AllocateHost (pinned host
// memory on CUDA, so the copy engine reads what the transport wrote). Empty:
// plain host memory.
using HostAllocator = std::function<absl::StatusOr<HostBuffer>(int64_t bytes)>;

// A tensor's elements in host memory: float32, or the wire dtype for a
// backend that converts on its device. Not zero-filled on allocation (it is
// about to be overwritten in full); the allocation fails softly.
struct TensorBuffer {
  HostBuffer buffer;
  int64_t size = 0;  // elements
  DType dtype = DType::kFloat32;
  // The elements as float32 (dtype must be kFloat32).
  float* data() const { return buffer.as<float>(); }
  void* raw() const { return buffer.data(); }
  explicit operator bool() const { return static_cast<bool>(buffer); }
  MemorySpace space() const { return buffer.space(); }
  // `n` elements of `dtype`; RESOURCE_EXHAUSTED when the memory is not
  // available.
  absl::Status Allocate(int64_t n, absl::string_view what,
                        const HostAllocator& allocator = nullptr,
                        DType dtype = DType::kFloat32);
  void Release() {
    buffer.Reset();
    size = 0;
  }
  // `n` float32 elements at `data`, owned elsewhere: `owner` is held until
  // the buffer is released (nothing is freed or copied).
  static TensorBuffer View(float* data, int64_t n,
                           std::shared_ptr<const void> owner) {
    TensorBuffer t;
    t.buffer = HostBuffer(
        data, n * static_cast<int64_t>(sizeof(float)), MemorySpace::kHost,
        [owner = std::move(owner)](void*) mutable { owner.reset(); });
    t.size = n;
    t.dtype = DType::kFloat32;
    return t;
  }
};

// Collects one tensor from in-order chunks, converting to float32 as the
// bytes arrive (or, for a backend that converts on its device, keeping the
// wire bytes as they are). Chunks may split an element: up to 3 bytes are
// carried to the next chunk.
class TensorAssembler {
 public:
  // `name`: "q", "k" or "v", used in messages. The buffer comes from
  // `allocator` (plain host memory when empty) when the first bytes arrive
  // (a failure then is Append's RESOURCE_EXHAUSTED); it holds float32, or
  // the wire `dtype` itself when `keep_wire_dtype`.
  absl::Status Init(absl::string_view name, DType dtype, int64_t elements,
                    const HostAllocator& allocator = nullptr,
                    bool keep_wire_dtype = false);
  // INVALID_ARGUMENT when `offset` is not the bytes received so far
  // ("chunk.offset: ...") or the data runs past the tensor's end
  // ("chunk.data: ...").
  absl::Status Append(uint64_t offset, absl::string_view data);
  bool complete() const { return received_ == total_bytes_; }
  int64_t received_bytes() const { return received_; }
  int64_t total_bytes() const { return total_bytes_; }
  const std::string& name() const { return name_; }
  TensorBuffer Take() { return std::move(buffer_); }

 private:
  absl::Status AllocateBuffer();

  std::string name_;
  DType dtype_ = DType::kFloat32;
  int elem_bytes_ = 4;
  bool keep_wire_dtype_ = false;
  int64_t elements_ = 0;
  int64_t total_bytes_ = 0;
  int64_t received_ = 0;
  HostAllocator allocator_;
  TensorBuffer buffer_;
  char carry_[4] = {0, 0, 0, 0};
  int carry_len_ = 0;
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_TENSOR_ASSEMBLER_H_
