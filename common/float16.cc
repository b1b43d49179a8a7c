// scatterbrain/common/float16.cc
#include "common/float16.h"

#include <cstring>

namespace scatterbrain {
namespace {


// fp16 -> fp32 for every bit pattern, built once (256 KiB): decoding is then
// one load per element.
const float* HalfTable() {
  static const float* table = [] {
    float* t = new float[65536];
    for (uint32_t h = 0; h < 65536; ++h) {
      const uint32_t sign = (h & 0x8000u) << 16;
      const uint32_t exp = (h >> 10) & 0x1fu;
      const uint32_t mant = h & 0x3ffu;
      uint32_t bits;
      if (exp == 0) {
        // Zero or subnormal: mant * 2^-24, exact in float32.
        bits = sign | FloatBits(static_cast<float>(mant) * 0x1p-24f);
      } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);  // inf, nan (payload kept)
      } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
      }
      t[h] = BitsFloat(bits);
    }
    return t;
  }();
  return table;
}

}  // namespace

float HalfToFloat(uint16_t h) { return HalfTable()[h]; }

// Round-to-nearest-even without relying on F16C (not in the baseline ISA).
uint16_t FloatToHalf(float f) {
  uint32_t x = FloatBits(f);
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
    const float r = BitsFloat(x) + 0.5f;
    return static_cast<uint16_t>(sign | (FloatBits(r) - 0x3f000000u));
  }
  // Normal: rebias the exponent and round the 13 dropped bits to nearest
  // even; a carry out of the mantissa correctly bumps the exponent (up to
  // inf for values >= 65520).
  const uint32_t odd = (x >> 13) & 1u;
  x += 0xc8000000u + 0xfffu + odd;
  return static_cast<uint16_t>(sign | (x >> 13));
}

float BFloat16ToFloat(uint16_t b) {
  return BitsFloat(static_cast<uint32_t>(b) << 16);
}

uint16_t FloatToBFloat16(float f) {
  const uint32_t x = FloatBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet nan
  }
  const uint32_t odd = (x >> 16) & 1u;
  return static_cast<uint16_t>((x + 0x7fffu + odd) >> 16);
}

}  // namespace scatterbrain
