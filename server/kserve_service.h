// scatterbrain/server/kserve_service.h — the Open Inference Protocol
// (KServe v2 gRPC, inference.GRPCInferenceService) beside scatterbrain.v1
// on the same grpc::Server, so tritonclient, KServe's SDK and
// perf_analyzer work against this server unchanged.
//
// ModelInfer and each request of ModelStreamInfer take AttendUnary's path:
// kserve_request.h turns the request into a v1::RequestHeader and tensor
// views, SpecFromHeader validates it (the one settings mapping), and
// AttentionServiceImpl::AdmitWhole / SubmitAdmitted reserve its memory and
// submit it to the shared executor, so requests of both protocols batch
// together under the same limits, drain and metrics (method labels as
// scatterbrain.v1's). Tensors in registered system shared-memory regions
// (shm_registry.h) are read and written in place.
//
// Authorization: every RPC but ServerLive, ServerReady and ModelReady (the
// health checks, as grpc.health.v1 is unchecked) takes the same bearer
// token as scatterbrain.v1; shared-memory regions belong to the caller's
// identity.
#ifndef SCATTERBRAIN_SERVER_KSERVE_SERVICE_H_
#define SCATTERBRAIN_SERVER_KSERVE_SERVICE_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "inference/grpc_service.grpc.pb.h"
#include "server/executor.h"
#include "server/service.h"
#include "server/shm_registry.h"

namespace scatterbrain {
namespace server {

class KServeServiceImpl final
    : public inference::GRPCInferenceService::CallbackService {
 public:
  // `attention` (admission, executor, drain, identity) must outlive this,
  // and this the grpc::Server it is registered with.
  KServeServiceImpl(AttentionServiceImpl* attention,
                    const ShmRegistryOptions& shm_options, std::string version);

  using Ctx = grpc::CallbackServerContext;
  using Unary = grpc::ServerUnaryReactor;

  Unary* ServerLive(Ctx* ctx, const inference::ServerLiveRequest* request,
                    inference::ServerLiveResponse* response) override;
  Unary* ServerReady(Ctx* ctx, const inference::ServerReadyRequest* request,
                     inference::ServerReadyResponse* response) override;
  Unary* ModelReady(Ctx* ctx, const inference::ModelReadyRequest* request,
                    inference::ModelReadyResponse* response) override;
  Unary* ServerMetadata(Ctx* ctx,
                        const inference::ServerMetadataRequest* request,
                        inference::ServerMetadataResponse* response) override;
  Unary* ModelMetadata(Ctx* ctx, const inference::ModelMetadataRequest* request,
                       inference::ModelMetadataResponse* response) override;
  Unary* ModelConfig(Ctx* ctx, const inference::ModelConfigRequest* request,
                     inference::ModelConfigResponse* response) override;
  Unary* ModelStatistics(Ctx* ctx,
                         const inference::ModelStatisticsRequest* request,
                         inference::ModelStatisticsResponse* response) override;
  Unary* ModelInfer(Ctx* ctx, const inference::ModelInferRequest* request,
                    inference::ModelInferResponse* response) override;
  grpc::ServerBidiReactor<inference::ModelInferRequest,
                          inference::ModelStreamInferResponse>*
  ModelStreamInfer(Ctx* ctx) override;

  Unary* SystemSharedMemoryStatus(
      Ctx* ctx, const inference::SystemSharedMemoryStatusRequest* request,
      inference::SystemSharedMemoryStatusResponse* response) override;
  Unary* SystemSharedMemoryRegister(
      Ctx* ctx, const inference::SystemSharedMemoryRegisterRequest* request,
      inference::SystemSharedMemoryRegisterResponse* response) override;
  Unary* SystemSharedMemoryUnregister(
      Ctx* ctx, const inference::SystemSharedMemoryUnregisterRequest* request,
      inference::SystemSharedMemoryUnregisterResponse* response) override;

  // Not implemented here: UNIMPLEMENTED saying so.
  Unary* RepositoryIndex(Ctx* ctx,
                         const inference::RepositoryIndexRequest* request,
                         inference::RepositoryIndexResponse* response) override;
  Unary* RepositoryModelLoad(
      Ctx* ctx, const inference::RepositoryModelLoadRequest* request,
      inference::RepositoryModelLoadResponse* response) override;
  Unary* RepositoryModelUnload(
      Ctx* ctx, const inference::RepositoryModelUnloadRequest* request,
      inference::RepositoryModelUnloadResponse* response) override;
  Unary* CudaSharedMemoryStatus(
      Ctx* ctx, const inference::CudaSharedMemoryStatusRequest* request,
      inference::CudaSharedMemoryStatusResponse* response) override;
  Unary* CudaSharedMemoryRegister(
      Ctx* ctx, const inference::CudaSharedMemoryRegisterRequest* request,
      inference::CudaSharedMemoryRegisterResponse* response) override;
  Unary* CudaSharedMemoryUnregister(
      Ctx* ctx, const inference::CudaSharedMemoryUnregisterRequest* request,
      inference::CudaSharedMemoryUnregisterResponse* response) override;
  Unary* TraceSetting(Ctx* ctx, const inference::TraceSettingRequest* request,
                      inference::TraceSettingResponse* response) override;
  Unary* LogSettings(Ctx* ctx, const inference::LogSettingsRequest* request,
                     inference::LogSettingsResponse* response) override;

  SystemShmRegistry& shm() { return shm_; }

 private:
  class InferReactor;
  class StreamReactor;

  // Called exactly once with the response or the error, possibly before
  // Infer returns, possibly on an executor thread.
  // `job`: the job that ran, or null when refused before submission.
  using InferDone = std::function<void(const Job* job, absl::Status,
                                       inference::ModelInferResponse*)>;
  // One inference (ModelInfer's, or one request of a stream): parse,
  // validate, admit, submit. `track` sees the job before it is submitted
  // (to cancel it); `request` may be reused once Infer returns.
  void Infer(const Ctx& ctx, const inference::ModelInferRequest& request,
             const std::function<void(const JobPtr&)>& track, InferDone done);

  // Cumulative per-model statistics (ModelStatistics).
  struct ModelCounters {
    uint64_t success = 0, success_ns = 0;
    uint64_t fail = 0, fail_ns = 0;
    uint64_t queue_ns = 0, compute_ns = 0;
    uint64_t inference_count = 0;  // batch entries of successful requests
    uint64_t last_inference_ms = 0;
  };
  void Count(const std::string& model, bool ok, int64_t elapsed_us,
             const RequestStats* stats, int64_t batch);

  Unary* Finish(Ctx* ctx, const grpc::Status& status);
  Unary* Unimplemented(Ctx* ctx, const char* what);

  AttentionServiceImpl* const attention_;
  const std::string version_;
  SystemShmRegistry shm_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, ModelCounters> counters_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_KSERVE_SERVICE_H_
