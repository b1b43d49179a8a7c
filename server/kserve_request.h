// scatterbrain/server/kserve_request.h — the KServe v2 (Open Inference
// Protocol) boundary: a ModelInferRequest becomes a scatterbrain.v1
// RequestHeader plus views of its tensors' bytes, so it goes through the
// same SpecFromHeader, settings mapping, admission and executor as an
// AttendUnary call; a computed job becomes a ModelInferResponse.
//
// Models: one per method ("scatterbrain", "exact", "performer", "lsh",
// "local"), version "1". Inputs Q [batch, heads, seq_q, dim], K [batch,
// heads, seq_k, dim], V [batch, heads, seq_k, dim_v] (FP32, FP16 or BF16,
// all three alike), optional KEY_LENGTHS (INT32, [batch]); output OUT
// [batch, heads, seq_q, dim_v], FP32 unless the request parameter
// output_dtype says FP16 or BF16. Settings are request parameters named as
// the CLI's flags (num_features, window, causal, seed, ...), set into a
// v1::MethodSettings field of the same name and validated by the one
// mapping (proto/convert/settings.h); errors name the parameter.
#ifndef SCATTERBRAIN_SERVER_KSERVE_REQUEST_H_
#define SCATTERBRAIN_SERVER_KSERVE_REQUEST_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "inference/grpc_service.pb.h"
#include "scatterbrain/v1/attention.pb.h"
#include "server/executor.h"
#include "server/request.h"
#include "server/shm_registry.h"

namespace scatterbrain {
namespace server {
namespace kserve {

// The models served, in the order listed by errors and statistics.
const std::vector<std::string>& ModelNames();
// The method a model name computes; false for names not served.
bool MethodOfModel(absl::string_view model, v1::Method* out);
// NOT_FOUND naming the model and listing the served ones, unless `model`
// is served and `version` is "" or "1".
absl::Status CheckModel(absl::string_view model, absl::string_view version);

void FillModelMetadata(const std::string& model,
                       inference::ModelMetadataResponse* out);
void FillModelConfig(const std::string& model, inference::ModelConfig* out);

// Request parameters into `settings` (method left alone) and
// `header->output_dtype`. INVALID_ARGUMENT "parameter 'window': ..." for a
// name that is not a setting or a value of the wrong type or range.
// Triton's scheduling parameters "priority" and "timeout" are ignored (the
// batcher has no priorities; the gRPC deadline is the timeout).
absl::Status ApplyParameters(
    const google::protobuf::Map<std::string, inference::InferParameter>& params,
    v1::RequestHeader* header);

// A ModelInferRequest, resolved: the header SpecFromHeader checks and where
// each tensor's bytes are (the message, its typed contents or a shared-
// memory region held in `held`). The views point into the request, which
// must outlive them.
struct InferInputs {
  std::string model;
  std::string id;
  v1::RequestHeader header;
  absl::string_view q, k, v;
  std::vector<ShmSpan> held;
  // Q, K, V's regions when they are in shared memory (null otherwise): the
  // job reads float32 inputs there in place, holding the mapping.
  std::shared_ptr<const ShmMapping> in_shm[3];
  // OUT goes into this region instead of raw_output_contents.
  std::optional<ShmSpan> out_shm;
  // The requested output's parameters (echoed for a shared-memory output).
  google::protobuf::Map<std::string, inference::InferParameter> out_params;
};

// Checks the model, the inputs' names, datatypes and shapes, resolves
// shared-memory inputs and outputs for `owner` and applies the parameters.
// NOT_FOUND for a model not served, INVALID_ARGUMENT naming the input,
// output or parameter otherwise.
absl::Status ParseInferRequest(const inference::ModelInferRequest& request,
                               const SystemShmRegistry& shm,
                               const std::string& owner, InferInputs* out);

// SpecFromHeader's errors ("header.settings.window: ...") in the KServe
// request's terms ("parameter 'window': ...", "input 'Q' shape: ...").
absl::Status WithKServeNames(const absl::Status& st);

// INVALID_ARGUMENT when a shared-memory output region is smaller than the
// output `spec` produces.
absl::Status CheckOutputRoom(const InferInputs& in, const RequestSpec& spec);

// The response of a computed job: OUT encoded in spec.output_dtype into
// raw_output_contents or its shared-memory region, the id echoed, and the
// request's server-side stats as response parameters (queue_ns,
// compute_ns, batch_size, estimated_relative_error when sampled).
void FillInferResponse(const InferInputs& in, const RequestSpec& spec,
                       JobResult& result, inference::ModelInferResponse* out);

}  // namespace kserve
}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_KSERVE_REQUEST_H_
