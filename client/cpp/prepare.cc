// scatterbrain/client/cpp/prepare.cc — see prepare.h.
#include "client/cpp/prepare.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <new>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "proto/convert/wire.h"

namespace scatterbrain {
namespace client {
namespace {

// Requests above this many elements per tensor are refused before any
// allocation (2^36 floats = 256 GiB, as the CLI's .npy reader).
constexpr int64_t kMaxElements = int64_t{1} << 36;

// Multiplies non-negative sizes, refusing overflow past kMaxElements.
bool CheckedProduct(std::initializer_list<int64_t> dims, int64_t* out) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0) return false;
    if (d != 0 && n > kMaxElements / d) return false;
    n *= d;
  }
  *out = n;
  return true;
}

}  // namespace

namespace internal {

absl::Status PrepareInto(const AttendInput& in, PreparedRequest* req) {
  const TensorShape& s = in.shape;
  for (const auto& [name, d] :
       {std::pair<const char*, int64_t>{"batch", s.batch},
        {"heads", s.heads},
        {"seq_q", s.seq_q},
        {"seq_k", s.seq_k},
        {"dim", s.dim},
        {"dim_v", s.dim_v}}) {
    if (d < 0 || d > std::numeric_limits<uint32_t>::max()) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape.", name, ": ", d, " is out of range"));
    }
  }
  DType dtype;
  if (!wire::DTypeFromProto(in.dtype, &dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: ", in.dtype, " is not float32|float16|bfloat16"));
  }
  DType unused;
  if (in.output_dtype != v1::DTYPE_UNSPECIFIED &&
      !wire::DTypeFromProto(in.output_dtype, &unused)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "output_dtype: ", in.output_dtype, " is not float32|float16|bfloat16"));
  }
  int64_t nq, nk, nv;
  if (!CheckedProduct({s.batch, s.heads, s.seq_q, s.dim}, &nq) ||
      !CheckedProduct({s.batch, s.heads, s.seq_k, s.dim}, &nk) ||
      !CheckedProduct({s.batch, s.heads, s.seq_k, s.dim_v}, &nv)) {
    return absl::InvalidArgumentError("shape: tensors too large");
  }
  for (const auto& [name, span, n] :
       {std::tuple<const char*, absl::Span<const float>, int64_t>{"q", in.q,
                                                                  nq},
        {"k", in.k, nk},
        {"v", in.v, nv}}) {
    if (static_cast<int64_t>(span.size()) != n) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": ", span.size(), " values, shape needs ", n));
    }
  }
  v1::RequestHeader& h = req->header;
  *h.mutable_settings() = in.settings;
  *h.mutable_shape() = wire::ShapeToProto(s);
  h.set_dtype(in.dtype);
  h.set_output_dtype(in.output_dtype);
  for (int32_t len : in.key_lengths) h.add_key_lengths(len);
  // The one conversion of the tensors: float32 -> wire bytes.
  for (const auto& [dst, span] :
       {std::pair<std::string*, absl::Span<const float>>{&req->q, in.q},
        {&req->k, in.k},
        {&req->v, in.v}}) {
    absl::Status s = EncodeTensor(dtype, span, dst);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status EncodeTensor(DType dtype, absl::Span<const float> values,
                          std::string* out) {
  try {
    out->resize(values.size() * DTypeBytes(dtype));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory encoding the tensors");
  }
  EncodeFromFloat(dtype, values.data(), static_cast<int64_t>(values.size()),
                  out->data());
  return absl::OkStatus();
}

TensorChunker::TensorChunker(std::vector<Tensor> tensors, int64_t chunk_bytes)
    : tensors_(std::move(tensors)),
      chunk_bytes_(std::max<int64_t>(1, chunk_bytes)) {}

bool TensorChunker::done() {
  while (tensor_ < tensors_.size() &&
         offset_ >= static_cast<int64_t>(tensors_[tensor_].bytes->size())) {
    ++tensor_;
    offset_ = 0;
  }
  return tensor_ == tensors_.size();
}

bool TensorChunker::Next(v1::TensorChunk* c) {
  if (done()) return false;
  const Tensor& t = tensors_[tensor_];
  const int64_t n = std::min<int64_t>(
      chunk_bytes_, static_cast<int64_t>(t.bytes->size()) - offset_);
  c->set_tensor(t.name);
  c->set_offset(static_cast<uint64_t>(offset_));
  c->set_data(t.bytes->data() + offset_, static_cast<size_t>(n));
  offset_ += n;
  return true;
}

absl::StatusOr<OutputFormat> ReadResponseHeader(const v1::ResponseHeader& h,
                                                AttendResult* r) {
  r->shape = wire::ShapeFromProto(h.shape());
  r->stats = wire::StatsFromProto(h.stats());
  OutputFormat f;
  if (!wire::DTypeFromProto(h.dtype(), &f.dtype)) {
    return absl::InternalError(absl::StrCat("server answered in unknown dtype ",
                                            static_cast<int>(h.dtype())));
  }
  if (!CheckedProduct(
          {r->shape.batch, r->shape.heads, r->shape.seq_q, r->shape.dim_v},
          &f.elements)) {
    return absl::InternalError("server sent an absurd output shape");
  }
  return f;
}

}  // namespace internal

absl::StatusOr<std::shared_ptr<const PreparedRequest>> Prepare(
    const AttendInput& in) {
  auto req = std::make_shared<PreparedRequest>();
  absl::Status s = internal::PrepareInto(in, req.get());
  if (!s.ok()) return s;
  return std::shared_ptr<const PreparedRequest>(std::move(req));
}

}  // namespace client
}  // namespace scatterbrain
