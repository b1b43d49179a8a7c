// scatterbrain/server/kserve_service.cc — see kserve_service.h. The
// unary RPCs and ModelInfer; the stream is kserve_stream.cc.
#include "server/kserve_service.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/kserve_request.h"
#include "server/proto_convert.h"

namespace scatterbrain {
namespace server {

// ModelInfer: one inference; a cancelled call cancels its job.
class KServeServiceImpl::InferReactor final : public grpc::ServerUnaryReactor {
 public:
  InferReactor(KServeServiceImpl* svc, Ctx* ctx,
               inference::ModelInferResponse* response)
      : svc_(svc), ctx_(ctx), response_(response) {}

  void Start(const inference::ModelInferRequest& request) {
    svc_->Infer(
        *ctx_, request,
        [this](const JobPtr& job) {
          absl::MutexLock lock(&mu_);
          job_ = job;
        },
        [this](const Job*, absl::Status st,
               inference::ModelInferResponse* response) {
          if (st.ok()) *response_ = std::move(*response);
          Finish(ToGrpcStatus(st));
        });
  }
  void OnCancel() override {
    JobPtr job;
    {
      absl::MutexLock lock(&mu_);
      job = job_;
    }
    if (job != nullptr) svc_->attention_->executor_->Cancel(job);
  }
  void OnDone() override { delete this; }

 private:
  KServeServiceImpl* const svc_;
  Ctx* const ctx_;
  inference::ModelInferResponse* const response_;
  absl::Mutex mu_;
  JobPtr job_ ABSL_GUARDED_BY(mu_);
};

KServeServiceImpl::KServeServiceImpl(AttentionServiceImpl* attention,
                                     const ShmRegistryOptions& shm_options,
                                     std::string version)
    : attention_(attention), version_(std::move(version)), shm_(shm_options) {}

grpc::ServerUnaryReactor* KServeServiceImpl::Finish(Ctx* ctx,
                                                    const grpc::Status& st) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(st);
  return reactor;
}

grpc::ServerUnaryReactor* KServeServiceImpl::Unimplemented(Ctx* ctx,
                                                           const char* what) {
  return Finish(ctx, grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                                  absl::StrCat(what,
                                               " is not implemented by this "
                                               "server (it implements "
                                               "system_shared_memory, "
                                               "statistics and "
                                               "model_configuration)")));
}

void KServeServiceImpl::Count(const std::string& model, bool ok,
                              int64_t elapsed_us, const RequestStats* stats,
                              int64_t batch) {
  const uint64_t now_ms = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());
  const uint64_t ns =
      static_cast<uint64_t>(std::max<int64_t>(elapsed_us, 0)) * 1000;
  absl::MutexLock lock(&mu_);
  ModelCounters& c = counters_[model];
  c.last_inference_ms = now_ms;
  if (!ok) {
    ++c.fail;
    c.fail_ns += ns;
    return;
  }
  ++c.success;
  c.success_ns += ns;
  c.inference_count += static_cast<uint64_t>(batch);
  if (stats != nullptr) {
    c.queue_ns += static_cast<uint64_t>(stats->queue_seconds * 1e9);
    c.compute_ns += static_cast<uint64_t>(stats->compute_seconds * 1e9);
  }
}

