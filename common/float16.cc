// scatterbrain/common/float16.cc — the host's entry points to the
// conversions of float16_bits.h (shared with the CUDA backend's kernels).
#include "common/float16.h"

#include "common/float16_bits.h"

namespace scatterbrain {
namespace {

// fp16 -> fp32 for every bit pattern, built once (256 KiB): decoding is then
// one load per element.
const float* HalfTable() {
  static const float* table = [] {
    float* t = new float[65536];
    for (uint32_t h = 0; h < 65536; ++h) {
      t[h] = float16_bits::HalfToFloat(static_cast<uint16_t>(h));
    }
    return t;
  }();
  return table;
}

}  // namespace

float HalfToFloat(uint16_t h) { return HalfTable()[h]; }

uint16_t FloatToHalf(float f) { return float16_bits::FloatToHalf(f); }

float BFloat16ToFloat(uint16_t b) { return float16_bits::BFloat16ToFloat(b); }

uint16_t FloatToBFloat16(float f) { return float16_bits::FloatToBFloat16(f); }

}  // namespace scatterbrain
