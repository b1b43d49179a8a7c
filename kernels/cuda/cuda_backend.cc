// scatterbrain/kernels/cuda/cuda_backend.cc — see cuda_backend.h.
//
// Streams: BackendOptions.streams slots, each a CUDA stream with its own
// cuBLAS handle, scratch arena, pinned staging area, completion event and
// completion thread. A batch takes a free slot (waiting for one when all are
// busy), is enqueued on its stream by the caller's thread (cuda_batch.cc),
// and the slot's thread waits for the event, fills in statuses and stats,
// frees the slot and only then runs `done`. `done` therefore never runs on
// a CUDA callback thread and may call CUDA or submit the next batch: the
// slot it came from is already free. One completion thread per slot (not
// one per backend) so that a slow batch never delays another's `done`.
#include "kernels/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/status_macros.h"
#include "kernels/cancel.h"
#include "kernels/cuda/arena.h"
#include "kernels/cuda/cuda_batch.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/draws.h"
#include "kernels/cuda/host_memory.h"
#include "kernels/devices.h"

namespace scatterbrain {
namespace {

// Runs `f` (returning a Status), turning an exception into a Status:
// RESOURCE_EXHAUSTED for bad_alloc, INTERNAL otherwise.
template <typename F>
absl::Status Guarded(F f) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        "cuda backend: out of host memory for this batch");
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cuda backend: ", e.what()));
  }
}

// Calls that may share one fused launch (launch.h: everything but batch,
// heads, sequence lengths and key lengths).
bool SameSettings(const AttentionParams& a, const AttentionParams& b) {
  return a.method == b.method && a.dim == b.dim && a.dim_v == b.dim_v &&
         a.causal == b.causal && EffectiveScale(a) == EffectiveScale(b) &&
         a.seed == b.seed && a.num_features == b.num_features &&
         a.bucket_size == b.bucket_size && a.num_hashes == b.num_hashes &&
         a.hash_projections == b.hash_projections &&
         a.lsh_transform == b.lsh_transform && a.lsh_hash == b.lsh_hash &&
         a.kmeans_iterations == b.kmeans_iterations && a.window == b.window &&
         a.sparse == b.sparse && a.estimator == b.estimator &&
         a.calibration_rows == b.calibration_rows;
}

bool Contiguous(const Strides& s, int64_t heads, int64_t seq, int64_t dim) {
  const Strides c = ContiguousStrides(heads, seq, dim);
  return s.batch == c.batch && s.head == c.head && s.row == c.row;
}

// Rows of a strided [batch, heads, seq, cols] tensor to or from a
// contiguous copy.
void CopyRows(const float* src, const Strides& ss, float* dst,
              const Strides& ds, int64_t batch, int64_t heads, int64_t seq,
              int64_t cols) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < seq; ++i)
        std::memcpy(dst + b * ds.batch + h * ds.head + i * ds.row,
                    src + b * ss.batch + h * ss.head + i * ss.row,
                    cols * sizeof(float));
}

class CudaBackend final : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<Backend>> Create(
      const BackendOptions& options);
  ~CudaBackend() override;

  std::string name() const override { return "cuda"; }
  absl::Status Supports(const AttentionParams& p) const override;
  int max_batches_in_flight() const override {
    return static_cast<int>(slots_.size());
  }
  absl::StatusOr<HostBuffer> AllocateHost(int64_t bytes) override;
  int64_t WorkspaceBytes(const AttentionParams& p) const override;
  MemoryStats GetMemoryStats() const override;

 protected:
  absl::StatusOr<AttentionStats> ForwardImpl(const AttentionParams& p) override;
  void ForwardBatchImpl(absl::Span<AttentionCall*> calls) override;
  void ForwardBatchAsyncImpl(absl::Span<AttentionCall*> calls,
                             std::function<void()> done) override;

 private:
  struct Slot {
    cudaStream_t stream = nullptr;
    cublasHandle_t cublas = nullptr;
    cudaEvent_t event = nullptr;
    std::unique_ptr<cuda::DeviceArena> arena;
    cuda::PinnedStaging staging;
    std::atomic<int64_t> held_bytes{0};  // arena capacity, for the stats
    // The batch handed to the completion thread.
    std::mutex mu;
    std::condition_variable cv;
    bool has_work = false;
    bool stop = false;
    cuda::PendingBatch pending;
    std::function<void()> done;
    std::thread worker;
  };

  explicit CudaBackend(const BackendOptions& options) : options_(options) {}
  absl::Status Init();
  Slot* AcquireSlot();
  void ReleaseSlot(Slot* slot);
  void Submit(std::vector<AttentionCall*> calls, std::function<void()> done);
  void Complete(Slot* slot);
  void NoteWorkspace(Slot* slot);

  const BackendOptions options_;
  int device_ = 0;
  int sm_count_ = 0;
  std::vector<std::unique_ptr<Slot>> slots_;
  cuda::DrawCache draws_;

  std::mutex free_mu_;
  std::condition_variable free_cv_;
  std::vector<Slot*> free_;

  std::atomic<int64_t> workspace_high_{0};
};

