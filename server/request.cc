// scatterbrain/server/request.cc — see request.h.
#include "server/request.h"

#include <algorithm>
#include <utility>

#include "absl/base/casts.h"
#include "absl/strings/str_cat.h"
#include "common/float16.h"
#include "common/status_macros.h"
#include "kernels/cost.h"
#include "kernels/validate.h"

namespace scatterbrain {
namespace server {

namespace {

// The settings two calls must share to run as one batch: head dims, method
// and every setting (not batch, heads or lengths).
std::string SettingsKey(const AttentionParams& p) {
  return absl::StrCat(
      MethodName(p.method), "|d=", p.dim, "|dv=", p.dim_v, "|c=", p.causal,
      "|s=", FloatBits(p.scale), "|seed=", p.seed, "|m=", p.num_features,
      "|b=", p.bucket_size, "|h=", p.num_hashes, "|hp=", p.hash_projections,
      "|w=", p.window, "|cr=", p.calibration_rows, "|km=", p.kmeans_iterations,
      "|sp=", static_cast<int>(p.sparse), "|e=", static_cast<int>(p.estimator),
      "|lh=", static_cast<int>(p.lsh_hash),
      "|lt=", static_cast<int>(p.lsh_transform),
      "|pr=", static_cast<int>(p.precision), "|g=", p.global_keys,
      "|te=", absl::bit_cast<uint64_t>(p.target_error));
}

// RESOURCE_EXHAUSTED when `flops` is over the server's max_request_flops.
absl::Status CheckFlops(const AttentionParams& p, int64_t flops,
                        const RequestLimits& limits) {
  const int64_t max_flops = limits.max_request_flops < 0
                                ? DefaultMaxRequestFlops("cpu")
                                : limits.max_request_flops;
  if (max_flops > 0 && flops > max_flops) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "shape: ", MethodName(p.method),
        " attention of this shape takes an "
        "estimated ",
        flops,
        " floating-point operations, over "
        "the server's limit of ",
        max_flops,
        " per request (max_request_flops); send fewer or shorter sequences "
        "or use an approximate method"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RequestSpec> MakeRequestSpec(std::string request_id,
                                            const AttentionParams& params,
                                            std::vector<int32_t> key_lengths,
                                            DType dtype, DType output_dtype,
                                            const RequestLimits& limits) {
  RequestSpec s;
  s.request_id = std::move(request_id);
  s.params = params;
  s.key_lengths = std::move(key_lengths);
  s.dtype = dtype;
  s.output_dtype = output_dtype;
  AttentionParams& p = s.params;
  p.q = p.k = p.v = nullptr;
  p.out = nullptr;
  p.key_lengths = nullptr;

  if (!s.key_lengths.empty() &&
      static_cast<int64_t>(s.key_lengths.size()) != p.batch) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key_lengths: has ", s.key_lengths.size(),
        " entries, expected one per batch entry (", p.batch, ") or none"));
  }
  // Shape and settings: the core's own checks (values are checked when the
  // data is there, by the backend).
  {
    AttentionParams check = p;
    check.key_lengths = s.key_lengths.empty() ? nullptr : s.key_lengths.data();
    SB_RETURN_IF_ERROR(ValidateShapeAndSettings(check));
  }
  SetContiguousStrides(p);

  // Well-formed; now the server's limits.
  if (p.seq_q > limits.max_seq || p.seq_k > limits.max_seq) {
    const bool q_over = p.seq_q > limits.max_seq;
    return absl::ResourceExhaustedError(absl::StrCat(
        q_over ? "seq_q" : "seq_k", ": ", q_over ? p.seq_q : p.seq_k,
        " is over the server's limit of ", limits.max_seq, " (max_seq)"));
  }
  const AttentionShape shape = ShapeOf(p);
  s.q_elements = shape.q_elements();
  s.k_elements = shape.k_elements();
  s.v_elements = shape.v_elements();
  s.out_elements = shape.out_elements();
  const int in_bytes = DTypeBytes(s.dtype);
  s.q_bytes = s.q_elements * in_bytes;
  s.k_bytes = s.k_elements * in_bytes;
  s.v_bytes = s.v_elements * in_bytes;
  s.out_bytes = s.out_elements * DTypeBytes(s.output_dtype);
  const int64_t total = s.q_bytes + s.k_bytes + s.v_bytes;
  if (total > limits.max_request_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "shape: q, k and v take ", total, " bytes, over the server's limit of ",
        limits.max_request_bytes, " bytes per request (max_request_bytes)"));
  }
  if (s.out_bytes > limits.max_request_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "shape: the output takes ", s.out_bytes,
        " bytes, over the server's limit of ", limits.max_request_bytes,
        " bytes per request (max_request_bytes)"));
  }
  // Compute admission: refused before a byte of tensor data is taken.
  s.estimated_flops = EstimateFlops(p);
  SB_RETURN_IF_ERROR(CheckFlops(p, s.estimated_flops, limits));
  s.tokens = p.batch * p.heads * (p.seq_q + p.seq_k);
  s.method_label = MethodName(p.method);
  // Everything two requests must agree on to share one computation. Sequence
  // lengths, batch, heads and key lengths are per request.
  s.batch_key = absl::StrCat(SettingsKey(p), "|dt=", DTypeName(s.dtype),
                             "|odt=", DTypeName(s.output_dtype));
  return s;
}

