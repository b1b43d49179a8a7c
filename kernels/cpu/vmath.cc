// scatterbrain/kernels/cpu/vmath.cc
// The selects below only vectorise when the compiler may assume float ops do
// not trap; nothing here relies on FP exceptions (inf/NaN semantics stay).
#pragma GCC optimize("no-trapping-math")

#include "kernels/cpu/vmath.h"

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

float Max(const float* x, int64_t n) {
  constexpr float kNegInf = -__builtin_inff();
  float lane[8] = {kNegInf, kNegInf, kNegInf, kNegInf,
                   kNegInf, kNegInf, kNegInf, kNegInf};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u)
      lane[u] = lane[u] > x[i + u] ? lane[u] : x[i + u];
  for (; i < n; ++i) lane[0] = lane[0] > x[i] ? lane[0] : x[i];
  float m = lane[0];
  for (int u = 1; u < 8; ++u) m = m > lane[u] ? m : lane[u];
  return m;
}

float Sum(const float* x, int64_t n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u) lane[u] += x[i + u];
  for (; i < n; ++i) lane[0] += x[i];
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
         ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

}  // namespace cpu
}  // namespace scatterbrain
