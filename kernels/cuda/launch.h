// scatterbrain/kernels/cuda/launch.h — the CUDA backend's internal API: a
// batch of requests on the device, and one launcher per method.
//
// A batch is "varlen" (as FlashAttention's cu_seqlens): requests that share
// settings and head dimensions but not batch, heads or sequence lengths.
// Every (request, batch entry, head) is a slice; `slice_offsets` numbers
// them across the batch, so one grid covers the whole batch and a block
// finds its request by a search over the offsets. Tensors are float32,
// contiguous [batch, heads, seq, dim], already converted on the device.
//
// Plain C++ header (no CUDA types beyond opaque handles), included by host
// code and by the .cu files.
#ifndef SCATTERBRAIN_KERNELS_CUDA_LAUNCH_H_
#define SCATTERBRAIN_KERNELS_CUDA_LAUNCH_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/params.h"

struct CUstream_st;
struct cublasContext;

namespace scatterbrain {
namespace cuda {

class DeviceArena;

// One request of a batch, device pointers.
struct DeviceRequest {
  const float* q = nullptr;  // [batch, heads, seq_q, dim]
  const float* k = nullptr;  // [batch, heads, seq_k, dim]
  const float* v = nullptr;  // [batch, heads, seq_k, dim_v]
  float* out = nullptr;      // [batch, heads, seq_q, dim_v]
  const int32_t* key_lengths = nullptr;  // [batch] on the device, or null
  int32_t batch = 0, heads = 0, seq_q = 0, seq_k = 0;
};

// Per-request counters the kernels fill (device memory, zeroed by the
// caller): AttentionStats' denominator_guards and fallbacks.
struct DeviceCounters {
  unsigned long long guards = 0;
  unsigned long long fallbacks = 0;
};

// The random draws of a batch on the device (made on the host from the
// seed by random_draws.h, uploaded once per (seed, settings) and cached).
struct DeviceDraws {
  // Feature projections, [heads_max][r][dim] (r = num_features / 2), for
  // head h at features + h * r * dim; null when the method has none.
  const float* features = nullptr;
  // Hash projections for head h, round t: hash + (h * num_hashes + t) *
  // hash_rows * hash_cols, each [hash_rows][hash_cols] as kernels/cpu/
  // sparse.cc draws them: cross-polytope 2 * hash_projections rows of dim
  // (dim + 2 with the SMYRF transform), k-means 1 row of dim (the round's
  // ordering direction); null when no LSH.
  const float* hash = nullptr;
  int hash_rows = 0;
  int hash_cols = 0;
  int heads = 0;  // heads covered (the batch's largest heads)
};

struct DeviceBatch {
  // The settings shared by every request (method, num_features,
  // bucket_size, ..., causal, scale, seed, dim, dim_v); its tensor pointers,
  // strides and per-request sizes are unused.
  AttentionParams settings;
  const DeviceRequest* requests = nullptr;  // device [n]
  const int64_t* slice_offsets = nullptr;   // device [n + 1]
  DeviceCounters* counters = nullptr;       // device [n]
  std::vector<DeviceRequest> host_requests;  // the same, on the host
  std::vector<int64_t> host_slice_offsets;
  // Global row numbering across the batch: slice s (request i, entry b,
  // head h, numbered by slice_offsets) owns query rows [q_row_offsets[s],
  // q_row_offsets[s + 1]) and key rows [k_row_offsets[s], ...), in that
  // order. Per-row scratch (features, sums) is indexed by global row.
  const int64_t* q_row_offsets = nullptr;  // device [total_slices + 1]
  const int64_t* k_row_offsets = nullptr;  // device [total_slices + 1]
  std::vector<int64_t> host_q_row_offsets, host_k_row_offsets;
  int n = 0;
  int64_t total_slices = 0;
  int64_t total_q_rows = 0, total_k_rows = 0;
  int32_t max_seq_q = 0, max_seq_k = 0;
  DeviceDraws draws;
};

// What a launcher may use: the stream every launch goes on, a cuBLAS handle
// bound to it, and the stream's scratch arena (reset between batches).
struct LaunchContext {
  CUstream_st* stream = nullptr;
  cublasContext* cublas = nullptr;
  DeviceArena* arena = nullptr;
  int sm_count = 0;
};

// Each enqueues its work on ctx.stream and returns; errors (a failed launch,
// out of scratch: RESOURCE_EXHAUSTED) come back as a Status and leave the
// outputs unspecified. They compute what the CPU backend computes for the
// same settings and seed (kernels/cpu/*.cc), within float32 rounding.
absl::Status RunExact(const DeviceBatch& batch, const LaunchContext& ctx);
absl::Status RunPerformer(const DeviceBatch& batch, const LaunchContext& ctx);
absl::Status RunLocal(const DeviceBatch& batch, const LaunchContext& ctx);
absl::Status RunLsh(const DeviceBatch& batch, const LaunchContext& ctx);
absl::Status RunScatterbrain(const DeviceBatch& batch,
                             const LaunchContext& ctx);

// Building blocks shared by the performer and Scatterbrain launchers.
//
// Positive random features (symmetric FAVOR+, m = num_features), stored as
// the CPU's phi_bar: relative to a per-query-row log-scale and one key
// log-scale per slice (kernels/cpu/lowrank.cc), indexed by global row. The
// rows of padding keys (j >= key_lengths[b]) hold zeros, so sums over a
// slice's whole seq_k rows ignore them. Pointers left null in *out are
// taken from ctx.arena (ScratchBytes counts them); non-null ones are used.
struct DeviceFeatures {
  int m = 0;
  float* q = nullptr;       // [total_q_rows][m]
  float* qscale = nullptr;  // [total_q_rows] (log)
  float* k = nullptr;       // [total_k_rows][m]
  float* kscale = nullptr;  // [total_slices] (log)
};
absl::Status ComputeFeatures(const DeviceBatch& batch, const LaunchContext& ctx,
                             DeviceFeatures* out);
// Low-rank sums phi(q_i) . sum_j phi(k_j) [v_j, 1] over the keys each row
// sees (prefix sums when causal), in units of exp(qscale_i + kscale). As
// for the features, null pointers in *out are taken from ctx.arena.
struct DeviceLowRank {
  float* num = nullptr;  // [total_q_rows][dim_v]
  float* den = nullptr;  // [total_q_rows]
};
absl::Status ComputeLowRank(const DeviceBatch& batch, const LaunchContext& ctx,
                            const DeviceFeatures& features, DeviceLowRank* out);

// Scratch a batch of `settings` with these totals needs at its peak (the
// arena's reservation; also Backend::WorkspaceBytes).
int64_t ScratchBytes(const AttentionParams& settings, int64_t total_slices,
                     int64_t total_q_rows, int64_t total_k_rows);
// The part of it RunLsh / RunScatterbrain take themselves for the sparse
// support, hashing, sorting and the combination (not the features and
// low-rank sums, which ComputeFeatures / ComputeLowRank take); an upper
// bound, 0 for the other methods.
int64_t SparseScratchBytes(const AttentionParams& settings,
                           int64_t total_slices, int64_t total_q_rows,
                           int64_t total_k_rows);

}  // namespace cuda
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_LAUNCH_H_