absl::StatusOr<std::unique_ptr<Backend>> CudaBackend::Create(
    const BackendOptions& options) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("cuda backend: no usable CUDA device (",
                     cudaGetErrorString(err), "); use --backend=cpu"));
  }
  if (options.device < 0 || options.device >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda backend: device ", options.device,
                     " is not present (", CudaRuntimeSummary(), ")"));
  }
  std::unique_ptr<CudaBackend> b(new CudaBackend(options));
  SB_RETURN_IF_ERROR(b->Init());
  return std::unique_ptr<Backend>(std::move(b));
}

absl::Status CudaBackend::Init() {
  device_ = options_.device;
  SB_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  SB_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(
      &sm_count_, cudaDevAttrMultiProcessorCount, device_));
  const int n = std::max(1, options_.streams);
  for (int i = 0; i < n; ++i) {
    auto slot = std::make_unique<Slot>();
    Slot* s = slot.get();
    slots_.push_back(std::move(slot));
    SB_CUDA_RETURN_IF_ERROR(
        cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    SB_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(
        &s->event, cudaEventBlockingSync | cudaEventDisableTiming));
    SB_CUBLAS_RETURN_IF_ERROR(cublasCreate(&s->cublas));
    SB_CUBLAS_RETURN_IF_ERROR(cublasSetStream(s->cublas, s->stream));
    // float32 throughout: no TF32 tensor-op shortcut.
    SB_CUBLAS_RETURN_IF_ERROR(
        cublasSetMathMode(s->cublas, CUBLAS_DEFAULT_MATH));
    s->arena =
        std::make_unique<cuda::DeviceArena>(options_.workspace_limit_bytes);
    try {
      s->worker = std::thread([this, s] { Complete(s); });
    } catch (const std::system_error& e) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cuda backend: cannot start a completion thread: ", e.what()));
    }
    free_.push_back(s);
  }
  return absl::OkStatus();
}

CudaBackend::~CudaBackend() {
  for (auto& s : slots_) {
    {
      std::lock_guard<std::mutex> lock(s->mu);
      s->stop = true;
    }
    s->cv.notify_all();
    if (s->worker.joinable()) s->worker.join();
  }
  cudaSetDevice(device_);
  for (auto& s : slots_) {
    if (s->stream != nullptr) cudaStreamSynchronize(s->stream);
    if (s->cublas != nullptr) cublasDestroy(s->cublas);
    if (s->event != nullptr) cudaEventDestroy(s->event);
    if (s->stream != nullptr) cudaStreamDestroy(s->stream);
    s->arena.reset();
  }
  cudaGetLastError();
}

absl::Status CudaBackend::Supports(const AttentionParams& p) const {
  constexpr int64_t kInt32 = std::numeric_limits<int32_t>::max();
  if (p.batch > kInt32 || p.heads > kInt32 || p.seq_q > kInt32 ||
      p.seq_k > kInt32 || p.batch * p.heads > kInt32) {
    return absl::InvalidArgumentError(
        "cuda backend: batch, heads, batch * heads and the sequence lengths "
        "must fit in int32");
  }
  // Chosen per (batch, head) from exact rows on the host: the CPU
  // backend's planner (kernels/cpu/plan.cc) has no device port yet.
  if (p.method == Method::kScatterbrain &&
      (p.sparse == SparseSupport::kAuto || p.target_error > 0.0 ||
       p.global_keys > 0)) {
    return absl::UnimplementedError(
        "cuda backend: sparse=auto, global_keys and target_error run on the "
        "cpu backend only");
  }
  return absl::OkStatus();
}

