// scatterbrain/server/convert.cc — see convert.h.
#include "server/convert.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <new>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/validate.h"

namespace scatterbrain {
namespace server {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the wire format is little-endian; add byte swaps for this host");

constexpr size_t kMaxRequestIdBytes = 128;

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}


// Optional uint32 settings become int; values past INT_MAX are clamped so
// that ValidateParams reports them as out of range instead of wrapping.
int ClampToInt(uint32_t v) {
  return static_cast<int>(std::min<uint32_t>(v, INT_MAX));
}

// ValidateParams names the core's fields ("dim", "num_features",
// "key_lengths[3]"); the client knows the proto's. Rewrites the prefix.
absl::Status MapValidateError(const absl::Status& st) {
  const absl::string_view msg = st.message();
  const size_t colon = msg.find(": ");
  if (colon == absl::string_view::npos) {
    return absl::Status(st.code(), absl::StrCat("header: ", msg));
  }
  const absl::string_view field = msg.substr(0, colon);
  const absl::string_view rest = msg.substr(colon + 2);
  static const char* const kShape[] = {"batch", "heads", "seq_q",
                                       "seq_k", "dim",   "dim_v"};
  static const char* const kSettings[] = {
      "num_features",      "bucket_size",
      "num_hashes",        "hash_projections",
      "kmeans_iterations", "window",
      "calibration_rows",  "scale"};
  for (const char* f : kShape) {
    if (field == f) {
      return absl::Status(st.code(),
                          absl::StrCat("header.shape.", field, ": ", rest));
    }
  }
  for (const char* f : kSettings) {
    if (field == f) {
      return absl::Status(st.code(),
                          absl::StrCat("header.settings.", field, ": ", rest));
    }
  }
  if (absl::StartsWith(field, "key_lengths")) {  // key_lengths[b]
    return absl::Status(st.code(), absl::StrCat("header.", field, ": ", rest));
  }
  if (field == "q" || field == "k" || field == "out") {
    return absl::Status(st.code(),
                        absl::StrCat("header.shape: ", field, " ", rest));
  }
  return absl::Status(st.code(), absl::StrCat("header: ", msg));
}

std::string EnumValueName(const google::protobuf::EnumDescriptor* d,
                          int value) {
  const google::protobuf::EnumValueDescriptor* v = d->FindValueByNumber(value);
  return v != nullptr ? v->name() : absl::StrCat(value);
}

}  // namespace

// --- dtypes
// -------------------------------------------------------------------

int DTypeBytes(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32:
      return 4;
    case v1::DTYPE_FLOAT16:
    case v1::DTYPE_BFLOAT16:
      return 2;
    default:
      return 0;
  }
}

const char* DTypeName(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32:
      return "float32";
    case v1::DTYPE_FLOAT16:
      return "float16";
    case v1::DTYPE_BFLOAT16:
      return "bfloat16";
    default:
      return "unknown";
  }
}


void DecodeToFloat(v1::DType dtype, const char* src, int64_t n, float* dst) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case v1::DTYPE_FLOAT16: {
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = HalfToFloat(h);
      }
      return;
    }
    case v1::DTYPE_BFLOAT16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        dst[i] = BitsFloat(static_cast<uint32_t>(b) << 16);
      }
      return;
    default:
      return;  // callers validated the dtype
  }
}

void EncodeFromFloat(v1::DType dtype, const float* src, int64_t n, char* dst) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case v1::DTYPE_FLOAT16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToHalf(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case v1::DTYPE_BFLOAT16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t b = FloatToBFloat16(src[i]);
        std::memcpy(dst + 2 * i, &b, 2);
      }
      return;
    default:
      return;
  }
}

absl::Status FloatBuffer::Allocate(int64_t n, absl::string_view what) {
  Release();
  if (n < 0) return absl::InternalError(absl::StrCat(what, ": negative size"));
  // Sized from client input: a failed allocation is the client's problem
  // (RESOURCE_EXHAUSTED), never an abort.
  data.reset(
      new (std::nothrow) float[static_cast<size_t>(std::max<int64_t>(n, 1))]);
  if (data == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        what, ": cannot allocate ", n * 4, " bytes on the server right now"));
  }
  size = n;
  return absl::OkStatus();
}

