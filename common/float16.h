// scatterbrain/common/float16.h — IEEE binary16 and bfloat16 conversions,
// shared by the server, the client library and the .npy reader so that the
// wire and file formats are decoded and encoded one way everywhere.
// Exact for every input; float -> 16 bits rounds to nearest even; NaN stays
// NaN (quiet), infinities stay infinite. No dependencies; the conversions
// themselves are float16_bits.h's (shared with the CUDA kernels).
#ifndef SCATTERBRAIN_COMMON_FLOAT16_H_
#define SCATTERBRAIN_COMMON_FLOAT16_H_

#include <cstdint>

#include "common/float16_bits.h"

namespace scatterbrain {

// The bits of a float and back (float16_bits.h's, host and device).
inline uint32_t FloatBits(float f) { return float16_bits::ToBits(f); }
inline float BitsFloat(uint32_t u) { return float16_bits::FromBits(u); }

float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float BFloat16ToFloat(uint16_t b);
uint16_t FloatToBFloat16(float f);

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_COMMON_FLOAT16_H_
