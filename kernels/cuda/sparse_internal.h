// scatterbrain/kernels/cuda/sparse_internal.h — what the LSH and
// Scatterbrain launchers' translation units share: the resolved slices, the
// support accumulators, CUDA errors as Status, and the steps each .cu file
// provides (hashing, sorting, the support pass, the combination).
//
// Every step enqueues on ctx.stream, takes its scratch from ctx.arena and
// checks every launch; none synchronises.
#ifndef SCATTERBRAIN_KERNELS_CUDA_SPARSE_INTERNAL_H_
#define SCATTERBRAIN_KERNELS_CUDA_SPARSE_INTERNAL_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/status_macros.h"
#include "kernels/cuda/arena.h"
#include "kernels/cuda/launch.h"

namespace scatterbrain {
namespace cuda {
namespace sparse {

// A CUDA error as a Status: RESOURCE_EXHAUSTED when out of device memory,
// INTERNAL otherwise; `what` names the call.
absl::Status CudaCheck(cudaError_t err, const char* what);
// The status of the launch just made (cudaGetLastError).
inline absl::Status LaunchCheck(const char* kernel) {
  return CudaCheck(cudaGetLastError(), kernel);
}
#define SB_SPARSE_CUDA(expr, what) \
  SB_RETURN_IF_ERROR(::scatterbrain::cuda::sparse::CudaCheck((expr), (what)))
#define SB_SPARSE_LAUNCHED(kernel) \
  SB_RETURN_IF_ERROR(::scatterbrain::cuda::sparse::LaunchCheck(kernel))

// Scratch from the arena, or (without one) only the count of the bytes it
// would take, so that SparseScratchBytes and the launchers share one list
// of allocations. Each allocation is rounded up to 256 bytes, as the
// arena's.
class ScratchPlan {
 public:
  explicit ScratchPlan(DeviceArena* arena) : arena_(arena) {}
  template <typename T>
  absl::Status Take(int64_t n, T** out) {
    const int64_t bytes = (n > 0 ? n : 1) * static_cast<int64_t>(sizeof(T));
    bytes_ += (bytes + 255) / 256 * 256;
    *out = nullptr;
    if (arena_ == nullptr) return absl::OkStatus();
    absl::StatusOr<T*> p = arena_->AllocateArray<T>(n > 0 ? n : 1);
    if (!p.ok()) return p.status();
    *out = *p;
    return absl::OkStatus();
  }
  bool counting() const { return arena_ == nullptr; }
  int64_t bytes() const { return bytes_; }

