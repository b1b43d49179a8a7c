// scatterbrain/kernels/cuda/cuda_batch.h — one batch of calls on one
// stream, as the CUDA backend runs it: the inputs uploaded by memory space
// (device refs used in place, host and pinned refs copied) with the wire
// dtype converted on the device, device-resident values scanned for
// non-finite numbers, the batch's metadata in one copy, the method's
// launcher, and the outputs back in each call's dtype and space. Nothing
// here waits for the device: EnqueueBatch only enqueues, CompleteBatch runs
// once the stream is done.
#ifndef SCATTERBRAIN_KERNELS_CUDA_CUDA_BATCH_H_
#define SCATTERBRAIN_KERNELS_CUDA_CUDA_BATCH_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "kernels/cuda/arena.h"
#include "kernels/cuda/draws.h"
#include "kernels/cuda/host_memory.h"
#include "kernels/cuda/launch.h"

namespace scatterbrain {
namespace cuda {

// A stream's resources; the stream has no batch in flight while one is
// being enqueued.
struct StreamContext {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  DeviceArena* arena = nullptr;
  PinnedStaging* staging = nullptr;
  int sm_count = 0;
};

// What the completion step reads once the stream is done.
struct PendingBatch {
  std::vector<AttentionCall*> calls;
  // Held until the stream is done (the cache may drop them meanwhile).
  std::shared_ptr<const DeviceDrawSet> draws;
  // Pinned read-backs: per call its counters, and per call and input (q, k,
  // v) the index of the first non-finite device value (~0 if none).
  const DeviceCounters* counters = nullptr;
  const unsigned long long* first_bad = nullptr;
};

// Device arena bytes a batch of these calls reserves: tensor copies,
// metadata and the launcher's scratch.
int64_t BatchArenaBytes(absl::Span<AttentionCall* const> calls);

// Enqueues the batch on sc.stream (`calls` are valid and share settings).
// On error part of the work may be enqueued: the caller synchronises the
// stream before reusing its resources and fails the calls.
absl::Status EnqueueBatch(absl::Span<AttentionCall* const> calls,
                          const StreamContext& sc, DrawCache* draws,
                          PendingBatch* pending);

// After the stream is done: each call's status (INVALID_ARGUMENT for a
// non-finite device value, named as ValidateCall names it) and stats.
void CompleteBatch(const PendingBatch& pending);

// The per-call stats that do not come from the device: dense score bytes
// and the launcher scratch the call takes on its own.
AttentionStats BaseStats(const AttentionParams& p);

}  // namespace cuda
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_CUDA_BATCH_H_
