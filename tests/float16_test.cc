// common/float16: every fp16 and bfloat16 bit pattern decodes exactly and
// encodes back to itself; float32 rounds to nearest even, overflows to inf
// and keeps NaN.
#include "common/float16.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "gtest/gtest.h"

namespace scatterbrain {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The textbook value of an fp16 bit pattern, computed in double.
double HalfValue(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  if (exp == 0) return sign * std::ldexp(mant, -24);
  if (exp == 31) {
    return mant == 0 ? sign * std::numeric_limits<double>::infinity()
                     : std::numeric_limits<double>::quiet_NaN();
  }
  return sign * std::ldexp(1024 + mant, exp - 25);
}

TEST(Float16Test, HalfDecodeIsExactForEveryPattern) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const double want = HalfValue(static_cast<uint16_t>(h));
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << h;
      EXPECT_EQ(std::signbit(got), (h & 0x8000) != 0) << h;
    }
  }
}

TEST(Float16Test, HalfEncodeRoundTripsAndRoundsToNearestEven) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      const uint16_t back = FloatToHalf(f);
      EXPECT_EQ(back & 0x7c00, 0x7c00) << h;
      EXPECT_NE(back & 0x3ff, 0) << h;  // still a nan
      continue;
    }
    EXPECT_EQ(FloatToHalf(f), h) << h;
    // Midpoint to the next pattern of larger magnitude (exact in float32:
    // 12 significant bits): ties go to the even mantissa.
    const uint16_t next = static_cast<uint16_t>(h + 1);
    if ((h & 0x7fff) >= 0x7bff) continue;  // next is inf / past it
    const double mid =
        (HalfValue(static_cast<uint16_t>(h)) + HalfValue(next)) / 2;
    const float midf = static_cast<float>(mid);
    ASSERT_EQ(static_cast<double>(midf), mid);
    const uint16_t even = (h & 1) == 0 ? static_cast<uint16_t>(h) : next;
    EXPECT_EQ(FloatToHalf(midf), even) << h;
    // Just off the midpoint rounds to the nearer one.
    EXPECT_EQ(FloatToHalf(std::nextafter(midf, 0.0f)), h) << h;
    EXPECT_EQ(FloatToHalf(std::nextafter(midf, std::copysign(INFINITY, midf))),
              next)
        << h;
  }
  // Overflow: 65504 is the largest half; 65520 is the tie to 65536 = inf.
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.996f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);
  EXPECT_EQ(FloatToHalf(-1e30f), 0xfc00);
  EXPECT_EQ(FloatToHalf(INFINITY), 0x7c00);
  EXPECT_EQ(FloatToHalf(-INFINITY), 0xfc00);
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(NAN))));
  // Below half the smallest subnormal: signed zero.
  EXPECT_EQ(FloatToHalf(1e-10f), 0x0000);
  EXPECT_EQ(FloatToHalf(-1e-10f), 0x8000);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie to even 0
  EXPECT_EQ(FloatToHalf(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
}

TEST(Float16Test, BFloat16IsExactAndRoundsToNearestEven) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = BFloat16ToFloat(static_cast<uint16_t>(b));
    EXPECT_EQ(Bits(f), b << 16);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(f)))) << b;
      continue;
    }
    EXPECT_EQ(FloatToBFloat16(f), b) << b;
    if ((b & 0x7fff) >= 0x7f7f) continue;
    const uint32_t mid = (b << 16) | 0x8000u;  // exact midpoint
    const uint16_t even =
        (b & 1) == 0 ? static_cast<uint16_t>(b) : static_cast<uint16_t>(b + 1);
    EXPECT_EQ(FloatToBFloat16(FromBits(mid)), even) << b;
    EXPECT_EQ(FloatToBFloat16(FromBits(mid - 1)), b) << b;
    EXPECT_EQ(FloatToBFloat16(FromBits(mid + 1)), b + 1) << b;
  }
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::max()), 0x7f80);
  // A signalling-looking nan whose payload lives in the low bits stays nan.
  EXPECT_TRUE(
      std::isnan(BFloat16ToFloat(FloatToBFloat16(FromBits(0x7f800001u)))));
}

}  // namespace
}  // namespace scatterbrain
