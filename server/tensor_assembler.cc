// scatterbrain/server/tensor_assembler.cc — see tensor_assembler.h.
#include "server/tensor_assembler.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"

namespace scatterbrain {
namespace server {

absl::Status TensorBuffer::Allocate(int64_t n, absl::string_view what,
                                    const HostAllocator& allocator,
                                    DType element_dtype) {
  Release();
  if (n < 0) return absl::InternalError(absl::StrCat(what, ": negative size"));
  // Sized from client input: a failed allocation is the client's problem
  // (RESOURCE_EXHAUSTED), never an abort.
  const int64_t bytes = std::max<int64_t>(n, 1) * DTypeBytes(element_dtype);
  if (allocator) {
    absl::StatusOr<HostBuffer> b = allocator(bytes);
    if (b.ok()) buffer = *std::move(b);
  } else {
    char* p = new (std::nothrow) char[static_cast<size_t>(bytes)];
    if (p != nullptr) {
      buffer = HostBuffer(p, bytes, MemorySpace::kHost,
                          [](void* d) { delete[] static_cast<char*>(d); });
    }
  }
  if (!buffer) {
    return absl::ResourceExhaustedError(absl::StrCat(
        what, ": cannot allocate ", bytes, " bytes on the server right now"));
  }
  size = n;
  dtype = element_dtype;
  return absl::OkStatus();
}

absl::Status TensorAssembler::Init(absl::string_view name, DType dtype,
                                   int64_t elements,
                                   const HostAllocator& allocator,
                                   bool keep_wire_dtype) {
  name_ = std::string(name);
  dtype_ = dtype;
  elem_bytes_ = DTypeBytes(dtype);
  elements_ = elements;
  total_bytes_ = elements * elem_bytes_;
  received_ = 0;
  carry_len_ = 0;
  keep_wire_dtype_ = keep_wire_dtype && dtype != DType::kFloat32;
  allocator_ = allocator;
  buffer_.Release();
  // The buffer is allocated when the first bytes arrive: a header alone
  // (or a stalled upload's later tensors) commits no memory.
  if (total_bytes_ == 0) return AllocateBuffer();
  return absl::OkStatus();
}

absl::Status TensorAssembler::AllocateBuffer() {
  return buffer_.Allocate(elements_, name_, allocator_,
                          keep_wire_dtype_ ? dtype_ : DType::kFloat32);
}

absl::Status TensorAssembler::Append(uint64_t offset, absl::string_view data) {
  if (offset != static_cast<uint64_t>(received_)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk.offset: ", offset, " for tensor ", name_, ", expected ",
        received_,
        " (a tensor's chunks arrive in order, each at the bytes of it "
        "already sent)"));
  }
  if (data.size() > static_cast<uint64_t>(total_bytes_ - received_)) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk.data: ", data.size(), " bytes at offset ", offset,
                     " run past the end of tensor ", name_, " (", total_bytes_,
                     " bytes for the header's shape and dtype)"));
  }
  if (data.empty()) return absl::OkStatus();
  if (!buffer_) {
    absl::Status st = AllocateBuffer();
    if (!st.ok()) return st;
  }
  if (keep_wire_dtype_) {  // the bytes as they came, by byte offset
    std::memcpy(static_cast<char*>(buffer_.raw()) + received_, data.data(),
                data.size());
    received_ += static_cast<int64_t>(data.size());
    return absl::OkStatus();
  }
  const char* p = data.data();
  int64_t left = static_cast<int64_t>(data.size());
  int64_t index = received_ / elem_bytes_;  // element the next byte belongs to
  received_ += left;
  if (carry_len_ > 0) {
    const int64_t take = std::min<int64_t>(elem_bytes_ - carry_len_, left);
    std::memcpy(carry_ + carry_len_, p, static_cast<size_t>(take));
    carry_len_ += static_cast<int>(take);
    p += take;
    left -= take;
    if (carry_len_ < elem_bytes_) return absl::OkStatus();
    DecodeToFloat(dtype_, carry_, 1, buffer_.data() + index);
    ++index;
    carry_len_ = 0;
  }
  const int64_t whole = left / elem_bytes_;
  DecodeToFloat(dtype_, p, whole, buffer_.data() + index);
  p += whole * elem_bytes_;
  left -= whole * elem_bytes_;
  std::memcpy(carry_, p, static_cast<size_t>(left));
  carry_len_ = static_cast<int>(left);
  return absl::OkStatus();
}

}  // namespace server
}  // namespace scatterbrain
