// scatterbrain/kernels/cpu/vmath.cc
// The selects below only vectorise when the compiler may assume float ops do
// not trap; nothing here relies on FP exceptions (inf/NaN semantics stay).
#pragma GCC optimize("no-trapping-math")

#include "kernels/cpu/vmath.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace scatterbrain {
namespace cpu {

// exp(x) = 2^k * exp(r), k = round(x / ln 2), r = x - k ln 2 (Cody–Waite in
// two parts), exp(r) by a degree-6 polynomial on [-ln2/2, ln2/2].
namespace {

__attribute__((always_inline)) inline void ExpLoop(float* x, int64_t n,
                                                   float shift) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kMin = -87.33654f;  // below: result 0
  constexpr float kMax = 88.72283f;   // above: +inf
  for (int64_t i = 0; i < n; ++i) {
    const float in = x[i] + shift;
    // Clamped so that NaN lands in range too: converting NaN to an int
    // below is undefined. NaN still comes out as NaN (the last select).
    float v = in > kMin ? in : kMin;
    v = v < kMax ? v : kMax;
    // Round to nearest with the 1.5 * 2^23 trick: vectorises without SSE4.1.
    const float kf = (v * kLog2e + 12582912.0f) - 12582912.0f;
    float r = v - kf * kLn2Hi;
    r = r - kf * kLn2Lo;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t k = static_cast<int32_t>(kf);
    // Scale by 2^k in two steps so k = 128 (v near kMax) stays exact.
    const int32_t k1 = k >> 1, k2 = k - k1;
    const float s1 = __builtin_bit_cast(float, (k1 + 127) << 23);
    const float s2 = __builtin_bit_cast(float, (k2 + 127) << 23);
    float out = p * s1 * s2;
    out = in < kMin ? 0.0f : out;
    out = in > kMax ? __builtin_inff() : out;
    out = in != in ? in : out;  // NaN
    x[i] = out;
  }
}

// The same loop compiled for AVX2 + FMA and for the baseline; chosen once by
// what the CPU supports (target_clones' "arch=" would test the exact CPU
// model, not its features).
__attribute__((target("avx2,fma"))) void ExpAvx2(float* x, int64_t n,
                                                 float shift) {
  ExpLoop(x, n, shift);
}
void ExpBaseline(float* x, int64_t n, float shift) { ExpLoop(x, n, shift); }

using ExpFn = void (*)(float*, int64_t, float);
ExpFn PickExp() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
             ? ExpAvx2
             : ExpBaseline;
}

}  // namespace

void ExpInPlace(float* x, int64_t n, float shift) {
  static const ExpFn fn = PickExp();
  fn(x, n, shift);
}

