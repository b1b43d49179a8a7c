// tests/fuzz/dtype_fuzzer.cc — the wire dtype codec (common/dtype) on
// arbitrary bytes. The first byte picks the dtype; the rest are elements.
//
// Invariants: decoding is exact, so encoding what was decoded gives the
// same bytes back (NaN stays NaN, its payload may be quieted); encoding
// arbitrary float32 keeps the sign and NaN-ness, saturates to infinity only
// past the format's range, and is idempotent (a rounded value rounds to
// itself).
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "tests/fuzz/fuzz_check.h"

namespace scatterbrain {
namespace fuzz {
namespace {

// The largest finite value of each 16-bit format, and the float32 values
// from which round-to-nearest-even gives infinity instead.
float MaxFinite(DType dtype) {
  return dtype == DType::kFloat16 ? 65504.0f : 3.3895314e38f;
}
bool RoundsToInf(DType dtype, float x) {
  if (dtype == DType::kFloat16) return std::fabs(x) >= 65520.0f;
  // bfloat16's max is 0x7f7f; halfway to the next (inf) is 0x7f7f8000.
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  return (bits & 0x7fffffffu) >= 0x7f7f8000u;
}

}  // namespace
}  // namespace fuzz
}  // namespace scatterbrain

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace scatterbrain;  // NOLINT: a fuzz entry point
  if (size == 0) return 0;
  const DType dtype = static_cast<DType>(data[0] % 3);
  ++data;
  --size;
  const int eb = DTypeBytes(dtype);
  const int64_t n = static_cast<int64_t>(size) / eb;
  const char* src = reinterpret_cast<const char*>(data);

  // Wire bytes -> float32 -> wire bytes.
  std::vector<float> decoded(static_cast<size_t>(n));
  DecodeToFloat(dtype, src, n, decoded.data());
  std::string encoded(static_cast<size_t>(n * eb), '\0');
  EncodeFromFloat(dtype, decoded.data(), n, encoded.data());
  for (int64_t i = 0; i < n; ++i) {
    const bool nan = std::isnan(decoded[i]);
    if (dtype != DType::kFloat32) {
      FUZZ_CHECK(nan || std::fabs(decoded[i]) <= fuzz::MaxFinite(dtype) ||
                     std::isinf(decoded[i]),
                 "decoded value out of the format's range");
    }
    if (nan && dtype != DType::kFloat32) {
      float back;
      DecodeToFloat(dtype, encoded.data() + i * eb, 1, &back);
      FUZZ_CHECK(std::isnan(back), "NaN lost");
    } else {
      FUZZ_CHECK(std::memcmp(encoded.data() + i * eb, src + i * eb, eb) == 0,
                 "decode then encode changed an element");
    }
  }

  // float32 (the same bytes read as floats) -> wire -> float32.
  const int64_t m = static_cast<int64_t>(size) / 4;
  std::vector<float> x(static_cast<size_t>(m));
  if (m > 0) std::memcpy(x.data(), src, static_cast<size_t>(m) * 4);
  std::string wire(static_cast<size_t>(m * eb), '\0');
  EncodeFromFloat(dtype, x.data(), m, wire.data());
  std::vector<float> y(static_cast<size_t>(m));
  DecodeToFloat(dtype, wire.data(), m, y.data());
  std::string wire2(wire.size(), '\0');
  EncodeFromFloat(dtype, y.data(), m, wire2.data());
  FUZZ_CHECK(wire == wire2, "rounding is not idempotent");
  for (int64_t i = 0; i < m; ++i) {
    FUZZ_CHECK(std::isnan(x[i]) == std::isnan(y[i]), "NaN-ness changed");
    if (std::isnan(x[i])) continue;
    FUZZ_CHECK(std::signbit(x[i]) == std::signbit(y[i]), "sign changed");
    const bool want_inf = std::isinf(x[i]) || (dtype != DType::kFloat32 &&
                                               fuzz::RoundsToInf(dtype, x[i]));
    FUZZ_CHECK(std::isinf(y[i]) == want_inf, "overflow to infinity");
  }
  return 0;
}