void KServeServiceImpl::Infer(const Ctx& ctx,
                              const inference::ModelInferRequest& request,
                              const std::function<void(const JobPtr&)>& track,
                              InferDone done_fn) {
  AttentionServiceImpl* const a = attention_;
  const int64_t start_us = a->clock_->NowMicros();
  a->metrics_->BytesReceived(static_cast<int64_t>(request.ByteSizeLong()));
  auto done = std::make_shared<InferDone>(std::move(done_fn));
  auto in = std::make_shared<kserve::InferInputs>();
  const bool known =
      kserve::CheckModel(request.model_name(), request.model_version()).ok();
  std::string label = "unknown";
  const auto reject = [&](const absl::Status& st, const Job* job = nullptr) {
    a->metrics_->RequestDone(label, CodeName(st.code()),
                             (a->clock_->NowMicros() - start_us) * 1e-6);
    if (known) {
      Count(request.model_name(), false, a->clock_->NowMicros() - start_us,
            nullptr, 0);
    }
    inference::ModelInferResponse response;
    response.set_model_name(request.model_name());
    response.set_id(request.id());
    (*done)(job, st, &response);
  };
  if (a->draining()) return reject(AttentionServiceImpl::DrainingError());
  absl::Status st =
      kserve::ParseInferRequest(request, shm_, a->IdentityOf(ctx), in.get());
  if (!st.ok()) return reject(st);
  absl::StatusOr<RequestSpec> spec =
      SpecFromHeader(in->header, a->options_.limits, /*require_id=*/false,
                     a->options_.defaults);
  if (!spec.ok()) return reject(kserve::WithKServeNames(spec.status()));
  label = spec->method_label;
  if (st = kserve::CheckOutputRoom(*in, *spec); !st.ok()) return reject(st);
  const AttentionServiceImpl::WholeTensor tensors[3] = {
      {"input 'Q'", in->q, in->in_shm[0]},
      {"input 'K'", in->k, in->in_shm[1]},
      {"input 'V'", in->v, in->in_shm[2]}};
  absl::StatusOr<JobPtr> job =
      a->AdmitWhole(*std::move(spec), tensors, "its shape and datatype",
                    static_cast<int64_t>(request.ByteSizeLong()), ctx);
  if (!job.ok()) return reject(job.status());
  in->held.clear();  // the job's buffers hold (or hold views of) the inputs
  for (auto& m : in->in_shm) m.reset();
  in->q = in->k = in->v = absl::string_view();
  // A float32 output into shared memory is written there by the backend.
  if (in->out_shm.has_value() && (*job)->spec.output_dtype == DType::kFloat32 &&
      reinterpret_cast<uintptr_t>(in->out_shm->data) % alignof(float) == 0) {
    (*job)->out_view =
        TensorBuffer::View(reinterpret_cast<float*>(in->out_shm->data),
                           (*job)->spec.out_elements, in->out_shm->keep_alive);
  }
  const int64_t batch = (*job)->spec.params.batch;
  (*job)->done = [this, a, in, done, start_us, label, batch, ctx = &ctx](
                     const JobPtr& j, JobResult result) {
    absl::Status status = result.status;
    inference::ModelInferResponse response;
    if (status.ok()) {
      kserve::FillInferResponse(*in, j->spec, result, &response);
      a->metrics_->BytesSent(static_cast<int64_t>(response.ByteSizeLong()));
    } else {
      response.set_model_name(in->model);
      response.set_id(in->id);
    }
    absl::StatusCode code = status.code();
    if (code == absl::StatusCode::kCancelled &&
        AttentionServiceImpl::AtDeadline(*ctx)) {
      code = absl::StatusCode::kDeadlineExceeded;
      status = absl::DeadlineExceededError(
          "the request's deadline passed before it was computed");
    }
    const int64_t elapsed_us = a->clock_->NowMicros() - start_us;
    a->metrics_->RequestDone(label, CodeName(code), elapsed_us * 1e-6);
    Count(in->model, status.ok(), elapsed_us, &result.stats, batch);
    a->Finished();
    (*done)(j.get(), status, &response);
  };
  track(*job);
  if (st = a->SubmitAdmitted(*job); !st.ok()) {
    (*job)->done = nullptr;
    reject(st, job->get());
  }
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelInfer(
    Ctx* ctx, const inference::ModelInferRequest* request,
    inference::ModelInferResponse* response) {
  if (grpc::Status st = attention_->Authorize(*ctx); !st.ok()) {
    return Finish(ctx, st);
  }
  auto* reactor = new InferReactor(this, ctx, response);
  reactor->Start(*request);
  return reactor;
}

grpc::ServerUnaryReactor* KServeServiceImpl::ServerLive(
    Ctx* ctx, const inference::ServerLiveRequest*,
    inference::ServerLiveResponse* response) {
  response->set_live(true);
  return Finish(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* KServeServiceImpl::ServerReady(
    Ctx* ctx, const inference::ServerReadyRequest*,
    inference::ServerReadyResponse* response) {
  response->set_ready(!attention_->draining());
  return Finish(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelReady(
    Ctx* ctx, const inference::ModelReadyRequest* request,
    inference::ModelReadyResponse* response) {
  response->set_ready(
      kserve::CheckModel(request->name(), request->version()).ok() &&
      !attention_->draining());
  return Finish(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* KServeServiceImpl::ServerMetadata(
    Ctx* ctx, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* response) {
  if (grpc::Status st = attention_->Authorize(*ctx); !st.ok()) {
    return Finish(ctx, st);
  }
  response->set_name("scatterbrain");
  response->set_version(version_);
  for (const char* e : {"model_configuration", "system_shared_memory",
                        "statistics", "parameters", "binary_tensor_data"}) {
    response->add_extensions(e);
  }
  return Finish(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelMetadata(
    Ctx* ctx, const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  if (grpc::Status st = attention_->Authorize(*ctx); !st.ok()) {
    return Finish(ctx, st);
  }
  const absl::Status st =
      kserve::CheckModel(request->name(), request->version());
  if (st.ok()) kserve::FillModelMetadata(request->name(), response);
  return Finish(ctx, ToGrpcStatus(st));
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelConfig(
    Ctx* ctx, const inference::ModelConfigRequest* request,
    inference::ModelConfigResponse* response) {
  if (grpc::Status st = attention_->Authorize(*ctx); !st.ok()) {
    return Finish(ctx, st);
  }
  const absl::Status st =
      kserve::CheckModel(request->name(), request->version());
  if (st.ok()) {
    kserve::FillModelConfig(request->name(), response->mutable_config());
  }
  return Finish(ctx, ToGrpcStatus(st));
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelStatistics(
    Ctx* ctx, const inference::ModelStatisticsRequest* request,
    inference::ModelStatisticsResponse* response) {
  if (grpc::Status st = attention_->Authorize(*ctx); !st.ok()) {
    return Finish(ctx, st);
  }
  std::vector<std::string> models;
  if (request->name().empty()) {
    models = kserve::ModelNames();
  } else {
    const absl::Status st =
        kserve::CheckModel(request->name(), request->version());
    if (!st.ok()) return Finish(ctx, ToGrpcStatus(st));
    models.push_back(request->name());
  }
  absl::MutexLock lock(&mu_);
  for (const std::string& model : models) {
    const ModelCounters c = counters_[model];
    auto* m = response->add_model_stats();
    m->set_name(model);
    m->set_version("1");
    m->set_last_inference(c.last_inference_ms);
    m->set_inference_count(c.inference_count);
    // Each request is one execution here: the server's batches merge
    // requests of any model with equal settings, which Triton's counter
    // does not describe.
    m->set_execution_count(c.success);
    auto* s = m->mutable_inference_stats();
    s->mutable_success()->set_count(c.success);
    s->mutable_success()->set_ns(c.success_ns);
    s->mutable_fail()->set_count(c.fail);
    s->mutable_fail()->set_ns(c.fail_ns);
    s->mutable_queue()->set_count(c.success);
    s->mutable_queue()->set_ns(c.queue_ns);
    s->mutable_compute_infer()->set_count(c.success);
    s->mutable_compute_infer()->set_ns(c.compute_ns);
  }
  return Finish(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* KServeServiceImpl::SystemSharedMemoryStatus(
    Ctx* ctx, const inference::SystemSharedMemoryStatusRequest* request,
    inference::SystemSharedMemoryStatusResponse* response) {
  if (grpc::Status st = attention_->Authorize(*ctx); !st.ok()) {
    return Finish(ctx, st);
  }
  absl::StatusOr<std::vector<ShmRegionInfo>> regions =
      shm_.Status(request->name(), attention_->IdentityOf(*ctx));
  if (!regions.ok()) return Finish(ctx, ToGrpcStatus(regions.status()));
  for (const ShmRegionInfo& r : *regions) {
    auto& out = (*response->mutable_regions())[r.name];
    out.set_name(r.name);
    out.set_key(r.key);
    out.set_offset(r.offset);
    out.set_byte_size(r.byte_size);
  }
  return Finish(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* KServeServiceImpl::SystemSharedMemoryRegister(
    Ctx* ctx, const inference::SystemSharedMemoryRegisterRequest* request,
    inference::SystemSharedMemoryRegisterResponse*) {
  if (grpc::Status st = attention_->Authorize(*ctx); !st.ok()) {
    return Finish(ctx, st);
  }
  return Finish(ctx, ToGrpcStatus(shm_.Register(
                         request->name(), request->key(), request->offset(),
                         request->byte_size(), attention_->IdentityOf(*ctx))));
}

grpc::ServerUnaryReactor* KServeServiceImpl::SystemSharedMemoryUnregister(
    Ctx* ctx, const inference::SystemSharedMemoryUnregisterRequest* request,
    inference::SystemSharedMemoryUnregisterResponse*) {
  if (grpc::Status st = attention_->Authorize(*ctx); !st.ok()) {
    return Finish(ctx, st);
  }
  return Finish(ctx, ToGrpcStatus(shm_.Unregister(
                         request->name(), attention_->IdentityOf(*ctx))));
}

grpc::ServerUnaryReactor* KServeServiceImpl::RepositoryIndex(
    Ctx* ctx, const inference::RepositoryIndexRequest*,
    inference::RepositoryIndexResponse*) {
  return Unimplemented(ctx, "RepositoryIndex (the models are built in)");
}
grpc::ServerUnaryReactor* KServeServiceImpl::RepositoryModelLoad(
    Ctx* ctx, const inference::RepositoryModelLoadRequest*,
    inference::RepositoryModelLoadResponse*) {
  return Unimplemented(ctx, "RepositoryModelLoad (the models are built in)");
}
grpc::ServerUnaryReactor* KServeServiceImpl::RepositoryModelUnload(
    Ctx* ctx, const inference::RepositoryModelUnloadRequest*,
    inference::RepositoryModelUnloadResponse*) {
  return Unimplemented(ctx, "RepositoryModelUnload (the models are built in)");
}
grpc::ServerUnaryReactor* KServeServiceImpl::CudaSharedMemoryStatus(
    Ctx* ctx, const inference::CudaSharedMemoryStatusRequest*,
    inference::CudaSharedMemoryStatusResponse*) {
  return Unimplemented(ctx, "CudaSharedMemoryStatus");
}
grpc::ServerUnaryReactor* KServeServiceImpl::CudaSharedMemoryRegister(
    Ctx* ctx, const inference::CudaSharedMemoryRegisterRequest*,
    inference::CudaSharedMemoryRegisterResponse*) {
  return Unimplemented(ctx, "CudaSharedMemoryRegister");
}
grpc::ServerUnaryReactor* KServeServiceImpl::CudaSharedMemoryUnregister(
    Ctx* ctx, const inference::CudaSharedMemoryUnregisterRequest*,
    inference::CudaSharedMemoryUnregisterResponse*) {
  return Unimplemented(ctx, "CudaSharedMemoryUnregister");
}
grpc::ServerUnaryReactor* KServeServiceImpl::TraceSetting(
    Ctx* ctx, const inference::TraceSettingRequest*,
    inference::TraceSettingResponse*) {
  return Unimplemented(ctx, "TraceSetting");
}
grpc::ServerUnaryReactor* KServeServiceImpl::LogSettings(
    Ctx* ctx, const inference::LogSettingsRequest*,
    inference::LogSettingsResponse*) {
  return Unimplemented(ctx, "LogSettings");
}

}  // namespace server
}  // namespace scatterbrain