namespace {

// The reductions keep 8 (double: 4) independent lanes combined in a fixed
// order, and each lane sees the same operations on every path (no fused
// multiply-add), so every instruction set gives bit-identical results.
// The compiler does not vectorise the selects and the double sums on its
// own (not even with target("avx2")), hence the intrinsics.
inline float CombineMax(const float* lane) {
  float m = lane[0];
  for (int u = 1; u < 8; ++u) m = m > lane[u] ? m : lane[u];
  return m;
}
inline float CombineSum(const float* lane) {
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
         ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

#if defined(__x86_64__)

// Baseline x86-64: SSE2, two 4-lane registers per 8 lanes.
float MaxSse(const float* x, int64_t n) {
  __m128 a0 = _mm_set1_ps(-__builtin_inff()), a1 = a0;
  int64_t i = 0;
  // max_ps(a, x) = a > x ? a : x: the scalar rule below, NaN included.
  for (; i + 8 <= n; i += 8) {
    a0 = _mm_max_ps(a0, _mm_loadu_ps(x + i));
    a1 = _mm_max_ps(a1, _mm_loadu_ps(x + i + 4));
  }
  float lane[8];
  _mm_storeu_ps(lane, a0);
  _mm_storeu_ps(lane + 4, a1);
  for (; i < n; ++i) lane[0] = lane[0] > x[i] ? lane[0] : x[i];
  return CombineMax(lane);
}

float SumSse(const float* x, int64_t n) {
  __m128 a0 = _mm_setzero_ps(), a1 = a0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 = _mm_add_ps(a0, _mm_loadu_ps(x + i));
    a1 = _mm_add_ps(a1, _mm_loadu_ps(x + i + 4));
  }
  float lane[8];
  _mm_storeu_ps(lane, a0);
  _mm_storeu_ps(lane + 4, a1);
  for (; i < n; ++i) lane[0] += x[i];
  return CombineSum(lane);
}

float MaxAbsSse(const float* x, int64_t n) {
  const __m128 mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
  __m128 a0 = _mm_setzero_ps(), a1 = a0;
  int64_t i = 0;
  // max_ps(|x|, a) = |x| > a ? |x| : a: std::max(a, |x|), a NaN skipped.
  for (; i + 8 <= n; i += 8) {
    a0 = _mm_max_ps(_mm_and_ps(_mm_loadu_ps(x + i), mask), a0);
    a1 = _mm_max_ps(_mm_and_ps(_mm_loadu_ps(x + i + 4), mask), a1);
  }
  float lane[8];
  _mm_storeu_ps(lane, a0);
  _mm_storeu_ps(lane + 4, a1);
  for (; i < n; ++i) {
    const float a = __builtin_fabsf(x[i]);
    lane[0] = a > lane[0] ? a : lane[0];
  }
  float m = lane[0];
  for (int u = 1; u < 8; ++u) m = lane[u] > m ? lane[u] : m;
  return m;
}

double SumSquaresSse(const float* x, int64_t n) {
  __m128d a0 = _mm_setzero_pd(), a1 = a0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_loadu_ps(x + i);
    const __m128d lo = _mm_cvtps_pd(v);
    const __m128d hi = _mm_cvtps_pd(_mm_movehl_ps(v, v));
    a0 = _mm_add_pd(a0, _mm_mul_pd(lo, lo));
    a1 = _mm_add_pd(a1, _mm_mul_pd(hi, hi));
  }
  double lane[4];
  _mm_storeu_pd(lane, a0);
  _mm_storeu_pd(lane + 2, a1);
  for (; i < n; ++i) lane[0] += static_cast<double>(x[i]) * x[i];
  return (lane[0] + lane[1]) + (lane[2] + lane[3]);
}

float DotSse(const float* a, const float* b, int64_t n) {
  __m128 a0 = _mm_setzero_ps(), a1 = a0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 = _mm_add_ps(a0, _mm_mul_ps(_mm_loadu_ps(a + i), _mm_loadu_ps(b + i)));
    a1 = _mm_add_ps(
        a1, _mm_mul_ps(_mm_loadu_ps(a + i + 4), _mm_loadu_ps(b + i + 4)));
  }
  float lane[8];
  _mm_storeu_ps(lane, a0);
  _mm_storeu_ps(lane + 4, a1);
  for (; i < n; ++i) lane[0] += a[i] * b[i];
  return CombineSum(lane);
}

// AVX2 (no FMA: see above): one 8-lane register.
__attribute__((target("avx2"))) float MaxAvx2(const float* x, int64_t n) {
  __m256 a = _mm256_set1_ps(-__builtin_inff());
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) a = _mm256_max_ps(a, _mm256_loadu_ps(x + i));
  float lane[8];
  _mm256_storeu_ps(lane, a);
  for (; i < n; ++i) lane[0] = lane[0] > x[i] ? lane[0] : x[i];
  return CombineMax(lane);
}

__attribute__((target("avx2"))) float SumAvx2(const float* x, int64_t n) {
  __m256 a = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) a = _mm256_add_ps(a, _mm256_loadu_ps(x + i));
  float lane[8];
  _mm256_storeu_ps(lane, a);
  for (; i < n; ++i) lane[0] += x[i];
  return CombineSum(lane);
}

