// scatterbrain/common/float16_bits.h — the float16 / bfloat16 <-> float32
// conversions as inline functions on bits, compiled for the host and, under
// nvcc, for the device too: common/float16.cc converts with them on the
// host, and the CUDA backend (kernels/cuda/convert.cu) converts wire tensors
// on the GPU with this very code. Exact decode; encode rounds to nearest
// even, NaN stays NaN (quiet), infinities and overflow become inf.
#ifndef SCATTERBRAIN_COMMON_FLOAT16_BITS_H_
#define SCATTERBRAIN_COMMON_FLOAT16_BITS_H_

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SB_FLOAT16_HD __host__ __device__ __forceinline__
#else
#define SB_FLOAT16_HD inline
#endif

namespace scatterbrain {
namespace float16_bits {

// The bits of a float and back (memcpy on the host: no aliasing UB).
SB_FLOAT16_HD uint32_t ToBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

SB_FLOAT16_HD float FromBits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

SB_FLOAT16_HD float HalfToFloat(uint16_t h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in float32.
    bits = sign | ToBits(static_cast<float>(mant) * 5.9604644775390625e-8f);
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, nan (payload kept)
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  return FromBits(bits);
}

// Round-to-nearest-even without relying on F16C (not in the baseline ISA).
SB_FLOAT16_HD uint16_t FloatToHalf(float f) {
  uint32_t x = ToBits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) {
    // inf, or nan with its top 10 payload bits kept (so every half round
    // trips through float exactly); a payload only in the low bits would
    // look like inf, so it becomes the quiet bit.
    const uint32_t payload = (x >> 13) & 0x3ffu;
    return static_cast<uint16_t>(
        sign | 0x7c00u |
        (x > 0x7f800000u ? (payload != 0 ? payload : 0x200u) : 0u));
  }
  if (x >= 0x47800000u)
    return static_cast<uint16_t>(sign | 0x7c00u);  // >= 2^16
  if (x < 0x38800000u) {
    // Result is subnormal or zero: adding 0.5 (whose ulp is 2^-24, the
    // fp16 subnormal step) lets the FPU round to nearest even for us.
    const float r = FromBits(x) + 0.5f;
    return static_cast<uint16_t>(sign | (ToBits(r) - 0x3f000000u));
  }
  // Normal: rebias the exponent and round the 13 dropped bits to nearest
  // even; a carry out of the mantissa correctly bumps the exponent (up to
  // inf for values >= 65520).
  const uint32_t odd = (x >> 13) & 1u;
  x += 0xc8000000u + 0xfffu + odd;
  return static_cast<uint16_t>(sign | (x >> 13));
}

SB_FLOAT16_HD float BFloat16ToFloat(uint16_t b) {
  return FromBits(static_cast<uint32_t>(b) << 16);
}

SB_FLOAT16_HD uint16_t FloatToBFloat16(float f) {
  const uint32_t x = ToBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet nan
  }
  const uint32_t odd = (x >> 16) & 1u;
  return static_cast<uint16_t>((x + 0x7fffu + odd) >> 16);
}

}  // namespace float16_bits
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_COMMON_FLOAT16_BITS_H_
