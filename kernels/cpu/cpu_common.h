// scatterbrain/kernels/cpu/cpu_common.h — shared pieces of the CPU backend:
// the per-(batch, head) view of a request, scratch memory that is counted
// (for the "memory saved" accounting), a parallel-for, and the BLAS call.
#ifndef SCATTERBRAIN_KERNELS_CPU_CPU_COMMON_H_
#define SCATTERBRAIN_KERNELS_CPU_CPU_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "kernels/cancel.h"
#include "kernels/params.h"

namespace scatterbrain {
namespace cpu {

// Counts scratch bytes currently held and the peak, across threads.
class WorkspaceMeter {
 public:
  void Add(int64_t bytes) {
    const int64_t now = current_.fetch_add(bytes) + bytes;
    int64_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
  }
  void Sub(int64_t bytes) { current_.fetch_sub(bytes); }
  int64_t peak() const { return peak_.load(); }

 private:
  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
};

// A scratch array whose bytes are counted by a WorkspaceMeter while alive.
// Contents start uninitialised (most buffers are fully written by a GEMM
// first); call Zero() for accumulators.
template <typename T>
class Scratch {
 public:
  Scratch() = default;
  Scratch(WorkspaceMeter* meter, size_t n) { Reset(meter, n); }
  ~Scratch() { Release(); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  void Reset(WorkspaceMeter* meter, size_t n) {
    Release();
    meter_ = meter;
    data_.reset(new T[n]);
    size_ = n;
    bytes_ = static_cast<int64_t>(n * sizeof(T));
    if (meter_) meter_->Add(bytes_);
  }
  // Reset, then set every element to T().
  void ResetZero(WorkspaceMeter* meter, size_t n) {
    Reset(meter, n);
    Zero();
  }
  void Zero() { std::fill(data_.get(), data_.get() + size_, T()); }
  // Grows (never shrinks) the array; contents are unspecified afterwards.
  T* Ensure(WorkspaceMeter* meter, size_t n) {
    if (n > size_) Reset(meter, n);
    return data_.get();
  }
  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  void Release() {
    if (meter_) meter_->Sub(bytes_);
    meter_ = nullptr;
    bytes_ = 0;
    size_ = 0;
    data_.reset();
  }
  std::unique_ptr<T[]> data_;
  size_t size_ = 0;
  WorkspaceMeter* meter_ = nullptr;
  int64_t bytes_ = 0;
};

// One (batch, head) slice of a request.
struct Slice {
  const float* q;
  const float* k;
  const float* v;
  float* out;
  int64_t q_row, k_row, v_row, out_row;  // row strides (elements)
  int64_t b, h;
  int64_t nq;  // query rows
  int64_t nk;  // valid (non-padding) keys
  int64_t d, dv;
  int64_t offset;  // seq_k - seq_q: causal / window alignment
  bool causal;
  float tau;
  // The call's stop signal (may be null). Operations check stopped() between
  // blocks and return early; the slice's driver checks it after each
  // operation and abandons the slice (cancel.h: a stop is never undone).
  const CancelToken* cancel;

  bool stopped() const { return Stopped(cancel); }

  const float* qrow(int64_t i) const { return q + i * q_row; }
  const float* krow(int64_t j) const { return k + j * k_row; }
  const float* vrow(int64_t j) const { return v + j * v_row; }
  float* orow(int64_t i) const { return out + i * out_row; }
  // Keys [0, KeyLimit(i)) are visible to query i.
  int64_t KeyLimit(int64_t i) const {
    if (!causal) return nk;
    return std::clamp<int64_t>(i + offset + 1, 0, nk);
  }
};

Slice MakeSlice(const AttentionParams& p, int64_t b, int64_t h);

// Runs fn(task) for task in [0, n) on up to `threads` threads (the caller's
// thread included). Blocks until all are done. Once `cancel` is stopped no
// worker starts another task (those not started are skipped).
void ParallelFor(int64_t n, int threads, const std::function<void(int64_t)>& fn,
                 const CancelToken* cancel = nullptr);
int ResolveThreads(int requested);

// Readies the process for a first call on `threads` threads: starts the
// worker pool, runs a small GEMM and the vectorised exp on each worker (the
// BLAS's buffers, the dispatch), and faults in `bytes_per_thread` of each
// worker's heap, then frees it for the calls' scratch to reuse (the backend
// keeps freed heap: cpu_backend.cc). Blocks until done; repeated calls only
// do what a larger size or thread count adds.
void WarmUp(int threads, int64_t bytes_per_thread);

// C = alpha * op(A) * op(B) + beta * C, row-major, float32 (a real BLAS).
void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
          float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
          float beta, float* c, int64_t ldc);
// Keeps the BLAS single-threaded: we parallelise over slices ourselves.
void PinBlasToOneThread();

}  // namespace cpu
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CPU_CPU_COMMON_H_