__attribute__((target("avx2"))) float MaxAbsAvx2(const float* x, int64_t n) {
  const __m256 mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 a = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    a = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), mask), a);
  float lane[8];
  _mm256_storeu_ps(lane, a);
  for (; i < n; ++i) {
    const float v = __builtin_fabsf(x[i]);
    lane[0] = v > lane[0] ? v : lane[0];
  }
  float m = lane[0];
  for (int u = 1; u < 8; ++u) m = lane[u] > m ? lane[u] : m;
  return m;
}

__attribute__((target("avx2"))) double SumSquaresAvx2(const float* x,
                                                      int64_t n) {
  __m256d a = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + i));
    a = _mm256_add_pd(a, _mm256_mul_pd(v, v));
  }
  double lane[4];
  _mm256_storeu_pd(lane, a);
  for (; i < n; ++i) lane[0] += static_cast<double>(x[i]) * x[i];
  return (lane[0] + lane[1]) + (lane[2] + lane[3]);
}

__attribute__((target("avx2"))) float DotAvx2(const float* a, const float* b,
                                              int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    acc = _mm256_add_ps(
        acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  float lane[8];
  _mm256_storeu_ps(lane, acc);
  for (; i < n; ++i) lane[0] += a[i] * b[i];
  return CombineSum(lane);
}

bool HasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}

#define SB_PICK(Name) (HasAvx2() ? Name##Avx2 : Name##Sse)

#else  // not x86-64: the same lanes in plain C++.

float MaxPlain(const float* x, int64_t n) {
  float lane[8];
  for (float& l : lane) l = -__builtin_inff();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u)
      lane[u] = lane[u] > x[i + u] ? lane[u] : x[i + u];
  for (; i < n; ++i) lane[0] = lane[0] > x[i] ? lane[0] : x[i];
  return CombineMax(lane);
}
float SumPlain(const float* x, int64_t n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u) lane[u] += x[i + u];
  for (; i < n; ++i) lane[0] += x[i];
  return CombineSum(lane);
}
float MaxAbsPlain(const float* x, int64_t n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u) {
      const float a = __builtin_fabsf(x[i + u]);
      lane[u] = a > lane[u] ? a : lane[u];
    }
  for (; i < n; ++i) {
    const float a = __builtin_fabsf(x[i]);
    lane[0] = a > lane[0] ? a : lane[0];
  }
  float m = lane[0];
  for (int u = 1; u < 8; ++u) m = lane[u] > m ? lane[u] : m;
  return m;
}
double SumSquaresPlain(const float* x, int64_t n) {
  double lane[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int u = 0; u < 4; ++u)
      lane[u] += static_cast<double>(x[i + u]) * x[i + u];
  for (; i < n; ++i) lane[0] += static_cast<double>(x[i]) * x[i];
  return (lane[0] + lane[1]) + (lane[2] + lane[3]);
}
float DotPlain(const float* a, const float* b, int64_t n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u) lane[u] += a[i + u] * b[i + u];
  for (; i < n; ++i) lane[0] += a[i] * b[i];
  return CombineSum(lane);
}

#define SB_PICK(Name) Name##Plain

#endif

}  // namespace

float Max(const float* x, int64_t n) {
  static const auto fn = SB_PICK(Max);
  return fn(x, n);
}

float Sum(const float* x, int64_t n) {
  static const auto fn = SB_PICK(Sum);
  return fn(x, n);
}

float MaxAbs(const float* x, int64_t n) {
  static const auto fn = SB_PICK(MaxAbs);
  return fn(x, n);
}

double SumSquares(const float* x, int64_t n) {
  static const auto fn = SB_PICK(SumSquares);
  return fn(x, n);
}

float Dot(const float* a, const float* b, int64_t n) {
  static const auto fn = SB_PICK(Dot);
  return fn(a, b, n);
}

#undef SB_PICK

}  // namespace cpu
}  // namespace scatterbrain
