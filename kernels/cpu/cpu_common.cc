// scatterbrain/kernels/cpu/cpu_common.cc
#include "kernels/cpu/cpu_common.h"

#include <cblas.h>

#include <thread>

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

void ParallelFor(int64_t n, int threads, const std::function<void(int64_t)>& fn,
                 const CancelToken* cancel) {
  if (n <= 0) return;
  const int t = static_cast<int>(std::min<int64_t>(threads, n));
  if (t <= 1) {
    for (int64_t i = 0; i < n && !Stopped(cancel); ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (int64_t i = next.fetch_add(1); i < n && !Stopped(cancel);
         i = next.fetch_add(1))
      fn(i);
  };
  std::vector<std::thread> pool;
  pool.reserve(t - 1);
  for (int i = 0; i < t - 1; ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
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