absl::StatusOr<HostBuffer> CudaBackend::AllocateHost(int64_t bytes) {
  SB_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  return cuda::AllocatePinned(bytes);
}

int64_t CudaBackend::WorkspaceBytes(const AttentionParams& p) const {
  AttentionCall call;
  call.params = p;  // host float32 refs: the copies are counted
  AttentionCall* one[] = {&call};
  return cuda::BatchArenaBytes(one);
}

MemoryStats CudaBackend::GetMemoryStats() const {
  MemoryStats m;
  m.device = absl::StrCat("cuda:", device_);
  size_t free_bytes = 0, total = 0;
  if (cudaSetDevice(device_) == cudaSuccess &&
      cudaMemGetInfo(&free_bytes, &total) == cudaSuccess) {
    m.used_bytes = static_cast<int64_t>(total - free_bytes);
    m.total_bytes = static_cast<int64_t>(total);
  } else {
    cudaGetLastError();
  }
  int64_t held = draws_.bytes();
  for (const auto& s : slots_) held += s->held_bytes.load();
  m.workspace_bytes = held;
  m.workspace_high_water_bytes = std::max(held, workspace_high_.load());
  return m;
}

void CudaBackend::NoteWorkspace(Slot* slot) {
  slot->held_bytes.store(slot->arena->capacity());
  int64_t held = draws_.bytes();
  for (const auto& s : slots_) held += s->held_bytes.load();
  int64_t high = workspace_high_.load();
  while (held > high && !workspace_high_.compare_exchange_weak(high, held)) {
  }
}

CudaBackend::Slot* CudaBackend::AcquireSlot() {
  std::unique_lock<std::mutex> lock(free_mu_);
  free_cv_.wait(lock, [this] { return !free_.empty(); });
  Slot* s = free_.back();
  free_.pop_back();
  return s;
}

void CudaBackend::ReleaseSlot(Slot* slot) {
  {
    std::lock_guard<std::mutex> lock(free_mu_);
    free_.push_back(slot);
  }
  free_cv_.notify_one();
}

void CudaBackend::Submit(std::vector<AttentionCall*> calls,
                         std::function<void()> done) {
  Slot* slot = AcquireSlot();
  // The last moment to drop a call: waiting for the slot may have taken a
  // whole batch's time, and once enqueued the launches run to their end.
  // A stopped call leaves the batch alone; the others run.
  std::vector<AttentionCall*> live;
  for (AttentionCall* c : calls) {
    c->status = CancelStatus(c->params.cancel);
    if (c->status.ok()) live.push_back(c);
  }
  calls.swap(live);
  if (calls.empty()) {
    ReleaseSlot(slot);
    done();
    return;
  }
  cuda::StreamContext sc;
  sc.stream = slot->stream;
  sc.cublas = slot->cublas;
  sc.arena = slot->arena.get();
  sc.staging = &slot->staging;
  sc.sm_count = sm_count_;
  cuda::PendingBatch pending;
  absl::Status st = cuda::CudaStatus(cudaSetDevice(device_), "cudaSetDevice",
                                     __FILE__, __LINE__);
  // Host-side allocations while enqueueing can throw; nothing may abort the
  // server, and the slot must come back either way.
  if (st.ok())
    st = Guarded(
        [&] { return cuda::EnqueueBatch(calls, sc, &draws_, &pending); });
  if (st.ok()) {
    st = cuda::CudaStatus(cudaEventRecord(slot->event, slot->stream),
                          "cudaEventRecord", __FILE__, __LINE__);
  }
  NoteWorkspace(slot);
  if (!st.ok()) {
    // Whatever was enqueued must finish before the slot is reused.
    cudaStreamSynchronize(slot->stream);
    cudaGetLastError();
    for (AttentionCall* c : calls) c->status = st;
    pending.draws.reset();
    ReleaseSlot(slot);
    done();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(slot->mu);
    slot->pending = std::move(pending);
    slot->done = std::move(done);
    slot->has_work = true;
  }
  slot->cv.notify_one();
}

