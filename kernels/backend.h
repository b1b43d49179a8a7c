// scatterbrain/kernels/backend.h — the backend interface. Backends compute
// the same function from the same seed: random draws are made on the host
// by random_draws.h and shared (DrawCache).
//
// Shaped for a device as well as the CPU: a batch entry point (requests that
// share settings run as one fused launch), an asynchronous form (enqueue,
// completion callback, so batch n+1's upload overlaps batch n's compute),
// tensors that carry dtype and memory space, host buffers from the backend
// (pinned on CUDA), a workspace query and memory stats. Validation is not
// the backends' business: the public calls validate on the host, then call
// the implementation.
#ifndef SCATTERBRAIN_KERNELS_BACKEND_H_
#define SCATTERBRAIN_KERNELS_BACKEND_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/params.h"
#include "kernels/tensor.h"

namespace scatterbrain {

struct BackendOptions {
  // CUDA device ordinal.
  int device = 0;
  // CUDA streams: batches in flight at once (one uploads while another
  // computes). The CPU backend runs one at a time.
  int streams = 2;
  // Device scratch per stream beyond which a batch fails with
  // RESOURCE_EXHAUSTED; 0 = bounded by the device's free memory only.
  int64_t workspace_limit_bytes = 0;
  // CPU worker threads per call; 0 = the hardware's concurrency.
  int threads = 0;
  // CPU: heap each worker thread (and the creating thread) faults in when
  // the backend is created and keeps for the calls' scratch, so that a first
  // call pays no page faults for it (N = 4096 at budget 256 uses about 8 MiB
  // per thread). Done once per process for the largest size asked; 0: none.
  int64_t warm_bytes_per_thread = int64_t{16} << 20;
};

// One request of a batch: its shape and settings in `params` (the tensor
// pointers and strides there are ignored: the refs below are contiguous),
// its tensors, and what the backend reports back.
struct AttentionCall {
  AttentionParams params;
  TensorRef q, k, v;
  MutableTensorRef out;
  // Filled by the backend: the request's own outcome (a bad request fails
  // alone) and, when OK, its stats.
  absl::Status status;
  AttentionStats stats;
};

struct MemoryStats {
  std::string device;           // metrics label: "cpu", "cuda:0"
  int64_t used_bytes = 0;       // in use now (resident memory on the CPU)
  int64_t total_bytes = 0;      // the device's memory (0 = unknown)
  int64_t workspace_bytes = 0;  // backend-owned scratch held now
  int64_t workspace_high_water_bytes = 0;  // its peak since start
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // OK if this backend can run `p` (after ValidateParams).
  virtual absl::Status Supports(const AttentionParams& p) const = 0;

  // One call on host float32 tensors (`p`'s pointers): validates `p` (and
  // its values) on the host, then computes into p.out. Thread-safe. Never
  // aborts; errors come back as a Status.
  //
  // Cancellation (p.cancel, kernels/cancel.h; also for each call of a
  // batch, which stops alone): a call already stopped returns at once; the
  // CPU backend checks again between row blocks, slices and LSH chunks on
  // every worker thread and returns CANCELLED or DEADLINE_EXCEEDED within
  // one block (output unspecified); the CUDA backend checks until the batch
  // is launched (its launches are enqueued at once), after which the batch
  // runs to its end.
  absl::StatusOr<AttentionStats> Forward(const AttentionParams& p);

  // A batch: requests that share method, settings and head dimensions (not
  // batch, heads or sequence lengths). Each is validated on its own (a bad
  // one gets its status and the rest run), then the valid ones run
  // together. Returns when every call has its status.
  void ForwardBatch(absl::Span<AttentionCall> calls);
  // The same, asynchronous: returns once the batch is enqueued; `done` runs
  // exactly once, on a backend thread or this one, when every call has its
  // status. `calls` and the memory they reference must stay alive until
  // then. At most `max_batches_in_flight()` batches are useful at once.
  void ForwardBatchAsync(absl::Span<AttentionCall> calls,
                         std::function<void()> done);
  virtual int max_batches_in_flight() const { return 1; }
  // True: hand tensors over in their wire dtype (float16/bfloat16 stay so);
  // the backend converts on its device, and half the bytes cross the bus.
  // False (the CPU): the caller converts to float32 as the bytes arrive.
  virtual bool ConvertsOnDevice() const { return false; }

  // Host memory for tensors this backend will read or write (pinned on
  // CUDA); RESOURCE_EXHAUSTED when it cannot be had. Every buffer must be
  // released before the backend is destroyed.
  virtual absl::StatusOr<HostBuffer> AllocateHost(int64_t bytes);
  // Backend-owned scratch one call of `p` takes at its peak.
  virtual int64_t WorkspaceBytes(const AttentionParams& p) const = 0;
  virtual MemoryStats GetMemoryStats() const = 0;

 protected:
  // `p` is valid (values included) and its tensors are host float32.
  virtual absl::StatusOr<AttentionStats> ForwardImpl(
      const AttentionParams& p) = 0;
  // `calls` are valid and share settings; each call's status is OK on entry
  // and set by the implementation. The default converts each call's tensors
  // to host float32 and runs ForwardImpl on them one after the other.
  virtual void ForwardBatchImpl(absl::Span<AttentionCall*> calls);
  // The default runs ForwardBatchImpl, then `done`, on the calling thread.
  virtual void ForwardBatchAsyncImpl(absl::Span<AttentionCall*> calls,
                                     std::function<void()> done);
};

// "cpu" (always) or "cuda" (when compiled with CUDA and a device is there).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(
    const std::string& name, const BackendOptions& options = {});
// Names of the backends compiled into this build.
std::vector<std::string> CompiledBackends();

// Validates one call of a batch: its params with stand-in pointers, its
// refs (non-null; dtypes the backend converts; host values scanned for
// non-finite numbers when `check_values`). Errors name the field.
absl::Status ValidateCall(const AttentionCall& call, bool check_values);

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_BACKEND_H_