absl::StatusOr<RequestSpec> MakeSessionRequestSpec(
    std::string request_id, std::string session_id,
    const AttentionParams& session, int64_t seq_q, bool append, bool see_all,
    DType dtype, DType output_dtype, int64_t estimated_flops,
    const RequestLimits& limits) {
  RequestSpec s;
  s.request_id = std::move(request_id);
  s.session_id = std::move(session_id);
  s.session_append = append;
  s.session_see_all = see_all;
  s.dtype = dtype;
  s.output_dtype = output_dtype;
  AttentionParams& p = s.params;
  p = session;
  p.q = p.k = p.v = nullptr;
  p.out = nullptr;
  p.key_lengths = nullptr;
  p.cancel = nullptr;
  p.seq_q = seq_q;
  p.seq_k = 0;
  p.causal = !see_all;
  if (seq_q < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "seq_q: must be >= 1 (the request's query rows), got ", seq_q));
  }
  if (seq_q > limits.max_seq) {
    return absl::ResourceExhaustedError(
        absl::StrCat("seq_q: ", seq_q, " is over the server's limit of ",
                     limits.max_seq, " (max_seq)"));
  }
  SetContiguousStrides(p);
  const int64_t rows = p.batch * p.heads * seq_q;
  s.q_elements = rows * p.dim;
  s.k_elements = append ? rows * p.dim : 0;
  s.v_elements = append ? rows * p.dim_v : 0;
  s.out_elements = rows * p.dim_v;
  const int in_bytes = DTypeBytes(dtype);
  s.q_bytes = s.q_elements * in_bytes;
  s.k_bytes = s.k_elements * in_bytes;
  s.v_bytes = s.v_elements * in_bytes;
  s.out_bytes = s.out_elements * DTypeBytes(output_dtype);
  const int64_t total = s.q_bytes + s.k_bytes + s.v_bytes;
  if (std::max(total, s.out_bytes) > limits.max_request_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "shape: the request's tensors take ", std::max(total, s.out_bytes),
        " bytes, over the server's limit of ", limits.max_request_bytes,
        " bytes per request (max_request_bytes)"));
  }
  s.estimated_flops = estimated_flops;
  SB_RETURN_IF_ERROR(CheckFlops(p, s.estimated_flops, limits));
  s.tokens = rows;
  s.method_label = MethodName(p.method);
  // Causal or not is per call on a session: not part of the key.
  AttentionParams key = p;
  key.causal = false;
  s.batch_key = absl::StrCat("session|", SettingsKey(key));
  return s;
}

int64_t RequestMemoryBytes(const RequestSpec& spec, bool inputs_in_wire_dtype,
                           int64_t unary_message_bytes) {
  const int64_t in_elements =
      spec.q_elements + spec.k_elements + spec.v_elements;
  const int64_t in_bytes =
      in_elements * (inputs_in_wire_dtype ? DTypeBytes(spec.dtype) : 4);
  int64_t bytes = in_bytes + spec.out_elements * 4;
  if (unary_message_bytes > 0) bytes += unary_message_bytes + spec.out_bytes;
  return bytes;
}

int64_t DefaultMaxRequestFlops(const std::string& backend) {
  return backend == "cpu" ? int64_t{1'000'000'000'000}
                          : int64_t{100'000'000'000'000};
}

std::string CodeName(absl::StatusCode code) {
  return absl::StatusCodeToString(code);
}

}  // namespace server
}  // namespace scatterbrain
