// scatterbrain/server/request.h — one request as the executor sees it: the
// validated call (AttentionParams), its wire dtypes and sizes, the batch key
// and the server's limits. Core types only: no protobuf here or below, so
// every front end (scatterbrain.v1 today, others later) builds the same
// RequestSpec and the executor never learns where it came from.
#ifndef SCATTERBRAIN_SERVER_REQUEST_H_
#define SCATTERBRAIN_SERVER_REQUEST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "common/request_stats.h"
#include "kernels/params.h"

namespace scatterbrain {
namespace server {

// Server-side limits a request is checked against (RESOURCE_EXHAUSTED).
struct RequestLimits {
  // q + k + v bytes of one request, in its wire dtype.
  int64_t max_request_bytes = int64_t{1} << 30;
  // seq_q and seq_k.
  int64_t max_seq = 65536;
  // Estimated floating-point operations of one request (EstimateFlops,
  // kernels/cost.h), checked before any tensor data is taken; 0: no limit.
  // kBackendDefault: the server sets DefaultMaxRequestFlops(its backend);
  // MakeRequestSpec reads a value left unresolved as the CPU's.
  static constexpr int64_t kBackendDefault = -1;
  int64_t max_request_flops = kBackendDefault;
};

// What the server fills in for a setting a request leaves unset, where that
// is the server's choice rather than the core's default.
struct RequestDefaults {
  // Scatterbrain's support for a one-shot request whose sparse is unset
  // (UNSPECIFIED): kAuto, per head the support that holds the most
  // attention mass (kernels/params.h). Server::Start makes it kLsh when the
  // backend refuses kAuto (Backend::Supports; the CUDA backend for now).
  // Sessions keep the core's default: their decode steps would run kAuto
  // as kBoth, at twice the budget.
  SparseSupport sparse = SparseSupport::kAuto;
  // Scatterbrain's global keys for a one-shot request whose global_keys is
  // unset: up to 4 keys every row attends to (a [CLS] / [SEP] column), part
  // of the budget (kernels/params.h; on MiniLM at budget 64 they take the
  // mean error from 0.398 to 0.356: README, Accuracy). Server::Start makes
  // it 0 when the backend refuses global keys (the CUDA backend for now).
  int global_keys = 4;
};

// The per-request ceiling a backend gets by default: about a minute of its
// work, so no single request can hold the machine longer than that (what
// stops a request sooner is its deadline: the computation ends with it).
//  "cpu": 1e12. This estimate runs at 1.0-1.8e10 per second on a 2-core
//    machine (exact attention, measured), so about a minute there, seconds
//    on a large server. It admits exact attention at N = 16384 with 8 heads
//    of 64 dims (7.6e11) and every approximate method at max_seq with 8
//    heads (at most 2e11), and refuses exact attention at max_seq beyond
//    one head of 64 dims (1.5e12).
//  anything else (a GPU): 1e14. Exact attention at N = 65536 with 8 heads
//    of 64 dims (1.2e13) takes 0.26 s on an H100 with PyTorch SDPA; 1e14 is
//    a few seconds of such a device.
int64_t DefaultMaxRequestFlops(const std::string& backend);

// A validated request: everything but the tensor data.
struct RequestSpec {
  std::string request_id;
  // Settings and shape; tensor pointers null, contiguous strides set.
  AttentionParams params;
  std::vector<int32_t> key_lengths;      // empty: all keys valid
  DType dtype = DType::kFloat32;         // of q, k, v on the wire
  DType output_dtype = DType::kFloat32;  // of the output on the wire
  int64_t q_elements = 0, k_elements = 0, v_elements = 0, out_elements = 0;
  int64_t q_bytes = 0, k_bytes = 0, v_bytes = 0;  // wire bytes
  int64_t out_bytes = 0;                          // wire bytes of the output
  // Requests with equal keys can share a computation: head dims, dtypes,
  // method and every setting — but not batch, heads or sequence lengths.
  std::string batch_key;
  // The batcher's size measure: batch * heads * (seq_q + seq_k).
  int64_t tokens = 0;
  // EstimateFlops of the request (checked against max_request_flops).
  int64_t estimated_flops = 0;
  std::string method_label;  // metrics label ("exact", "scatterbrain", ...)
  // A request on a server-held session (kernels/session/kv_session.h): the
  // session's id; then q holds the request's seq_q query rows, k and v its
  // own rows to append first (session_append) or nothing, and
  // params.seq_k is 0 (the session's lengths are the keys).
  std::string session_id;
  bool session_append = false;
  // Every query row sees all of its sequence's keys (else causal relative
  // to the session's length).
  bool session_see_all = false;

  AttentionShape shape() const { return ShapeOf(params); }
  bool on_session() const { return !session_id.empty(); }
};

// Checks `params` (shape and settings, ValidateParams without values) and
// `key_lengths` (one per batch entry or none), then the server's limits, and
// builds the spec. Errors name the core's fields as ValidateParams does
// ("dim: ...", "key_lengths[1]: ...", "seq_q: ... over the server's limit",
// "shape: q, k and v take ..."): the front end maps them to its own paths.
// INVALID_ARGUMENT for malformed input, then RESOURCE_EXHAUSTED for what is
// well-formed but over a limit.
absl::StatusOr<RequestSpec> MakeRequestSpec(std::string request_id,
                                            const AttentionParams& params,
                                            std::vector<int32_t> key_lengths,
                                            DType dtype, DType output_dtype,
                                            const RequestLimits& limits);

// A request on a session whose settings, batch, heads and head sizes are
// `session` (AttentionParams with those set): `seq_q` query rows, and as
// many key/value rows when `append`. Checks seq_q, then the server's limits
// (max_seq, max_request_bytes, and max_request_flops against
// `estimated_flops`, the session's estimate). Errors name the core's fields
// ("seq_q: ...", "shape: ..."), as MakeRequestSpec's. Batch key
// "session|<settings>": steps of every session with these settings share
// batches.
absl::StatusOr<RequestSpec> MakeSessionRequestSpec(
    std::string request_id, std::string session_id,
    const AttentionParams& session, int64_t seq_q, bool append, bool see_all,
    DType dtype, DType output_dtype, int64_t estimated_flops,
    const RequestLimits& limits);

// The server memory one request holds from its header to its answer, what
// memory admission reserves: q, k and v as they are stored (float32, or the
// wire dtype when `inputs_in_wire_dtype`), the float32 output and, for a
// unary call (`unary_message_bytes` > 0: the request message gRPC holds),
// that message plus the response message, which carries the whole output.
int64_t RequestMemoryBytes(const RequestSpec& spec, bool inputs_in_wire_dtype,
                           int64_t unary_message_bytes = 0);

// "OK", "INVALID_ARGUMENT", ... (the metrics' code label).
std::string CodeName(absl::StatusCode code);

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_REQUEST_H_
