// scatterbrain/kernels/cpu/cpu_common.cc
#include "kernels/cpu/cpu_common.h"

#include <cblas.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "kernels/cpu/vmath.h"

// OpenBLAS and BLIS expose these; a reference CBLAS does not (weak: absent
// symbols are null and the call is skipped).
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" void bli_thread_set_num_threads(long) __attribute__((weak));

namespace scatterbrain {
namespace cpu {

Slice MakeSlice(const AttentionParams& p, int64_t b, int64_t h) {
  Slice s;
  s.q = p.q + b * p.q_strides.batch + h * p.q_strides.head;
  s.k = p.k + b * p.k_strides.batch + h * p.k_strides.head;
  s.v = p.v + b * p.v_strides.batch + h * p.v_strides.head;
  s.out = p.out + b * p.out_strides.batch + h * p.out_strides.head;
  s.q_row = p.q_strides.row;
  s.k_row = p.k_strides.row;
  s.v_row = p.v_strides.row;
  s.out_row = p.out_strides.row;
  s.b = b;
  s.h = h;
  s.nq = p.seq_q;
  s.nk = p.key_lengths ? p.key_lengths[b] : p.seq_k;
  s.d = p.dim;
  s.dv = p.dim_v;
  s.offset = p.seq_k - p.seq_q;
  s.causal = p.causal;
  s.tau = EffectiveScale(p);
  s.cancel = p.cancel;
  return s;
}

int ResolveThreads(int requested) {
  if (requested > 0) return requested;
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

namespace {

// Worker threads kept for the process's life: a decode step's parallel
// pass is a few hundred microseconds, which spawning and joining threads
// for every call (~50 us each) would visibly add to. Tasks never block on
// each other (no ParallelFor runs inside another's task), and a caller
// always works through its own items, so a busy pool delays no one.
class WorkerPool {
 public:
  static WorkerPool& Get() {
    // Leaked on purpose: workers may still wait on the queue at exit.
    static WorkerPool* pool = new WorkerPool(
        std::max(1, static_cast<int>(std::thread::hardware_concurrency()) - 1));
    return *pool;
  }
  int size() const { return static_cast<int>(threads_.size()); }
  void Post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  explicit WorkerPool(int n) {
    for (int i = 0; i < n; ++i)
      threads_.emplace_back([this] {
        for (;;) {
          std::function<void()> task;
          {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [this] { return !tasks_.empty(); });
            task = std::move(tasks_.front());
            tasks_.pop_front();
          }
          task();
        }
      });
    for (std::thread& t : threads_) t.detach();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> threads_;
};

// What the caller and its helpers share. A helper that starts after every
// item was taken touches neither `fn` nor `cancel` (both the caller's, gone
// once it returns); one that took an item is counted in `active`, which the
// caller waits to see at zero.
struct ForState {
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::condition_variable idle;
  int active = 0;
};

void RunItems(ForState& st, int64_t n, const std::function<void(int64_t)>& fn,
              const CancelToken* cancel) {
  for (int64_t i = st.next.fetch_add(1); i < n; i = st.next.fetch_add(1)) {
    if (Stopped(cancel)) {
      st.next.store(n);
      break;
    }
    fn(i);
  }
}

}  // namespace

void ParallelFor(int64_t n, int threads, const std::function<void(int64_t)>& fn,
                 const CancelToken* cancel) {
  if (n <= 0) return;
  const int t = static_cast<int>(std::min<int64_t>(threads, n));
  if (t <= 1) {
    for (int64_t i = 0; i < n && !Stopped(cancel); ++i) fn(i);
    return;
  }
  auto st = std::make_shared<ForState>();
  WorkerPool& pool = WorkerPool::Get();
  const int pooled = std::min(t - 1, pool.size());
  for (int w = 0; w < pooled; ++w) {
    pool.Post([st, n, &fn, cancel] {
      {
        std::lock_guard<std::mutex> lock(st->mu);
        // Every item taken: the caller may be gone, touch nothing of it.
        if (st->next.load() >= n) return;
        ++st->active;
      }
      RunItems(*st, n, fn, cancel);
      std::lock_guard<std::mutex> lock(st->mu);
      if (--st->active == 0) st->idle.notify_all();
    });
  }
  // More threads asked for than the pool has (an explicit --threads above
  // the core count): the rest as plain threads, as before.
  std::vector<std::thread> extra;
  for (int w = pooled; w < t - 1; ++w)
    extra.emplace_back([&] { RunItems(*st, n, fn, cancel); });
  RunItems(*st, n, fn, cancel);
  for (std::thread& th : extra) th.join();
  std::unique_lock<std::mutex> lock(st->mu);
  st->idle.wait(lock, [&] { return st->active == 0; });
}

void WarmUp(int threads, int64_t bytes_per_thread) {
  static std::mutex mu;
  static int warmed_threads = 0;
  static int64_t warmed_bytes = -1;
  std::lock_guard<std::mutex> lock(mu);
  if (threads <= warmed_threads && bytes_per_thread <= warmed_bytes) return;
  warmed_threads = std::max(warmed_threads, threads);
  warmed_bytes = std::max<int64_t>(warmed_bytes, bytes_per_thread);
  const int t = std::max(1, threads);
  // One task per thread: each waits until all have started, so no thread
  // runs two and every worker's own heap arena is the one warmed.
  std::atomic<int> started{0};
  ParallelFor(t, t, [&](int64_t) {
    started.fetch_add(1);
    const auto give_up =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while (started.load() < t && std::chrono::steady_clock::now() < give_up)
      std::this_thread::yield();
    constexpr int64_t kN = 128;
    std::vector<float> a(kN * kN, 0.5f), c(kN * kN);
    Gemm(false, true, kN, kN, kN, 1.0f, a.data(), kN, a.data(), kN, 0.0f,
         c.data(), kN);
    ExpInPlace(c.data(), kN, -1.0f);
    if (bytes_per_thread <= 0) return;
    // Touch one byte per page; the free returns the block to this thread's
    // arena, whose pages stay mapped.
    const size_t bytes = static_cast<size_t>(bytes_per_thread);
    std::unique_ptr<char[]> block(new (std::nothrow) char[bytes]);
    if (block == nullptr) return;
    // Volatile: stores to a block about to be freed may be elided.
    volatile char* touch = block.get();
    for (size_t i = 0; i < bytes; i += 4096) touch[i] = 1;
  });
}

void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
          float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
          float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] *= beta;
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
              static_cast<int>(ldc));
}

void PinBlasToOneThread() {
  if (openblas_set_num_threads) openblas_set_num_threads(1);
  if (bli_thread_set_num_threads) bli_thread_set_num_threads(1);
}

}  // namespace cpu
}  // namespace scatterbrain