absl::Status TensorAssembler::Init(absl::string_view name, v1::DType dtype,
                                   int64_t elements) {
  name_ = std::string(name);
  dtype_ = dtype;
  elem_bytes_ = DTypeBytes(dtype);
  total_bytes_ = elements * elem_bytes_;
  received_ = 0;
  carry_len_ = 0;
  return buffer_.Allocate(elements, name_);
}

absl::Status TensorAssembler::Append(uint64_t offset, absl::string_view data) {
  if (offset != static_cast<uint64_t>(received_)) {
    return Invalid(
        "chunk.offset",
        absl::StrCat(offset, " for tensor ", name_, ", expected ", received_,
                     " (a tensor's chunks arrive in order, each at "
                     "the bytes of it already sent)"));
  }
  if (data.size() > static_cast<uint64_t>(total_bytes_ - received_)) {
    return Invalid(
        "chunk.data",
        absl::StrCat(data.size(), " bytes at offset ", offset,
                     " run past the end of tensor ", name_, " (", total_bytes_,
                     " bytes for the header's shape and dtype)"));
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
    DecodeToFloat(dtype_, carry_, 1, buffer_.data.get() + index);
    ++index;
    carry_len_ = 0;
  }
  const int64_t whole = left / elem_bytes_;
  DecodeToFloat(dtype_, p, whole, buffer_.data.get() + index);
  p += whole * elem_bytes_;
  left -= whole * elem_bytes_;
  std::memcpy(carry_, p, static_cast<size_t>(left));
  carry_len_ = static_cast<int>(left);
  return absl::OkStatus();
}

// --- header
// -------------------------------------------------------------------

std::string MethodLabel(v1::Method method) {
  switch (method) {
    case v1::METHOD_EXACT:
      return MethodName(Method::kExact);
    case v1::METHOD_PERFORMER:
      return MethodName(Method::kPerformer);
    case v1::METHOD_LSH:
      return MethodName(Method::kLsh);
    case v1::METHOD_LOCAL:
      return MethodName(Method::kLocal);
    case v1::METHOD_SCATTERBRAIN:
      return MethodName(Method::kScatterbrain);
    default:
      return "unknown";
  }
}

