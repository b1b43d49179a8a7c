// scatterbrain/kernels/cpu/vmath.h — vectorised float exp for the hot loops
// (feature maps, softmax rows). std::exp is scalar and was most of the CPU
// time; this one is a branch-free polynomial the compiler vectorises, built
// for AVX2+FMA and a portable baseline, picked at load time. Also the
// row reductions of the hot loops (max, sums, dot products).
#ifndef SCATTERBRAIN_KERNELS_CPU_VMATH_H_
#define SCATTERBRAIN_KERNELS_CPU_VMATH_H_

#include <cstdint>

namespace scatterbrain {
namespace cpu {

// x[i] = exp(x[i] + shift) for i in [0, n). Relative error < 4e-7 on the
// normal range; exact 0 below about -87.3, +inf above about 88.7; -inf
// gives 0; NaN gives NaN (finite inputs can still make NaN scores: |q·k|
// past float32's range gives inf - inf).
void ExpInPlace(float* x, int64_t n, float shift = 0.0f);

// max(x[0..n)) (-inf for n = 0) and sum(x[0..n)) with 8 independent lanes,
// so that the compiler vectorises them without fast-math.
float Max(const float* x, int64_t n);
float Sum(const float* x, int64_t n);
// max |x[i]| (0 for n = 0), sum x[i]^2 accumulated in double, and the dot
// product a . b, in independent lanes (AVX2 when the CPU has it; the lanes,
// and so the results, are the same on every path).
float MaxAbs(const float* x, int64_t n);
double SumSquares(const float* x, int64_t n);
float Dot(const float* a, const float* b, int64_t n);

}  // namespace cpu
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CPU_VMATH_H_