 private:
  DeviceArena* arena_;
  int64_t bytes_ = 0;
};

// The totals a launcher's scratch depends on.
struct BatchSizes {
  int64_t slices = 0, q_rows = 0, k_rows = 0;
};
inline BatchSizes SizesOf(const DeviceBatch& b) {
  return BatchSizes{b.total_slices, b.total_q_rows, b.total_k_rows};
}
// The largest head count of the batch's requests (the draws must cover it).
inline int64_t MaxHeads(const DeviceBatch& b) {
  int64_t h = 0;
  for (const DeviceRequest& r : b.host_requests) h = r.heads > h ? r.heads : h;
  return h;
}

// One (request, batch entry, head) slice, resolved once per launcher.
struct SliceInfo {
  const float* q;          // [nq][dim]
  const float* k;          // [seq_k][dim]
  const float* v;          // [seq_k][dim_v]
  float* out;              // [nq][dim_v]
  int64_t q_row0, k_row0;  // global row numbers of row 0
  int32_t nq, nk;          // query rows; valid (non-padding) keys
  int32_t seq_k, offset;   // offset = seq_k - seq_q (causal alignment)
  int32_t b, h, request;
};

// Device views of a batch's slices: the SliceInfo array and the end of each
// slice's valid keys (global rows; with k_row_offsets, the key segments).
struct Slices {
  SliceInfo* info = nullptr;
  int64_t* k_valid_end = nullptr;
};
absl::Status TakeSlices(ScratchPlan& plan, const BatchSizes& n, Slices* out);
// TakeSlices, then the kernel that fills them.
absl::Status BuildSlices(ScratchPlan& plan, const DeviceBatch& batch,
                         const LaunchContext& ctx, Slices* out);

// Per query row: the exact part's running max and sum, |S_i|, and (with
// features) the low-rank mass on S_i. Read from one buffer and written to
// the other by each pass, so blocks that share a row never race on it.
struct RowStats {
  float emax, e1, f1;
  int32_t count;
};

// The sparse support's accumulators over global query rows.
struct SupportAcc {
  RowStats* stats = nullptr;  // the current buffer
  RowStats* spare = nullptr;  // the other one
  float* ev = nullptr;        // [total_q_rows][dim_v]: exact numerator
  float* lv = nullptr;        // [total_q_rows][dim_v]: low-rank on S_i
};
absl::Status TakeSupportAcc(ScratchPlan& plan, const BatchSizes& n, int dim_v,
                            bool features, SupportAcc* out);
// Zeroes the accumulators (emax = -inf).
absl::Status LaunchInitSupportAcc(const DeviceBatch& batch,
                                  const LaunchContext& ctx,
                                  const SupportAcc& acc);

// Optional probes of the discrete choices (GPU tests compare CPU and GPU
// given the same choice): device outputs, filled when non-null, and device
// inputs that replace a choice when non-null.
struct SparseProbe {
  int32_t* qchunk = nullptr;     // [num_hashes][total_q_rows]: chunk met
  int32_t* kchunk = nullptr;     // [num_hashes][total_k_rows]: valid keys
  int32_t* candidate = nullptr;  // [total_slices]: calibration choice
  double* alpha = nullptr;       // [total_slices]
  // Forced LSH chunks (same layout, e.g. the CPU's): the hash is skipped
  // and keys are ordered by these ids; chunk t must hold as many keys as
  // sorted positions [t nk / C, (t + 1) nk / C) (C chunks).
  const int32_t* forced_qchunk = nullptr;
  const int32_t* forced_kchunk = nullptr;
  // Forced calibration choice per slice.
  const int32_t* forced_candidate = nullptr;
  const double* forced_alpha = nullptr;
};

// Which support to accumulate, and the features for the low-rank side.
struct SupportSpec {
  bool lsh = false;
  bool local = false;
  const DeviceFeatures* features = nullptr;  // null: exact part only
};
// Scratch of AccumulateSupport (everything but the accumulators).
int64_t SupportScratchBytes(const AttentionParams& settings,
                            const BatchSizes& n, const SupportSpec& spec);
// Accumulates the support: the local window first, then each LSH round.
absl::Status AccumulateSupport(const DeviceBatch& batch,
                               const LaunchContext& ctx, const Slices& slices,
                               const SupportSpec& spec, SupportAcc* acc,
                               SparseProbe* probe);

// One pass of exact (and low-rank) pair sums. Local: query rows in order
// against their window. LSH round `round`: query rows in `qorder` (sorted
// by chunk) against the keys of their chunk in `korder`, skipping pairs
// met in earlier rounds (qchunk / kchunk) and, with `exclude_window`,
// pairs of the local window.
struct PassSpec {
  bool lsh = false;
  bool exclude_window = false;
  int round = 0;
  const int32_t* qorder = nullptr;  // [total_q_rows] local indices
  const int32_t* korder = nullptr;  // [total_k_rows] local indices
  const int32_t* qchunk = nullptr;  // [rounds][total_q_rows]
  const int32_t* kchunk = nullptr;  // [rounds][total_k_rows]
};
absl::Status LaunchSupportPass(const DeviceBatch& batch,
                               const LaunchContext& ctx, const Slices& slices,
                               const DeviceFeatures* features,
                               const PassSpec& pass, SupportAcc* acc);

// CUB temp storage for every sort of a launcher, sized once.
struct SortWork {
  void* temp = nullptr;
  size_t bytes = 0;
};
absl::Status TakeSortWork(ScratchPlan& plan, const BatchSizes& n,
                          SortWork* out);
// Stable segmented sorts. Keys of slice s: [k_row0, k_valid_end[s]);
// queries: [q_row0, q_row0 + nq); SortSegments32: [begin[s], end[s]).
absl::Status SortKeys(const DeviceBatch& batch, const LaunchContext& ctx,
                      const Slices& slices, const SortWork& work,
                      const uint64_t* keys_in, const int32_t* idx_in,
                      uint64_t* keys_out, int32_t* idx_out);
absl::Status SortQueries(const DeviceBatch& batch, const LaunchContext& ctx,
                         const SortWork& work, const uint32_t* keys_in,
                         const int32_t* idx_in, uint32_t* keys_out,
                         int32_t* idx_out);
absl::Status SortSegments32(const DeviceBatch& batch, const LaunchContext& ctx,
                            const SortWork& work, const int64_t* end,
                            const uint32_t* keys_in, const int32_t* idx_in,
                            uint32_t* keys_out, int32_t* idx_out);

// One LSH round's order keys: a HashSortKey per valid key (kkey, with its
// local index in kidx) and per query (qkey), at global rows.
struct RoundKeys {
  uint64_t* kkey = nullptr;
  int32_t* kidx = nullptr;
  uint64_t* qkey = nullptr;
};
// SMYRF's transform: the rows' squared norms and M per slice.
struct SmyrfNorms {
  double* m = nullptr;    // [total_slices]
  double* qn2 = nullptr;  // [total_q_rows]
  double* kn2 = nullptr;  // [total_k_rows]
};
absl::Status TakeSmyrfNorms(ScratchPlan& plan, const BatchSizes& n,
                            SmyrfNorms* out);
absl::Status LaunchSmyrfNorms(const DeviceBatch& batch,
                              const LaunchContext& ctx, const Slices& slices,
                              const SmyrfNorms& norms);
// The cross-polytope hash of round `round` (smyrf null: no transform).
absl::Status LaunchCrossPolytope(const DeviceBatch& batch,
                                 const LaunchContext& ctx, const Slices& slices,
                                 int round, const SmyrfNorms* smyrf,
                                 RoundKeys* keys);

// The k-means hash (sparse.cc's KMeansHash): scratch reused every round.
struct KMeansWork {
  uint32_t* bits_train = nullptr;  // sampling bit sets over keys
  uint32_t* bits_init = nullptr;
  int32_t* train = nullptr;   // [total_k_rows]: sampled keys, sorted
  int32_t* init = nullptr;    // [total_k_rows]: initial tops (sample pos)
  float* unit = nullptr;      // [total_k_rows][dim]: unit sampled keys
  int32_t* assign = nullptr;  // [total_k_rows]: Lloyd assignment
  uint32_t* tops = nullptr;   // [total_k_rows]: top of each sample
  int32_t* midx = nullptr;    // [total_k_rows]: sample positions
  uint32_t* sorted_tops = nullptr;
  int32_t* members = nullptr;     // sample positions sorted by top
  int64_t* member_end = nullptr;  // [total_slices]
  float* cent = nullptr;          // centroid rows (CentroidBase), [dim] each
  float* csum = nullptr;          // their raw sums
};
absl::Status TakeKMeansWork(ScratchPlan& plan, const AttentionParams& settings,
                            const BatchSizes& n, KMeansWork* out);
absl::Status LaunchKMeansHash(const DeviceBatch& batch,
                              const LaunchContext& ctx, const Slices& slices,
                              const SortWork& sort, const KMeansWork& work,
                              int round, RoundKeys* keys);

// Chunk ids of one round from the sorted keys: kchunk for every valid key,
// qchunk for every query, and the queries' sort input (chunk, index).
absl::Status LaunchAssignChunks(const DeviceBatch& batch,
                                const LaunchContext& ctx, const Slices& slices,
                                const uint64_t* sorted_kkey,
                                const int32_t* korder, const uint64_t* qkey,
                                int32_t* kchunk, int32_t* qchunk,
                                uint32_t* qsort_key, int32_t* qsort_idx);
// The sort inputs from forced chunk ids instead of a hash.
absl::Status LaunchForcedChunkKeys(const DeviceBatch& batch,
                                   const LaunchContext& ctx,
                                   const Slices& slices, const int32_t* kchunk,
                                   const int32_t* qchunk, RoundKeys* keys,
                                   uint32_t* qsort_key, int32_t* qsort_idx);

// The mean of the values each row sees (combine.cc's MeanValues):
// [total_slices][dim_v] when not causal (one per slice), else
// [total_q_rows][dim_v].
struct MeanWork {
  float* vbar = nullptr;
  double* block_sums = nullptr;
};
absl::Status TakeMeanWork(ScratchPlan& plan, const AttentionParams& settings,
                          const BatchSizes& n, MeanWork* out);
absl::Status LaunchMeanValues(const DeviceBatch& batch,
                              const LaunchContext& ctx, const Slices& slices,
                              const MeanWork& work);

// What the combination reads.
struct CombineInputs {
  const DeviceFeatures* features = nullptr;
  const DeviceLowRank* lowrank = nullptr;
  const SupportAcc* acc = nullptr;
  const float* vbar = nullptr;
};
// The textbook estimator (scatterbrain.cu).
absl::Status LaunchWriteUnbiased(const DeviceBatch& batch,
                                 const LaunchContext& ctx, const Slices& slices,
                                 const CombineInputs& in);
// The calibrated estimator (calibrate.cu): sampled rows computed exactly on
// the device, the candidate chosen per slice, every row written.
struct CalibrationWork {
  uint32_t* bits = nullptr;  // sampling bit sets over query rows
  int32_t* rows = nullptr;   // [slices][C]: sampled rows, sorted
  int32_t* nrows = nullptr;  // [slices]
  double* co = nullptr;      // [slices][C][kNumCandidates]
  double* cc = nullptr;
  double* oo = nullptr;          // [slices][C]
  uint8_t* used = nullptr;       // [slices][C]
  float* exact = nullptr;        // [slices][C][dim_v]
  int32_t* candidate = nullptr;  // [slices]
  double* alpha = nullptr;       // [slices]
};
absl::Status TakeCalibrationWork(ScratchPlan& plan,
                                 const AttentionParams& settings,
                                 const BatchSizes& n, CalibrationWork* out);
absl::Status LaunchWriteCalibrated(
    const DeviceBatch& batch, const LaunchContext& ctx, const Slices& slices,
    const CombineInputs& in, const CalibrationWork& work, SparseProbe* probe);

// The launchers with probes (RunLsh / RunScatterbrain pass none).
absl::Status RunLshProbed(const DeviceBatch& batch, const LaunchContext& ctx,
                          SparseProbe* probe);
absl::Status RunScatterbrainProbed(const DeviceBatch& batch,
                                   const LaunchContext& ctx,
                                   SparseProbe* probe);

// Grid sizes: slices on x, row tiles on y (capped; kernels loop over y).
inline unsigned GridY(int64_t tiles) {
  const int64_t kMaxY = 65535;
  return static_cast<unsigned>(tiles < 1 ? 1 : (tiles > kMaxY ? kMaxY : tiles));
}

}  // namespace sparse
}  // namespace cuda
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_SPARSE_INTERNAL_H_