absl::StatusOr<RequestSpec> SpecFromHeader(const v1::RequestHeader& header,
                                           const RequestLimits& limits,
                                           bool require_id) {
  RequestSpec s;
  const std::string& id = header.request_id();
  if ((require_id && id.empty()) || id.size() > kMaxRequestIdBytes) {
    return Invalid("header.request_id",
                   absl::StrCat("must be 1 to ", kMaxRequestIdBytes,
                                " bytes, got ", id.size()));
  }
  s.request_id = id;

  const v1::MethodSettings& st = header.settings();
  AttentionParams& p = s.params;
  switch (st.method()) {
    case v1::METHOD_EXACT:
      p.method = Method::kExact;
      break;
    case v1::METHOD_PERFORMER:
      p.method = Method::kPerformer;
      break;
    case v1::METHOD_LSH:
      p.method = Method::kLsh;
      break;
    case v1::METHOD_LOCAL:
      p.method = Method::kLocal;
      break;
    case v1::METHOD_SCATTERBRAIN:
      p.method = Method::kScatterbrain;
      break;
    default:
      return Invalid(
          "header.settings.method",
          absl::StrCat("must be METHOD_EXACT, METHOD_PERFORMER, METHOD_LSH, "
                       "METHOD_LOCAL or METHOD_SCATTERBRAIN, got ",
                       EnumValueName(v1::Method_descriptor(), st.method())));
  }
  if (DTypeBytes(header.dtype()) == 0) {
    return Invalid(
        "header.dtype",
        absl::StrCat("must be DTYPE_FLOAT32, DTYPE_FLOAT16 or "
                     "DTYPE_BFLOAT16, got ",
                     EnumValueName(v1::DType_descriptor(), header.dtype())));
  }
  s.dtype = header.dtype();
  s.output_dtype = header.output_dtype() == v1::DTYPE_UNSPECIFIED
                       ? header.dtype()
                       : header.output_dtype();
  if (DTypeBytes(s.output_dtype) == 0) {
    return Invalid("header.output_dtype",
                   absl::StrCat("must be unset or DTYPE_FLOAT32, DTYPE_FLOAT16 "
                                "or DTYPE_BFLOAT16, got ",
                                EnumValueName(v1::DType_descriptor(),
                                              header.output_dtype())));
  }
  switch (st.sparse()) {
    case v1::SPARSE_SUPPORT_UNSPECIFIED:
    case v1::SPARSE_SUPPORT_LSH:
      p.sparse = SparseSupport::kLsh;
      break;
    case v1::SPARSE_SUPPORT_LOCAL:
      p.sparse = SparseSupport::kLocal;
      break;
    case v1::SPARSE_SUPPORT_BOTH:
      p.sparse = SparseSupport::kBoth;
      break;
    default:
      return Invalid("header.settings.sparse",
                     absl::StrCat("unknown value ", st.sparse()));
  }
  switch (st.estimator()) {
    case v1::ESTIMATOR_UNSPECIFIED:
    case v1::ESTIMATOR_CALIBRATED:
      p.estimator = Estimator::kCalibrated;
      break;
    case v1::ESTIMATOR_UNBIASED:
      p.estimator = Estimator::kUnbiased;
      break;
    default:
      return Invalid("header.settings.estimator",
                     absl::StrCat("unknown value ", st.estimator()));
  }
  switch (st.lsh_hash()) {
    case v1::LSH_HASH_UNSPECIFIED:
    case v1::LSH_HASH_KMEANS:
      p.lsh_hash = LshHash::kKMeans;
      break;
    case v1::LSH_HASH_CROSSPOLYTOPE:
      p.lsh_hash = LshHash::kCrossPolytope;
      break;
    default:
      return Invalid("header.settings.lsh_hash",
                     absl::StrCat("unknown value ", st.lsh_hash()));
  }
  switch (st.lsh_transform()) {
    case v1::LSH_TRANSFORM_UNSPECIFIED:
    case v1::LSH_TRANSFORM_NONE:
      p.lsh_transform = LshTransform::kNone;
      break;
    case v1::LSH_TRANSFORM_SMYRF:
      p.lsh_transform = LshTransform::kSmyrf;
      break;
    default:
      return Invalid("header.settings.lsh_transform",
                     absl::StrCat("unknown value ", st.lsh_transform()));
  }
  // Unset optional settings keep the core's (= the CLI's) defaults.
  if (st.has_num_features()) p.num_features = ClampToInt(st.num_features());
  if (st.has_bucket_size()) p.bucket_size = ClampToInt(st.bucket_size());
  if (st.has_num_hashes()) p.num_hashes = ClampToInt(st.num_hashes());
  if (st.has_hash_projections())
    p.hash_projections = ClampToInt(st.hash_projections());
  if (st.has_window()) p.window = ClampToInt(st.window());
  if (st.has_calibration_rows())
    p.calibration_rows = ClampToInt(st.calibration_rows());
  if (st.has_kmeans_iterations())
    p.kmeans_iterations = ClampToInt(st.kmeans_iterations());
  p.causal = st.causal();
  p.scale = st.scale();
  p.seed = st.seed();
  p.num_threads = 0;

  const v1::Shape& sh = header.shape();
  s.shape = sh;
  p.batch = sh.batch();
  p.heads = sh.heads();
  p.seq_q = sh.seq_q();
  p.seq_k = sh.seq_k();
  p.dim = sh.dim();
  p.dim_v = sh.dim_v();
  if (header.key_lengths_size() > 0) {
    if (header.key_lengths_size() != p.batch) {
      return Invalid("header.key_lengths",
                     absl::StrCat("has ", header.key_lengths_size(),
                                  " entries, expected one per batch entry (",
                                  p.batch, ") or none"));
    }
    s.key_lengths.assign(header.key_lengths().begin(),
                         header.key_lengths().end());
  }

  // Shape and settings: the core's own checks, on stand-in tensor pointers
  // (values are checked when the data is there, by the backend).
  {
    AttentionParams check = p;
    static const float kStandIn = 0.0f;
    check.q = check.k = check.v = &kStandIn;
    check.out = const_cast<float*>(&kStandIn);
    SetContiguousStrides(check);
    check.key_lengths = s.key_lengths.empty() ? nullptr : s.key_lengths.data();
    const absl::Status st_valid = ValidateParams(check, /*check_values=*/false);
    if (!st_valid.ok()) return MapValidateError(st_valid);
  }
  SetContiguousStrides(p);

  // Well-formed; now the server's limits.
  if (p.seq_q > limits.max_seq || p.seq_k > limits.max_seq) {
    const bool q_over = p.seq_q > limits.max_seq;
    return absl::ResourceExhaustedError(absl::StrCat(
        "header.shape.", q_over ? "seq_q" : "seq_k", ": ",
        q_over ? p.seq_q : p.seq_k, " is over the server's limit of ",
        limits.max_seq, " (max_seq)"));
  }
  const int64_t bh = p.batch * p.heads;
  s.q_elements = bh * p.seq_q * p.dim;
  s.k_elements = bh * p.seq_k * p.dim;
  s.v_elements = bh * p.seq_k * p.dim_v;
  s.out_elements = bh * p.seq_q * p.dim_v;
  const int in_bytes = DTypeBytes(s.dtype);
  s.q_bytes = s.q_elements * in_bytes;
  s.k_bytes = s.k_elements * in_bytes;
  s.v_bytes = s.v_elements * in_bytes;
  s.out_bytes = s.out_elements * DTypeBytes(s.output_dtype);
  const int64_t total = s.q_bytes + s.k_bytes + s.v_bytes;
  if (total > limits.max_request_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "header.shape: q, k and v take ", total,
        " bytes, over the server's limit of ", limits.max_request_bytes,
        " bytes per request (max_request_bytes)"));
  }
  if (s.out_bytes > limits.max_request_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "header.shape: the output takes ", s.out_bytes,
        " bytes, over the server's limit of ", limits.max_request_bytes,
        " bytes per request (max_request_bytes)"));
  }
  s.tokens = bh * (p.seq_q + p.seq_k);
  s.method_label = MethodName(p.method);
  // Everything two requests must agree on to share one computation. Sequence
  // lengths, batch, heads and key lengths are per request.
  s.batch_key = absl::StrCat(
      MethodName(p.method), "|d=", p.dim, "|dv=", p.dim_v, "|dt=", s.dtype,
      "|odt=", s.output_dtype, "|c=", p.causal, "|s=", FloatBits(p.scale),
      "|seed=", p.seed, "|m=", p.num_features, "|b=", p.bucket_size,
      "|h=", p.num_hashes, "|hp=", p.hash_projections, "|w=", p.window,
      "|cr=", p.calibration_rows, "|km=", p.kmeans_iterations,
      "|sp=", static_cast<int>(p.sparse), "|e=", static_cast<int>(p.estimator),
      "|lh=", static_cast<int>(p.lsh_hash),
      "|lt=", static_cast<int>(p.lsh_transform));
  return s;
}