void CudaBackend::Complete(Slot* slot) {
  cudaSetDevice(device_);
  for (;;) {
    cuda::PendingBatch pending;
    std::function<void()> done;
    {
      std::unique_lock<std::mutex> lock(slot->mu);
      slot->cv.wait(lock, [slot] { return slot->has_work || slot->stop; });
      if (!slot->has_work) return;  // stopping, nothing in flight
      pending = std::move(slot->pending);
      done = std::move(slot->done);
      slot->has_work = false;
    }
    const cudaError_t err = cudaEventSynchronize(slot->event);
    if (err == cudaSuccess) {
      // On this thread an escaping exception would end the process.
      const absl::Status st = Guarded([&] {
        cuda::CompleteBatch(pending);
        return absl::OkStatus();
      });
      if (!st.ok()) {
        for (AttentionCall* c : pending.calls) c->status = st;
      }
    } else {
      const absl::Status st =
          cuda::CudaStatus(err, "cudaEventSynchronize", __FILE__, __LINE__);
      for (AttentionCall* c : pending.calls) c->status = st;
    }
    pending.draws.reset();
    ReleaseSlot(slot);
    done();
  }
}

void CudaBackend::ForwardBatchAsyncImpl(absl::Span<AttentionCall*> calls,
                                        std::function<void()> done) {
  // Normally one group: the batcher only batches compatible requests.
  std::vector<std::vector<AttentionCall*>> groups;
  for (AttentionCall* c : calls) {
    c->status = Supports(c->params);
    if (!c->status.ok()) continue;
    bool placed = false;
    for (auto& g : groups) {
      if (SameSettings(g[0]->params, c->params)) {
        g.push_back(c);
        placed = true;
        break;
      }
    }
    if (!placed) groups.push_back({c});
  }
  if (groups.empty()) {
    done();
    return;
  }
  if (groups.size() == 1) {
    Submit(std::move(groups[0]), std::move(done));
    return;
  }
  auto left =
      std::make_shared<std::atomic<int>>(static_cast<int>(groups.size()));
  auto all_done = std::make_shared<std::function<void()>>(std::move(done));
  for (auto& g : groups) {
    Submit(std::move(g), [left, all_done] {
      if (left->fetch_sub(1) == 1) (*all_done)();
    });
  }
}

void CudaBackend::ForwardBatchImpl(absl::Span<AttentionCall*> calls) {
  absl::Notification finished;
  ForwardBatchAsyncImpl(calls, [&finished] { finished.Notify(); });
  finished.WaitForNotification();
}

absl::StatusOr<AttentionStats> CudaBackend::ForwardImpl(
    const AttentionParams& p) {
  // Host float32 tensors with any strides: contiguous ones are used as they
  // are, others packed into contiguous copies (and the output unpacked).
  AttentionCall call;
  call.params = p;
  SetContiguousStrides(call.params);
  const AttentionShape s = ShapeOf(p);
  std::vector<float> q, k, v, out;
  auto ref = [&](const float* data, const Strides& st, int64_t seq,
                 int64_t cols, std::vector<float>* copy) {
    if (Contiguous(st, p.heads, seq, cols)) {
      return TensorRef{data, DType::kFloat32, MemorySpace::kHost};
    }
    copy->resize(static_cast<size_t>(p.batch * p.heads * seq * cols));
    CopyRows(data, st, copy->data(), ContiguousStrides(p.heads, seq, cols),
             p.batch, p.heads, seq, cols);
    return TensorRef{copy->data(), DType::kFloat32, MemorySpace::kHost};
  };
  call.q = ref(p.q, p.q_strides, p.seq_q, p.dim, &q);
  call.k = ref(p.k, p.k_strides, p.seq_k, p.dim, &k);
  call.v = ref(p.v, p.v_strides, p.seq_k, p.dim_v, &v);
  const bool out_contiguous =
      Contiguous(p.out_strides, p.heads, p.seq_q, p.dim_v);
  if (!out_contiguous) out.resize(static_cast<size_t>(s.out_elements()));
  call.out = MutableTensorRef{out_contiguous ? p.out : out.data(),
                              DType::kFloat32, MemorySpace::kHost};
  AttentionCall* one[] = {&call};
  ForwardBatchImpl(absl::MakeSpan(one));
  if (!call.status.ok()) return call.status;
  if (!out_contiguous) {
    CopyRows(out.data(), ContiguousStrides(p.heads, p.seq_q, p.dim_v), p.out,
             p.out_strides, p.batch, p.heads, p.seq_q, p.dim_v);
  }
  return call.stats;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(
    const BackendOptions& options) {
  return CudaBackend::Create(options);
}

}  // namespace scatterbrain