// --- status
// -------------------------------------------------------------------

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl and gRPC share the canonical code numbers (0..16).
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

std::string CodeName(absl::StatusCode code) {
  return absl::StatusCodeToString(code);
}

// --- stats
// --------------------------------------------------------------------

void StatsToProto(const RequestStats& stats, v1::Stats* out) {
  out->set_queue_seconds(stats.queue_seconds);
  out->set_compute_seconds(stats.compute_seconds);
  out->set_batch_size(static_cast<uint32_t>(std::max(stats.batch_size, 0)));
  out->set_dense_score_bytes(
      static_cast<uint64_t>(std::max<int64_t>(stats.dense_score_bytes, 0)));
  out->set_workspace_bytes(
      static_cast<uint64_t>(std::max<int64_t>(stats.workspace_bytes, 0)));
  out->set_memory_saved_bytes(
      static_cast<uint64_t>(std::max<int64_t>(stats.memory_saved_bytes, 0)));
  if (stats.has_error_estimate) {
    out->set_estimated_relative_error(stats.estimated_relative_error);
  }
  out->set_denominator_guards(
      static_cast<uint64_t>(std::max<int64_t>(stats.denominator_guards, 0)));
  out->set_fallbacks(
      static_cast<uint64_t>(std::max<int64_t>(stats.fallbacks, 0)));
  out->set_backend(stats.backend);
}

void FillResponseHeader(const RequestSpec& spec, const RequestStats& stats,
                        v1::ResponseHeader* out) {
  *out->mutable_shape() = spec.shape;
  out->set_dtype(spec.output_dtype);
  StatsToProto(stats, out->mutable_stats());
}

}  // namespace server
}  // namespace scatterbrain
